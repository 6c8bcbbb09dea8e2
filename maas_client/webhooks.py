"""Checking a webhook the platform sent, per Standard Webhooks, with the platform's own signing
function (``core.webhooks.sign``): the signature over ``"{webhook-id}.{webhook-timestamp}.{body}"``
must match one of those in ``webhook-signature`` (there are two for a day after a rotation), and
the timestamp must be within ``tolerance_s`` of now, so an old delivery cannot be replayed.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from core.webhooks import sign
from maas_client.errors import WebhookVerificationError

DEFAULT_TOLERANCE_S = 300


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's body as a dict once its signature and timestamp check out.

    ``payload`` is the raw body as received (not re-serialized JSON); ``headers`` the request's
    headers (any case); ``secret`` the tenant's ``whsec_…`` (``client.webhooks.secret().key``).
    Raises :class:`WebhookVerificationError` otherwise.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (lowered.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a number: {timestamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - sent_at:.0f} s from now (tolerance {tolerance_s} s)"
        )
    expected = sign(secret, msg_id, sent_at, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise WebhookVerificationError("no signature in webhook-signature matches the secret")
    try:
        document = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    if not isinstance(document, dict):
        raise WebhookVerificationError("the signed body is not a JSON object")
    return document
