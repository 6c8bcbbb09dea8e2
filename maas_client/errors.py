"""The SDK's errors: every answer that is not a success becomes a typed exception carrying the
RFC 9457 problem (``type``, ``title``, ``status``, ``detail``, and for validation ``errors`` with
the JSON ``pointer`` of each bad field), or the Open Inference Protocol's ``{"error": ...}``.

Pure: built from a status, headers and a body, so the sync and async clients share it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maas_client.retries import parse_retry_after


class MaasError(Exception):
    """Base of every error the SDK raises."""


@dataclass(frozen=True)
class FieldError:
    """One bad field of a request: its JSON pointer (``/spec/hyperparameters/lr``) and what is wrong."""

    pointer: str
    detail: str


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem as the API answered it; ``extra`` holds members beyond the standard ones."""

    status: int
    title: str
    detail: str
    type: str = "about:blank"
    instance: str | None = None
    errors: tuple[FieldError, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, status: int, body: bytes) -> Problem:
        """The problem in ``body``; a body that is not one (a proxy's HTML page) becomes its detail."""
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            text = body.decode(errors="replace").strip()[:500]
            return cls(status=status, title="Error", detail=text or f"HTTP {status}")
        if "error" in document and "status" not in document:  # the Open Inference Protocol's shape
            return cls(status=status, title="Inference error", detail=str(document["error"]))
        standard = {"type", "title", "status", "detail", "instance", "errors"}
        errors = tuple(
            FieldError(pointer=str(e.get("pointer") or e.get("parameter") or ""), detail=str(e.get("detail", "")))
            for e in document.get("errors") or []
            if isinstance(e, dict)
        )
        return cls(
            status=status,
            title=str(document.get("title", "Error")),
            detail=str(document.get("detail", "")),
            type=str(document.get("type", "about:blank")),
            instance=document.get("instance"),
            errors=errors,
            extra={k: v for k, v in document.items() if k not in standard},
        )


class APIError(MaasError):
    """The API answered with an error status; ``problem`` says why."""

    def __init__(self, problem: Problem, *, retry_after: float | None = None):
        self.problem, self.retry_after = problem, retry_after
        super().__init__(self._message())

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def detail(self) -> str:
        return self.problem.detail

    @property
    def errors(self) -> tuple[FieldError, ...]:
        return self.problem.errors

    @property
    def pointer(self) -> str | None:
        """The pointer of the first bad field, for a validation error; None otherwise."""
        return self.problem.errors[0].pointer if self.problem.errors else None

    def _message(self) -> str:
        message = f"{self.problem.status} {self.problem.title}: {self.problem.detail}"
        shown = [f"{e.pointer}: {e.detail}" for e in self.problem.errors if e.pointer]
        return message if not shown or self.problem.detail in shown else f"{message} ({'; '.join(shown)})"


class BadRequest(APIError):
    """400: the request cannot be read (or an inference input the model cannot take)."""


class AuthenticationError(APIError):
    """401: no API key, or one that is unknown or revoked."""


class PermissionDenied(APIError):
    """403: the key may not do this, or a quota is reached."""


class NotFound(APIError):
    """404: no such object in this tenant."""


class Conflict(APIError):
    """409: the object is in a state that refuses the call (a finished job, a deployed version…)."""


class Gone(APIError):
    """410: the content was deleted (an artifact retention or a delete let go)."""


class ValidationError(APIError):
    """422: a field is wrong; ``errors`` lists each with its JSON pointer."""


class RateLimited(APIError):
    """429: too many requests; ``retry_after`` says when to come back (retries were used up)."""


class ServiceUnavailable(APIError):
    """503: not ready, or a queue is full; ``retry_after`` says when to come back."""


class ServerError(APIError):
    """5xx: the platform failed; not the request's fault."""


class APIConnectionError(MaasError):
    """No answer: the connection failed or was dropped, and the call could not be safely repeated."""


class WaitTimeout(MaasError):
    """``wait`` gave up before the object reached the state waited for; ``last`` is what was seen last."""

    def __init__(self, message: str, last: Any):
        super().__init__(message)
        self.last = last


class ChecksumMismatch(MaasError):
    """A download's SHA-256 is not the one the API recorded; the partial file was removed."""


class DeploymentFailed(MaasError):
    """Every model server that tried to load the deployed version failed; ``deployment`` says why."""

    def __init__(self, message: str, deployment: Any):
        super().__init__(message)
        self.deployment = deployment


class WebhookVerificationError(MaasError):
    """A webhook's signature or timestamp does not check out: do not trust its body."""


BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> APIError:
    """The typed error for an answer with an error status."""
    kind = BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return kind(Problem.from_body(status, body), retry_after=parse_retry_after(headers.get("retry-after")))
