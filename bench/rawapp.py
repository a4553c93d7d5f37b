"""The baseline: a minimal Celery app with a no-op task, on the same Redis broker.

Configured from environment variables set by ``bench/throughput.py``:

* ``BENCH_REDIS_URL``: the broker (and the Redis the task counts in).
* ``BENCH_KEY``: prefix of this run's counter keys (``<key>:done``, ``:start``, ``:end``).
* ``BENCH_N``: how many tasks the run expects (the task that counts to N stamps the end).

The task does the least that lets the benchmark see it without a result backend:
one pipelined round trip (``SET start NX`` + ``INCR done``) per task, plus one
``SET end`` from the last task.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

__all__ = ["NOOP_TASK", "app", "noop"]

NOOP_TASK = "bench.noop"

app = Celery("bench_raw")
app.conf.update(
    broker_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"),
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    timezone="UTC",
    enable_utc=True,
)

_redis: dict[int, redis.Redis] = {}


def _conn() -> redis.Redis:
    """One Redis client per (forked) process."""
    pid = os.getpid()
    conn = _redis.get(pid)
    if conn is None:
        conn = _redis[pid] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return conn


@app.task(name=NOOP_TASK, ignore_result=True, acks_late=True)  # type: ignore[untyped-decorator]
def noop(*_args: Any, **_kwargs: Any) -> None:
    """Count this run; the first task stamps the start, the N-th the end."""
    started = time.time()
    key = os.environ["BENCH_KEY"]
    pipe = _conn().pipeline(transaction=False)
    pipe.set(f"{key}:start", repr(started), nx=True)
    pipe.incr(f"{key}:done")
    _, done = pipe.execute()
    if done == int(os.environ["BENCH_N"]):
        _conn().set(f"{key}:end", repr(time.time()))
