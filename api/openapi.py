"""The OpenAPI 3.1 document, generated from the declared endpoints and their pydantic models.

Routes validate with the same models this document describes, so the two cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from api.endpoints import Endpoint, Endpoints
from api.problems import TITLES, oip_path

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
                    "parameter": {"type": "string", "description": "the query parameter at fault"},
                    "detail": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Problem": PROBLEM_SCHEMA, "InferenceError": OIP_ERROR_SCHEMA}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        name = model.__name__
        if name not in self.schemas:
            schema = model.model_json_schema(ref_template=REF, by_alias=True)
            self.schemas.update(schema.pop("$defs", {}))
            self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    if endpoint.query is not None:
        schema = endpoint.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return params


def _body_schema(endpoint: Endpoint, components: _Components) -> dict[str, Any]:
    """The body model; with variants, one schema per ``type`` whose ``spec`` is that type's model."""
    base = components.ref(endpoint.body)
    if endpoint.body_variants is None:
        return base
    variants = [
        {
            "allOf": [
                base,
                {"properties": {"type": {"const": name}, "spec": components.ref(model)}},
            ]
        }
        for name, model in endpoint.body_variants().items()
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


def _operation(endpoint: Endpoint, components: _Components) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "parameters": _parameters(endpoint),
    }
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(endpoint, components)}},
        }
    elif endpoint.request_doc is not None:
        op["requestBody"] = endpoint.request_doc
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        ok["content"] = {"application/json": {"schema": components.ref(endpoint.response)}}
    elif endpoint.response_doc is not None:
        ok.update(endpoint.response_doc)
    responses = {str(endpoint.status): ok}
    statuses = set(endpoint.errors) | {500}
    if endpoint.auth:
        statuses.add(401)
    if endpoint.body is not None:
        statuses |= {400, 413, 415, 422}
    if endpoint.query is not None:
        statuses.add(400)
    for status in sorted(statuses):
        responses[str(status)] = _problem(status, endpoint.path)
    op["responses"] = responses
    if endpoint.auth:
        op["security"] = [{"apiKey": []}]
    return op


def openapi_document(tables: list[Endpoints]) -> dict[str, Any]:
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for table in tables:
        for endpoint in table.items:
            paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "maas", "version": "1", "description": "Models as a service"},
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
