"""Declared endpoints: one definition drives routing, request validation and the OpenAPI document.

A resource module builds an ``Endpoints`` table and decorates its handlers:

    files = Endpoints("files")

    @files.get("/v1/files", summary="List files", query=FileListQuery, response=Page[FileObject])
    async def list_files(request: web.Request, call: Call[None, FileListQuery]) -> Page[FileObject]: ...

The wrapper checks the headers handlers read (400 naming the header: text that is not UTF-8, a
malformed ``Idempotency-Key``), authenticates (unless ``auth=False``), parses the JSON body into
the ``body`` model and the query string into the ``query`` model (pydantic, unknown fields
forbidden, a parameter given twice refused), and turns every validation error into a
problem+json whose ``errors`` carry a JSON pointer to the field (or name the parameter or
header). Right after authentication, a rate-limited route (inference, creates) takes a token of
the caller's API key (``api.rate_limits``): a 429 before any work, and the ``RateLimit-*``
headers on every answer, errors included. ``api.openapi`` reads the same tables.
A handler's ``Call[Body, Query]`` names the same two models (``None`` for none), so a type
checker sees ``call.body`` and ``call.query`` as what the wrapper parsed; a unit test holds
the annotations to the declarations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from api import idempotency
from api.auth import authenticate
from api.context import context
from api.idempotency import Claim
from api.problems import Problem, validation_problem
from api.rate_limits import limit_request
from core.spec_kit import FieldProblem, json_pointer, validation_problems

# what a PostgreSQL text column cannot hold: NUL, and lone surrogates (JSON's "\ud800", which
# is no UTF-8); refused in every string the API parses, before anything reaches the database
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# the request headers a handler reads. aiohttp's parser already refuses NUL and other control
# characters in any header (400); bytes that are not UTF-8 reach the app as surrogates
READ_HEADERS = ("Authorization", idempotency.HEADER, "Last-Event-ID", "Prefer", "Inference-Header-Content-Length")

BodyT = TypeVar("BodyT")
QueryT = TypeVar("QueryT")


@dataclass
class Call(Generic[BodyT, QueryT]):
    """What the wrapper extracted from a request for its handler: ``body`` and ``query`` are the
    endpoint's models, parsed (``None`` where the endpoint declares none)."""

    tenant_id: str  # the caller's tenant; "" on an endpoint without auth
    params: dict[str, str]
    body: BodyT
    query: QueryT
    raw_body: bytes | None = None
    idempotency: Claim | None = None
    response_headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[web.Request, Call[Any, Any]], Awaitable[web.StreamResponse | BaseModel]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    status: int = 200
    auth: bool = True
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    # documented by hand when the body is not JSON (uploads) or the answer is not a model
    request_doc: dict[str, Any] | None = None
    response_doc: dict[str, Any] | None = None
    errors: tuple[int, ...] = ()
    # creates: honour Idempotency-Key (replay, 422 on another body, 409 while in flight)
    idempotent: bool = False
    # a body field whose schema depends on another field (the job spec on the job type)
    # (documented for the app's own job types, so it is asked of the running app)
    body_variants: Callable[[web.Application], dict[str, type[BaseModel]]] | None = None

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class Endpoints:
    """The endpoints of one resource (one OpenAPI tag)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.items: list[Endpoint] = []

    def route(self, method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.items.append(Endpoint(method=method, path=path, handler=handler, tag=self.tag, **options))
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)


def _unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored as PostgreSQL text, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    return "must not contain NUL characters" if found.group() == "\x00" else "must not contain unpaired surrogates"


def _check_headers(endpoint: Endpoint, request: web.Request) -> None:
    """400 naming the header a handler would read that holds text it cannot use."""
    errors = [
        {"header": name, "detail": "must be UTF-8 text without NUL characters"}
        for name in READ_HEADERS
        if _unstorable(request.headers.get(name, "")) is not None
    ]
    if errors:
        raise Problem(400, "; ".join(f"header {e['header']}: {e['detail']}" for e in errors), errors=errors)
    if endpoint.idempotent and (problem := idempotency.header_problem(request)) is not None:
        raise problem


def _check_parameters(request: web.Request) -> None:
    """400 naming the path or query parameter that holds text PostgreSQL cannot store."""
    errors = []
    for source in (request.match_info, request.query):
        for name, value in source.items():
            if (detail := _unstorable(name)) is not None:
                errors.append({"parameter": name, "detail": "its name " + detail})
            elif (detail := _unstorable(value)) is not None:
                errors.append({"parameter": name, "detail": detail})
    if errors:
        raise Problem(400, "; ".join(f"parameter {e['parameter']}: {e['detail']}" for e in errors), errors=errors)


def _check_strings(data: Any) -> list[FieldProblem]:
    """Every string of a parsed JSON document (keys too) that PostgreSQL text cannot hold, as field
    problems: one walk without recursion (the parser already bounds the depth), that builds a
    location only for containers, so a long list of numbers costs a type check per number."""
    if isinstance(data, str):
        detail = _unstorable(data)
        return [] if detail is None else [{"pointer": "", "detail": detail}]
    if not isinstance(data, dict | list):
        return []
    problems: list[FieldProblem] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        loc, container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(key, str) and (detail := _unstorable(key)) is not None:
                problems.append({"pointer": json_pointer(loc), "detail": "a key " + detail})
            elif isinstance(item, str):
                if (detail := _unstorable(item)) is not None:
                    problems.append({"pointer": json_pointer((*loc, key)), "detail": detail})
            elif isinstance(item, dict | list):
                stack.append(((*loc, key), item))
    return sorted(problems, key=lambda p: p["pointer"])


def _parse_query(endpoint: Endpoint, request: web.Request) -> Any:
    if endpoint.query is None:
        return None
    repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
    if repeated:
        errors = [{"parameter": name, "detail": "given more than once; give it once"} for name in repeated]
        raise Problem(400, "; ".join(f"query parameter {e['parameter']}: {e['detail']}" for e in errors), errors=errors)
    raw = {k: v for k, v in request.query.items()}
    try:
        return endpoint.query.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"parameter": ".".join(str(p) for p in e["loc"]), "detail": e["msg"]} for e in exc.errors(include_url=False)
        ]
        raise Problem(
            400,
            "; ".join(f"query parameter {e['parameter']}: {e['detail']}" for e in errors),
            errors=errors,
        ) from None


async def _parse_body(endpoint: Endpoint, request: web.Request) -> tuple[Any, bytes | None]:
    if endpoint.body is None:
        return None, None
    raw = await request.read()
    if not raw:
        raise validation_problem([{"pointer": "", "detail": "a JSON object is required"}])
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise Problem(415, f"send the body as application/json, not {ctype}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # as /v2 infer (core.tensor_codec): too deep for the parser is malformed
        raise Problem(400, "the body is not valid JSON: nested too deep") from None
    if problems := _check_strings(data):
        raise validation_problem(problems)
    try:
        return endpoint.body.model_validate(data), raw
    except ValidationError as exc:
        raise validation_problem(validation_problems(exc)) from None


def render(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(by_alias=True), content_type="application/json")


async def _handle(endpoint: Endpoint, request: web.Request, tenant_id: str) -> web.StreamResponse:
    _check_parameters(request)
    query = _parse_query(endpoint, request)
    body, raw = await _parse_body(endpoint, request)
    call: Call[Any, Any] = Call(
        tenant_id=tenant_id, params=dict(request.match_info), body=body, query=query, raw_body=raw
    )
    if endpoint.idempotent:
        outcome = await idempotency.claim(context(request), request, tenant_id, raw)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        call.idempotency = outcome
    try:
        result = await endpoint.handler(request, call)
    except BaseException:
        if call.idempotency:
            await idempotency.finish(context(request), call.idempotency, None, None)
        raise
    response = render(result, endpoint.status) if isinstance(result, BaseModel) else result
    response.headers.update(call.response_headers)
    if call.idempotency:
        body_json = result.model_dump(mode="json", by_alias=True) if isinstance(result, BaseModel) else None
        await idempotency.finish(context(request), call.idempotency, response, body_json)
    return response


def wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        _check_headers(endpoint, request)
        tenant_id = await authenticate(request) if endpoint.auth else ""
        # on every answer of a limited route, refusals and errors included (429 here, before any work)
        rate_headers = await limit_request(request, tenant_id, endpoint.method, endpoint.path) if tenant_id else {}
        try:
            response = await _handle(endpoint, request, tenant_id)
        except Problem as problem:
            problem.headers = {**rate_headers, **problem.headers}
            raise
        response.headers.update(rate_headers)
        return response

    handle.__name__ = endpoint.operation_id
    return handle


def add_routes(app: web.Application, tables: list[Endpoints]) -> None:
    for table in tables:
        for endpoint in table.items:
            app.router.add_route(endpoint.method, endpoint.path, wrap(endpoint), name=endpoint.operation_id)
