"""Dead-lettering: publish to the DLX and call the alert hook, never blocking delivery.

The store row is already ``dead`` when this runs (the store is the truth); the DLX
copy is for consumers that watch ``agentpost.dead_letter``. On Redis and the
filesystem broker there is no native DLX, so this publish is the only route there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from celery.utils.imports import symbol_by_name

from worker.routing import dead_letter_exchange, dead_letter_queue

if TYPE_CHECKING:
    from worker.app import AgentpostCelery

__all__ = ["DeadLetter", "dead_letter"]

log = logging.getLogger("agentpost.deadletter")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the DLX message and the alert hook carry."""

    message_id: str | None
    sender: str | None
    receiver: str | None
    correlation_id: str | None
    reason: str
    error: str
    attempts: int
    dead_at: float
    envelope: Any


def dead_letter(
    app: AgentpostCelery,
    envelope: Any,
    *,
    reason: str,
    error: str,
    attempts: int,
) -> DeadLetter:
    """Publish the dead envelope with its error to ``agentpost.dlx`` and alert."""
    raw = envelope if isinstance(envelope, dict) else {}
    letter = DeadLetter(
        message_id=_str_or_none(raw.get("id")),
        sender=_str_or_none(raw.get("sender")),
        receiver=_str_or_none(raw.get("receiver")),
        correlation_id=_str_or_none(raw.get("correlation_id")),
        reason=reason,
        error=error,
        attempts=attempts,
        dead_at=time.time(),
        envelope=envelope,
    )
    settings = app.settings
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                asdict(letter),
                exchange=dead_letter_exchange(settings),
                routing_key=dead_letter_queue(settings).routing_key,
                declare=[dead_letter_queue(settings)],
                serializer="json",
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
            )
    except Exception:
        # The row is dead in the store already; a lost DLX copy must not fail delivery.
        log.exception("could not publish dead letter %s to the DLX", letter.message_id)
    _alert(settings.alert_hook, letter)
    return letter


def _alert(hook: str, letter: DeadLetter) -> None:
    if not hook:
        return

    def call() -> None:
        try:
            symbol_by_name(hook)(letter)  # "pkg.module:func" or "pkg.module.func"
        except Exception:
            log.exception("alert hook %s failed for %s", hook, letter.message_id)

    # A slow or failing hook must never hold up the worker.
    threading.Thread(target=call, name="agentpost-alert", daemon=True).start()


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
