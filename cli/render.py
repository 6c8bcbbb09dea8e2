"""How the client commands print: ``--output json`` prints the API's objects as JSON (one document,
for scripts and ``jq``), text prints tables with ``rich``. Errors go to stderr as one line with the
problem's detail and a line per bad field's pointer (in JSON mode: ``{"error": problem}`` on stdout).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from maas_client import APIError, MaasError


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def as_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(as_json(value), indent=2) + "\n")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    grid = Table(*columns, title=title, title_justify="left", show_edge=False, pad_edge=False)
    for row in rows:
        grid.add_row(*(cell(v) for v in row))
    return grid


def pairs(rows: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column table of names and values."""
    grid = Table(show_header=False, title=title, title_justify="left", show_edge=False, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, cell(value))
    return grid


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def error(exc: MaasError, json_output: bool) -> int:
    """Print ``exc`` for a person (stderr) or a script (stdout JSON); the exit code, 1."""
    if json_output:
        problem = asdict(exc.problem) if isinstance(exc, APIError) else {"detail": str(exc)}
        print_json({"error": {**problem, "errors": [asdict(e) for e in getattr(exc, "errors", ())]}})
        return 1
    out = console(stderr=True)
    if isinstance(exc, APIError) and exc.errors:  # the detail only repeats the fields' lines
        out.print(f"maas: {exc.problem.status} {exc.problem.title}", markup=False)
        for field in exc.errors:
            out.print(f"  {field.pointer or '/'}: {field.detail}", markup=False)
    elif isinstance(exc, APIError):
        out.print(f"maas: {exc.problem.status} {exc.problem.title}: {exc.problem.detail}", markup=False)
    else:
        out.print(f"maas: {exc}", markup=False)
    return 1
