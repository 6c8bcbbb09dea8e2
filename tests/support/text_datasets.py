"""A small labelled text set built offline: sentences of the docstrings that ship with installed
packages, labelled by the package they come from (numpy: array maths, sqlalchemy: databases,
aiohttp: HTTP). Read from the source files with ``ast``, nothing is imported; the same
sentences in the same order on every machine with the same package versions."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

SOURCES = ("numpy", "sqlalchemy", "aiohttp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z ,'()-]+[.!?]$")


def package_sentences(package: str, limit: int) -> list[str]:
    """Up to ``limit`` distinct prose sentences (6 to 30 words, letters and light punctuation
    only, so code and tables are left out) from ``package``'s docstrings, in file order."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    root = Path(next(iter(spec.submodule_search_locations)))
    found: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for paragraph in doc.split("\n\n"):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    if _WORDS.match(sentence) and 6 <= len(sentence.split()) <= 30:
                        found.setdefault(sentence)
                        if len(found) >= limit:
                            return list(found)
    return list(found)


def labelled_sentences(per_source: int) -> list[tuple[str, str]]:
    """(sentence, package) rows, ``per_source`` of each, interleaved."""
    columns = [package_sentences(package, per_source) for package in SOURCES]
    rows = []
    for index in range(min(len(c) for c in columns)):
        rows += [(column[index], package) for column, package in zip(columns, SOURCES, strict=True)]
    return rows


def text_csv(rows: list[tuple[str, str]], text: str = "text", label: str = "source") -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([text, label])
    writer.writerows(rows)
    return out.getvalue().encode()
