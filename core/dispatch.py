"""Messages to the broker that must leave only once their transaction has committed.

Code that changes state records the messages it implies with ``later(session, …)``;
``commit_and_send`` commits, then hands them to Celery with ``send``. A message lost
between the two (a crash, a broker outage) costs nothing but time: the reconciler
finds the queued job or the pending webhook in Postgres and sends it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

log = logging.getLogger("maas.dispatch")
# a broker outage must not hang a request: fail fast, the reconciler retries later
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


class Sender(Protocol):
    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


@dataclass(frozen=True)
class Message:
    task: str
    args: tuple[Any, ...]
    queue: str
    countdown: float | None = None


def later(session: Session, task: str, *args: Any, queue: str, countdown: float | None = None) -> None:
    session.info.setdefault("maas_messages", []).append(Message(task, args, queue, countdown))


def take(session: Session) -> list[Message]:
    return session.info.pop("maas_messages", [])


def send(sender: Sender, messages: list[Message]) -> int:
    """Publish ``messages``; the number sent. Failures are logged, not raised."""
    sent = 0
    for message in messages:
        try:
            sender.send_task(
                message.task,
                args=list(message.args),
                queue=message.queue,
                countdown=message.countdown,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
            sent += 1
        except Exception as exc:  # the reconciler will send it again
            log.warning("could not publish %s%s: %s", message.task, message.args, exc)
    return sent


def commit_and_send(session: Session, sender: Sender) -> None:
    session.commit()
    send(sender, take(session))
