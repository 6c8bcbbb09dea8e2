"""RFC 9457 problem details: the one way the API reports an error.

Handlers raise ``Problem``; the middleware in ``api.app`` renders it (and every
aiohttp HTTP error, and any unexpected exception) as ``application/problem+json`` —
except under ``/v2``, the Open Inference Protocol, whose clients (tritonclient…) expect
``{"error": "..."}``: there the same Problem is rendered in that shape (``oip_path``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from core.quotas import QuotaExceeded
from core.spec_kit import FieldProblem

PROBLEM_JSON = "application/problem+json"
OIP_PREFIX = "/v2"
TYPE_BASE = "https://maas.dev/problems/"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """An error answered to the client; ``errors`` lists ``{pointer, detail}`` for validation."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str | None = None,
        errors: Sequence[Mapping[str, object]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.type = type_ or _default_type(status)
        self.errors, self.headers, self.extra = errors, headers or {}, extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body

    def oip_response(self) -> web.Response:
        """The Open Inference Protocol's error shape: ``{"error": detail}`` with the same status and headers."""
        body = json.dumps({"error": self.detail})
        return web.Response(status=self.status, text=body, content_type="application/json", headers=self.headers)

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body(instance)),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def oip_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol routes, whose errors are ``{"error": ...}``."""
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def _default_type(status: int) -> str:
    return TYPE_BASE + TITLES.get(status, "error").lower().replace(" ", "-")


def validation_problem(errors: Sequence[FieldProblem], detail: str | None = None) -> Problem:
    return Problem(
        422,
        detail or "; ".join(f"{e['pointer'] or '/'}: {e['detail']}" for e in errors),
        type_=TYPE_BASE + "validation-error",
        errors=errors,
    )


def quota_problem(exceeded: QuotaExceeded, status: int = 409) -> Problem:
    """Over a tenant quota (``core.quotas``): the quota, its limit and the use, as extension members."""
    return Problem(
        status,
        f"over quota: {exceeded}; free some or ask for a higher quota",
        type_=TYPE_BASE + "quota-exceeded",
        quota=exceeded.quota,
        limit=exceeded.limit,
        used=exceeded.used,
        unit=exceeded.unit,
    )


def not_found(kind: str, id_: str) -> Problem:
    return Problem(404, f"no {kind} with id {id_!r}")
