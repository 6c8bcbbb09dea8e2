"""Imports point one way: entry points (``cli``, ``infra``, ``api``, ``workers``, ``serving``, and the SDK
``maas_client``) on top,
the job types under them, the libraries (``training``, ``compression``) under those, ``core`` at
the bottom. An AST walk over every module (imports inside functions included) finds an arrow
that points the wrong way; the libraries are also imported in a fresh interpreter to show they
need neither the ORM nor the web stack nor Celery.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# what each package may not import (packages not listed here are the entry points' own business)
FORBIDDEN: dict[str, set[str]] = {
    "core": {"api", "workers", "serving", "job_types", "training", "compression", "cli", "infra", "bench"},
    "training": {"api", "workers", "serving", "job_types", "compression", "cli", "infra", "bench"},
    "compression": {"api", "workers", "serving", "job_types", "cli", "infra", "bench"},
    "job_types": {"api", "workers", "serving", "cli", "infra", "bench"},
    "api": {"workers", "serving", "cli", "infra", "bench"},
    "workers": {"api", "serving", "cli", "infra", "bench"},
    "serving": {"api", "workers", "job_types", "cli", "infra", "bench"},
    "infra": {"api", "workers", "serving", "job_types", "cli", "bench"},
    # the SDK runs on users' machines: the typed contract (core.objects) and pure codecs, nothing of the service
    "maas_client": {"api", "workers", "serving", "job_types", "training", "compression", "cli", "infra", "bench"},
}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def wrong_way_imports() -> list[str]:
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for line, target in imported_packages(path):
                if target in forbidden:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    return wrong


def test_every_import_points_down_the_layers() -> None:
    assert wrong_way_imports() == []


def test_the_walk_finds_an_import_that_points_up(tmp_path: Path) -> None:
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from api.app import create_app\n    import workers.jobs\n")
    assert imported_packages(module) == [(2, "api"), (3, "workers")]


def test_training_and_compression_import_without_the_orm_the_web_stack_or_celery() -> None:
    script = (
        "import importlib, pkgutil, sys\n"
        "import training, compression\n"
        "for package in (training, compression):\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'sqlalchemy', 'aiohttp', 'celery', 'api', 'workers'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_sdk_imports_without_the_web_stack_celery_torch_or_the_store() -> None:
    script = (
        "import sys, maas_client\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'aiohttp', 'celery', 'kombu', 'torch', 'onnxruntime', 'boto3', 'api', 'workers'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
