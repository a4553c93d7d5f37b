"""Dead-lettering: publish to the DLX and call the alert hook, never blocking delivery.

The store row is already ``dead`` when this runs (the store is the truth); the DLX
copy is for consumers that watch ``agentpost.dead_letter``. On Redis and the
filesystem broker there is no native DLX, so this publish is the only route there.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from celery.utils.imports import symbol_by_name

from wire.queues import dead_letter_exchange, dead_letter_queue

if TYPE_CHECKING:
    from wire.app import AgentpostCelery
    from wire.settings import Settings

__all__ = ["DeadLetter", "alert", "dead_letter", "letter_of", "publish_letter"]

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
    letter = letter_of(envelope, reason=reason, error=error, attempts=attempts)
    failure = publish_letter(app, letter)
    if failure is not None:
        # The row is dead in the store already; a lost DLX copy must not fail delivery.
        log.error(
            "could not publish dead letter %s to the DLX: %s: %s",
            letter.message_id,
            type(failure).__name__,
            failure,
        )
    alert(app.settings, letter)
    return letter


def letter_of(envelope: Any, *, reason: str, error: str, attempts: int) -> DeadLetter:
    """The dead letter of an envelope (its wire dict, or anything a broker carried)."""
    raw = envelope if isinstance(envelope, dict) else {}
    return DeadLetter(
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


def publish_letter(app: AgentpostCelery, letter: DeadLetter) -> Exception | None:
    """Publish ``letter`` to ``agentpost.dlx``; the error if the broker did not take it."""
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
    except Exception as exc:
        return exc
    return None


def alert(settings: Settings, letter: DeadLetter) -> None:
    """The alert hook and the webhook, each in a thread of its own."""
    _alert(settings.alert_hook, letter)
    webhook = settings.alert_webhook_url.get_secret_value()
    if webhook:
        _in_background(_post, webhook, letter, settings.alert_webhook_retries)


def _in_background(target: Any, *args: Any) -> None:
    # A slow or failing alert must never hold up the worker.
    threading.Thread(target=target, args=args, name="agentpost-alert", daemon=True).start()


def _alert(hook: str, letter: DeadLetter) -> None:
    if not hook:
        return

    def call() -> None:
        try:
            symbol_by_name(hook)(letter)  # "pkg.module:func" or "pkg.module.func"
        except Exception:
            log.exception("alert hook %s failed for %s", hook, letter.message_id)

    _in_background(call)


def _post(url: str, letter: DeadLetter, retries: int) -> None:
    """POST the dead letter as JSON, retrying with backoff; failures are logged only."""
    body = json.dumps(asdict(letter), default=str).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            error = str(exc)
        else:
            error = f"HTTP {response.status}"
        if attempt < retries:
            time.sleep(0.5 * 2**attempt)
    # The URL may carry a token: log the host only.
    host = urllib.parse.urlsplit(url).hostname
    log.error("alert webhook on %s failed for %s: %s", host, letter.message_id, error)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
