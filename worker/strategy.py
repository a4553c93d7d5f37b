"""The worker's door: a message that is not a delivery task never reaches Celery's strategy.

Celery's consumer hands every message whose ``task`` header names ``agentpost.deliver``
to the task's strategy, and an exception there other than the few it expects
(``InvalidTaskError``, ``ContentDisallowed``, ``DecodeError``) stops the worker with
"Unrecoverable error"; the message, never acked, comes back and stops the next start
too. Bodies of the wrong shape (``[1, 2]``) do that, and so do the raw content types
kombu lets through whatever ``accept_content`` says (``application/data``,
``application/text``: celery/celery#7975, #4308). So each message is checked here
first: JSON, the ``[args, kwargs, embed]`` triple, one envelope object (and the row's
``created_at``, a number, by name). One that fails
is moved to the dead-letter queue with the reason ``undecodable`` (or, when even that
publish fails, dropped with one error line naming its queue and headers) and acked; the
worker goes on with the next.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from celery.worker.strategy import default

from wire.deadletter import alert, letter_of, publish_letter

__all__ = ["guarded", "undecodable"]

log = logging.getLogger("agentpost.worker")

_PREVIEW = 512  # characters of a refused body kept in its dead letter


def undecodable(message: Any) -> str | None:
    """Why ``message`` is not an ``agentpost.deliver`` task, or ``None`` if it is one."""
    if message.content_type != "application/json":
        return f"content type {message.content_type!r} is not a delivery task (JSON only)"
    body = message.body
    try:
        decoded = json.loads(body.decode() if isinstance(body, bytes) else body)
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        return f"the body is not JSON: {exc}"
    if not (isinstance(decoded, list) and len(decoded) == 3):
        return "the body is not Celery's [args, kwargs, embed] triple"
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "the task's args are not a list or its kwargs not an object"
    if embed is not None and not isinstance(embed, dict):
        return "the task's embed is not an object"
    envelopes = [*args, *([kwargs["envelope"]] if "envelope" in kwargs else [])]
    if len(envelopes) != 1 or set(kwargs) - {"envelope", "created_at"}:
        return "agentpost.deliver takes the envelope and, by name, the row's created_at"
    if not isinstance(envelopes[0], dict):
        return "the envelope is not a JSON object"
    created_at = kwargs.get("created_at")
    if created_at is not None and not _finite(created_at):
        return "the task's created_at is not a number of seconds"
    return None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def guarded(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy behind the check (the task's ``Strategy``)."""
    handle = default(task, app, consumer, **kwargs)

    def on_message(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        problem = undecodable(message)
        if problem is None:
            return handle(message, body, ack, reject, callbacks, **kw)
        _quarantine(app, message, problem)
        return None

    return on_message


def _quarantine(app: Any, message: Any, problem: str) -> None:
    headers = message.headers or {}
    queue = (message.delivery_info or {}).get("routing_key")
    shown = {key: headers.get(key) for key in ("task", "id") if key in headers}
    body = message.body
    preview = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    record = {
        "id": _text(headers.get("id")),
        "queue": queue,
        "headers": {key: _text(value) for key, value in shown.items()},
        "content_type": message.content_type,
        "body": preview[:_PREVIEW],
    }
    letter = letter_of(record, reason="undecodable", error=problem, attempts=0)
    failure = publish_letter(app, letter)
    fate = "moved to the dead-letter queue" if failure is None else f"dropped ({failure})"
    log.error("refused a task from queue %s (headers %s): %s; %s", queue, shown, problem, fate)
    alert(app.settings, letter)
    message.ack()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:200]
