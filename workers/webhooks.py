"""Sends webhook deliveries (the webhooks queue): signed, timed out, retried with backoff, recorded.

Every attempt is appended to the delivery row. 2xx ends it ``delivered``; 410 ends
it ``disabled`` (the receiver asked us to stop); anything else (a timeout, a
network error, 3xx, 4xx, 5xx) schedules a retry after an exponential, jittered
delay until ``webhook_max_attempts``, then ends it ``failed``. Jobs never wait on this.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from celery import shared_task
from sqlalchemy import select

from core.dispatch import commit_and_send, later
from core.models import WebhookDelivery
from core.settings import Settings
from core.webhooks import (
    DELIVER_TASK,
    UnsafeWebhookUrl,
    check_url,
    get_or_create_secret,
    signature_header,
    signing_secrets,
)
from workers.runtime import runtime

log = logging.getLogger("maas.webhooks")
_http = urllib3.PoolManager(retries=False)


def next_delay_s(attempt: int, settings: Settings, rand: random.Random | None = None) -> float:
    """Seconds before retry ``attempt + 1``: base·2^(attempt-1), capped, with ±50% jitter."""
    raw = min(settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** (attempt - 1))
    return raw * (0.5 + (rand or random).random())


def outcome(status_code: int | None) -> str:
    """What an attempt's answer means for the delivery: delivered, disabled, or retry."""
    if status_code is not None and 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "disabled"
    return "retry"


def _post(url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> tuple[int | None, str | None]:
    try:
        response = _http.request(
            "POST",
            url,
            body=body,
            headers=headers,
            redirect=False,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            preload_content=True,
        )
        return response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib3.exceptions.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def attempt_delivery(delivery: WebhookDelivery, secrets_: list[str], settings: Settings) -> dict[str, Any]:
    """Send once; the attempt as recorded."""
    started = time.perf_counter()
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    try:
        check_url(delivery.url, allow_private=settings.webhook_allow_private_targets)
        status, error = _post(
            delivery.url,
            {
                "content-type": "application/json",
                "user-agent": "maas-webhooks/1",
                "webhook-id": delivery.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(secrets_, delivery.id, timestamp, body),
            },
            body,
            settings.webhook_timeout_s,
        )
    except UnsafeWebhookUrl as exc:
        status, error = None, str(exc)
    return {
        "at": datetime.now(UTC).isoformat(),
        "status_code": status,
        "error": error,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }


@shared_task(bind=True, name=DELIVER_TASK)
def deliver(self, delivery_id: str) -> None:
    rt = runtime()
    settings = rt.settings
    with rt.db() as session:
        # SKIP LOCKED: a duplicate message for a delivery being sent right now does nothing
        delivery = session.scalar(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update(skip_locked=True)
        )
        if delivery is None or delivery.status != "pending":
            return
        secrets_ = signing_secrets(get_or_create_secret(session, delivery.tenant_id))
        record = attempt_delivery(delivery, secrets_, settings)
        delivery.attempts = [*delivery.attempts, record]
        result = outcome(record["status_code"])
        now = datetime.now(UTC)
        if result == "retry" and len(delivery.attempts) >= settings.webhook_max_attempts:
            result = "failed"
        if result == "retry":
            delay = next_delay_s(len(delivery.attempts), settings)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            later(session, DELIVER_TASK, delivery.id, queue="webhooks", countdown=delay)
        else:
            delivery.status, delivery.next_attempt_at = result, None
            if result == "delivered":
                delivery.delivered_at = now
        log.info(
            "webhook %s %s to %s: attempt %d -> %s",
            delivery.id,
            delivery.event,
            delivery.url,
            len(delivery.attempts),
            result,
        )
        commit_and_send(session, self.app)
