"""Delivery logging: every line logged during a delivery carries its message fields.

While the ``deliver`` task runs, a context holds ``message_id``, ``correlation_id``,
``sender``, ``receiver`` and ``attempt``; a filter on the worker's handlers copies them
onto each record (ours, Celery's retry/failure lines, and the handler's own logging).
``AGENTPOST_LOG_FORMAT=json`` swaps the format for one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from celery.apps import worker as celery_worker
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "DELIVERY_FIELDS",
    "DeliveryFields",
    "configure_handlers",
    "delivery_context",
    "json_only",
    "note",
]

DELIVERY_FIELDS = ("message_id", "correlation_id", "sender", "receiver", "attempt")

_current: ContextVar[dict[str, Any] | None] = ContextVar("agentpost_delivery", default=None)


@contextlib.contextmanager
def delivery_context(envelope: Any) -> Iterator[dict[str, Any]]:
    """Log fields for one delivery of ``envelope`` (a wire dict) until the block ends."""
    wire = envelope if isinstance(envelope, dict) else {}
    fields: dict[str, Any] = {
        "message_id": wire.get("id"),
        "correlation_id": wire.get("correlation_id"),
        "sender": wire.get("sender"),
        "receiver": wire.get("receiver"),
        "attempt": None,
    }
    token = _current.set(fields)
    try:
        yield fields
    finally:
        _current.reset(token)


def note(**fields: Any) -> None:
    """Update the current delivery's fields (the attempt is known once claimed)."""
    current = _current.get()
    if current is not None:
        current.update(fields)


class DeliveryFields(logging.Filter):
    """Copies the current delivery's fields onto every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current.get()
        if current is not None:
            for name, value in current.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


def configure_handlers(logger: logging.Logger, log_format: str) -> None:
    """Give ``logger``'s handlers the delivery filter, and the JSON format if asked."""
    for handler in logger.handlers:
        if not any(isinstance(f, DeliveryFields) for f in handler.filters):
            handler.addFilter(DeliveryFields())
        if log_format == "json":
            handler.setFormatter(
                JsonFormatter(
                    "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
                    rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                )
            )


def json_only() -> None:
    """What a JSON-logging worker prints besides its logs, as JSON lines too: Python's
    warnings through the logs, and the lines Celery's shutdown handlers write straight
    to a stream (``celery.apps.worker.safe_say``)."""
    logging.captureWarnings(True)
    patched: Any = celery_worker  # the stubs do not declare safe_say
    patched.safe_say = _say_json


def _say_json(msg: str, f: Any = sys.__stderr__) -> None:
    # Called from signal handlers: one os.write, no logging locks (as Celery's own).
    line = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "level": "WARNING"}
    line |= {"logger": "celery.apps.worker", "message": msg}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(f.fileno(), (json.dumps(line) + "\n").encode())
