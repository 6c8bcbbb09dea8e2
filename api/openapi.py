"""The OpenAPI 3.1 document, generated from the declared endpoints and their pydantic models.

Routes validate with the same models this document describes, so the two cannot drift. Request
bodies are described as pydantic validates them, responses as it serializes them (computed fields
included). ``components.schemas`` is keyed by class name: two different classes with one name
would overwrite each other there, so building the document refuses them (``SchemaNameClash``).

Parameters say what the API checks: path parameters their pattern (ids by the kind the collection
holds, model names) or integer range (versions, 1 to PostgreSQL's ``integer``), query parameters
their model's constraints (never ``null``: an optional one is left out), idempotent creates the
``Idempotency-Key`` header's pattern. A path parameter without a schema here stops the build.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from api import idempotency
from api.endpoints import Endpoint, Endpoints
from api.problems import TITLES, oip_path
from api.rate_limits import rate_class
from core.ids import PREFIXES
from core.spec_kit import INT4_MAX, MODEL_NAME_PATTERN, id_pattern

# the endpoint tables of the app, read when the document is asked for (job types register late)
ENDPOINT_TABLES = web.AppKey("endpoint_tables", list)
REF = "#/components/schemas/{model}"

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "pointer": {"type": "string", "description": "JSON pointer to the field in the body"},
                    "parameter": {"type": "string", "description": "the path or query parameter at fault"},
                    "header": {"type": "string", "description": "the request header at fault"},
                    "detail": {"type": "string"},
                },
            },
        },
        "quota": {"type": "string", "description": "over a quota or rate limit: its name"},
        "limit": {"type": "integer", "description": "over a quota or rate limit: its value"},
        "used": {"type": "integer", "description": "over a quota or rate limit: the use before this request"},
        "unit": {"type": "string", "description": "over a quota: what limit and used count"},
    },
    "required": ["type", "title", "status", "detail"],
}


Mode = Literal["validation", "serialization"]


class SchemaNameClash(ValueError):
    """Two different classes would share one name in ``components.schemas``."""


def schema_name(cls: type) -> str:
    """The name pydantic gives a class in ``$defs`` (``Page[FileObject]`` → ``Page_FileObject_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", cls.__name__)


def _described(owner: object) -> str:
    return f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else str(owner)


def _classes_in(model: type[BaseModel]) -> Iterator[type]:
    """``model`` and every model, dataclass and enum its schema holds (they become ``$defs``)."""
    stack: list[Any] = [model.__pydantic_core_schema__]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in ("model", "dataclass", "enum") and isinstance(node.get("cls"), type):
                yield node["cls"]
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA, "InferenceError": OIP_ERROR_SCHEMA}
        # the class each name stands for: two different ones would overwrite each other's schema
        self.owners: dict[str, object] = {name: "the hand-written schema in api.openapi" for name in self.schemas}
        self.described: set[tuple[type[BaseModel], Mode]] = set()

    def _claim(self, cls: type) -> None:
        name = schema_name(cls)
        seen = self.owners.setdefault(name, cls)
        if seen is not cls:
            raise SchemaNameClash(
                f"two schemas are named {name!r} in the OpenAPI document: {_described(seen)} and "
                f"{_described(cls)}; rename one of them"
            )

    def ref(self, model: type[BaseModel], mode: Mode = "validation") -> dict[str, str]:
        name = schema_name(model)
        if (model, mode) not in self.described:
            for cls in _classes_in(model):
                self._claim(cls)
            schema = model.model_json_schema(ref_template=REF, by_alias=True, mode=mode)
            for def_name, definition in [*schema.pop("$defs", {}).items(), (name, schema)]:
                if self.schemas.setdefault(def_name, definition) != definition:
                    raise SchemaNameClash(
                        f"{_described(self.owners.get(def_name, def_name))} reads differently as a request body "
                        "and as a response; give each its own model"
                    )
            self.described.add((model, mode))
        return {"$ref": REF.format(model=name)}


# the kind of object an ``{id}`` names, by the collection it follows in the path (``/v1/files/{id}``)
ID_KINDS = {
    "api-keys": "api_key",
    "files": "file",
    "jobs": "job",
    "artifacts": "artifact",
    "predictions": "prediction",
}
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": MODEL_NAME_PATTERN, "description": "the model's name"},
    # a version number as ``core.spec_kit.version_number`` reads it from a path
    "version": {"type": "integer", "minimum": 1, "maximum": INT4_MAX, "description": "the version number"},
}


class UndocumentedParameter(ValueError):
    """A path parameter this module has no schema for: add it to ``PATH_PARAMETERS`` or ``ID_KINDS``."""


def _path_parameter(path: str, name: str) -> dict[str, Any]:
    if name != "id":
        if name not in PATH_PARAMETERS:
            raise UndocumentedParameter(f"{path}: no schema for the path parameter {{{name}}}")
        return PATH_PARAMETERS[name]
    collection = path.split("/{id}")[0].rsplit("/", 1)[-1]
    if collection not in ID_KINDS:
        raise UndocumentedParameter(f"{path}: no id kind for the collection {collection!r}")
    prefix = PREFIXES[ID_KINDS[collection]]
    return {"type": "string", "pattern": id_pattern(prefix), "description": f"the id (`{prefix}_…`)"}


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema as a query string can carry it: an optional one is left out, never
    ``null`` (so the ``null`` branch pydantic adds for ``X | None`` goes), and no pydantic title."""
    schema = {key: value for key, value in prop.items() if key != "title" and not (key == "default" and value is None)}
    branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    return schema


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": _path_parameter(endpoint.path, name)}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    if endpoint.query is not None:
        schema = endpoint.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param = {"name": name, "in": "query", "required": name in required, "schema": _query_schema(prop)}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    if endpoint.idempotent:
        params.append(
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": False,
                "description": "a retry with the same key and body replays the first answer; another body is 422, "
                "while the first is in flight 409",
                "schema": {"type": "string", "pattern": idempotency.KEY_PATTERN},
            }
        )
    return params


def _body_schema(
    body: type[BaseModel], endpoint: Endpoint, components: _Components, app: web.Application | None
) -> dict[str, Any]:
    """The body model; with variants (asked of ``app``), one schema per ``type`` whose ``spec`` is that type's model."""
    base = components.ref(body)
    if endpoint.body_variants is None or app is None:
        return base
    variants = [
        {
            "allOf": [
                base,
                {"properties": {"type": {"const": name}, "spec": components.ref(model)}},
            ]
        }
        for name, model in endpoint.body_variants(app).items()
    ]
    return {"oneOf": variants} if variants else base


OIP_ERROR_SCHEMA = {
    "type": "object",
    "description": "Open Inference Protocol error",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


def _problem(status: int, path: str) -> dict[str, Any]:
    if oip_path(path):
        return {
            "description": TITLES.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": REF.format(model="InferenceError")}}},
        }
    return {
        "description": TITLES.get(status, "Error"),
        "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}},
    }


RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {"schema": {"type": "integer"}, "description": "the API key's bucket: requests per minute"},
    "RateLimit-Remaining": {"schema": {"type": "integer"}, "description": "requests left in the bucket now"},
    "RateLimit-Reset": {"schema": {"type": "integer"}, "description": "seconds until the bucket is full again"},
}


def _operation(endpoint: Endpoint, components: _Components, app: web.Application | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "parameters": _parameters(endpoint),
    }
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(endpoint.body, endpoint, components, app)}},
        }
    elif endpoint.request_doc is not None:
        op["requestBody"] = endpoint.request_doc
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        ok["content"] = {"application/json": {"schema": components.ref(endpoint.response, "serialization")}}
    elif endpoint.response_doc is not None:
        ok.update(endpoint.response_doc)
    responses = {str(endpoint.status): ok}
    # 400: a header, parameter or body the API cannot read (``api.endpoints``)
    statuses = set(endpoint.errors) | {400, 500}
    if endpoint.auth:
        statuses.add(401)
    if "{" in endpoint.path:
        statuses.add(404)
    if endpoint.body is not None:
        statuses |= {413, 415, 422}
    if endpoint.idempotent:
        statuses |= {409, 422}
    limited = endpoint.auth and rate_class(endpoint.method, endpoint.path) is not None
    if limited:
        statuses.add(429)
    for status in sorted(statuses):
        responses[str(status)] = _problem(status, endpoint.path)
    if limited:  # every answer of a rate-limited route carries them (api/rate_limits.py)
        for response in responses.values():
            response["headers"] = {**RATE_LIMIT_HEADERS, **response.get("headers", {})}
    op["responses"] = responses
    if endpoint.auth:
        op["security"] = [{"apiKey": []}]
    return op


def openapi_document(tables: list[Endpoints], app: web.Application | None = None) -> dict[str, Any]:
    """The document of ``tables``; with the running ``app``, bodies whose schema depends on it (the job
    spec per job type) are described in full."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for table in tables:
        for endpoint in table.items:
            paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, components, app)
    return {
        "openapi": "3.1.0",
        "info": {"title": "maas", "version": "1", "description": "Models as a service"},
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
