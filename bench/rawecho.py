"""The latency baseline: a minimal Celery app with an echo task and a Redis result backend.

``bench/latency.py`` runs ``celery -A bench.rawecho worker`` with ``BENCH_REDIS_URL``
set (broker and result backend: the same Redis database), and times
``app.send_task(ECHO_TASK, ...).get()`` from its own process. The settings match
``bench/rawapp.py`` (JSON, ``acks_late``, prefetch 1), plus the result backend.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

__all__ = ["ECHO_TASK", "app", "make_app"]

ECHO_TASK = "bench.echo"


def echo(payload: Any) -> Any:
    """Return the payload: the reply of the round trip."""
    return payload


def make_app(redis_url: str) -> Celery:
    """The minimal app: Redis broker and result backend, JSON, late acks, prefetch 1."""
    app = Celery("bench_echo")
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # A safety net: the benchmark deletes its result keys, these expire anyway.
        result_expires=600,
        timezone="UTC",
        enable_utc=True,
    )
    app.task(name=ECHO_TASK, acks_late=True)(echo)
    return app


# The app `celery -A bench.rawecho worker` runs.
app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
