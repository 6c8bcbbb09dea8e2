"""The Python SDK of maas: ``Client`` (blocking) and ``AsyncClient`` (asyncio) on httpx.

Objects are the API's own typed definitions (``core.objects``: ``JobObject``, ``FileObject``…),
errors carry the RFC 9457 problem (``ValidationError.pointer``), lists are iterators that fetch
page after page, and a job's events stream live with resumption. See the README's tour.

    from maas_client import Client

    maas = Client("http://127.0.0.1:8080", "maas_…")   # or MAAS_BASE_URL / MAAS_API_KEY
    job = maas.jobs.create("training", spec)
    for event in maas.jobs.events(job.id, stream=True):
        print(event.type, event.message)

Named ``maas_client`` rather than ``maas.client``: the repository's packages are flat, one per
concern (``api``, ``cli``, ``core``…), and a ``maas`` package would read as the whole platform; a
client package of its own name, like ``tritonclient``, can also ship alone later without renaming
a single import.
"""

__version__ = "0.1.0"

from maas_client.async_client import AsyncClient
from maas_client.client import Client
from maas_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    DeploymentFailed,
    FieldError,
    Gone,
    MaasError,
    NotFound,
    PermissionDenied,
    Problem,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationError,
    WaitTimeout,
    WebhookVerificationError,
)
from maas_client.retries import RetryPolicy
from maas_client.webhooks import verify as verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "DeploymentFailed",
    "FieldError",
    "Gone",
    "MaasError",
    "NotFound",
    "PermissionDenied",
    "Problem",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "ValidationError",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
