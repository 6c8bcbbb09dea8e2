"""Webhooks per Standard Webhooks: tenant secrets, signatures, target checks and the outbox.

A webhook is recorded as a ``webhook_deliveries`` row in the same transaction as
the state change it reports (an outbox), then handed to the webhooks queue after
commit; ``workers.webhooks`` sends it, retries it and records every attempt. The
row id is the ``webhook-id`` header, the same on every retry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from core.dispatch import later
from core.ids import new_id
from core.job_states import RUNNING, TERMINAL
from core.models import WebhookDelivery, WebhookSecret

SECRET_PREFIX = "whsec_"
EVENTS = ("start", "progress", "completed")
# the webhook event a status change of a job or a prediction sends
EVENT_FOR_STATUS = {RUNNING: "start", **dict.fromkeys(TERMINAL, "completed")}
DELIVER_TASK = "workers.webhooks.deliver"
# after a rotation the old secret signs too, so receivers can switch over without dropping events
ROTATION_OVERLAP = timedelta(hours=24)


class UnsafeWebhookUrl(ValueError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)


def signing_secrets(row: WebhookSecret, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    previous = row.previous_secret
    if previous and row.rotated_at and now - row.rotated_at < ROTATION_OVERLAP:
        return [row.secret, previous]
    return [row.secret]


def get_or_create_secret(session: Session, tenant_id: str) -> WebhookSecret:
    row = session.get(WebhookSecret, tenant_id)
    if row is None:
        row = WebhookSecret(tenant_id=tenant_id, secret=new_secret())
        session.add(row)
        session.flush()
    return row


def rotate_secret(session: Session, tenant_id: str) -> WebhookSecret:
    row = get_or_create_secret(session, tenant_id)
    row.previous_secret, row.secret, row.rotated_at = row.secret, new_secret(), datetime.now(UTC)
    session.flush()
    return row


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Refuse anything but http(s) to a public address (unless private targets are allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl("webhook URLs must use http or https")
    if not parts.hostname:
        raise UnsafeWebhookUrl("the webhook URL has no host")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("webhook URLs may not carry credentials")
    if allow_private:
        return
    try:
        addresses = [parts.hostname] if _is_ip(parts.hostname) else _resolve(parts.hostname) if resolve else []
    except OSError as exc:
        raise UnsafeWebhookUrl(f"the webhook host {parts.hostname!r} does not resolve: {exc}") from None
    for address in addresses:
        if _is_private(address):
            raise UnsafeWebhookUrl(
                f"the webhook host {parts.hostname!r} is a private, loopback or link-local address ({address})"
            )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _resolve(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def wants(event: str, webhook: str | None, events_filter: list[str] | None) -> bool:
    return bool(webhook) and (not events_filter or event in events_filter)


def enqueue(
    session: Session, tenant_id: str, subject_id: str, event: str, url: str, payload: dict[str, Any]
) -> WebhookDelivery:
    """Record a delivery in the caller's transaction; it is sent to the webhooks queue after commit."""
    delivery = WebhookDelivery(
        id=new_id("webhook_delivery"),
        tenant_id=tenant_id,
        subject_id=subject_id,
        event=event,
        url=url,
        payload=payload,
        status="pending",
        attempts=[],
        next_attempt_at=datetime.now(UTC),
    )
    session.add(delivery)
    later(session, DELIVER_TASK, delivery.id, queue="webhooks")
    return delivery
