"""A small ``kustomize build``, for the tests of infra/k8s (the kustomize binary is not on PyPI).

It understands what our kustomizations use, and refuses anything else rather than render it
wrongly: ``resources`` (files, or folders holding a kustomization.yaml) and ``patches`` given
inline as JSON 6902 operations with a ``target`` of kind and name. A patch that matches no
resource is an error (kustomize would skip it silently).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches"}


class KustomizeError(ValueError):
    pass


def build(folder: Path) -> list[dict[str, Any]]:
    """The resources of the kustomization in ``folder``, patched, in order."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{folder}: this renderer does not know {sorted(unknown)}")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [r for r in resources if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]]
        if not matched:
            raise KustomizeError(f"{folder}: patch target {target} matches no resource")
        for resource in matched:
            for operation in yaml.safe_load(patch["patch"]):
                apply_operation(resource, operation)
    return resources


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_operation(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One RFC 6902 ``add``, ``replace`` or ``remove``, in place."""
    *parents, last = _pointer(operation["path"])
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        else:
            raise KustomizeError(f"unsupported op {op!r}")
    elif op == "add":
        node[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        if last not in node:
            raise KustomizeError(f"replace of missing {operation['path']}")
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        raise KustomizeError(f"unsupported op {op!r}")
