"""The baseline: a minimal Celery app with a no-op task, on the same Redis broker.

Configured from environment variables set by ``bench/throughput.py``:

* ``BENCH_REDIS_URL``: the broker (and the Redis the task counts in).
* ``BENCH_KEY``: prefix of this run's counter keys (``<key>:done``, ``:start``, ``:end``).
* ``BENCH_N``: how many tasks the run expects (the task that counts to N stamps the end).
* ``BENCH_RAW_CONFIG``: a comma-separated list of agentpost's Celery settings to
  copy onto this app, to price them one by one (default: none, the minimal app):
  ``events`` (worker task events + task-sent events), ``priority`` (kombu's Redis
  priority queues with 10 steps, and a priority on every task), ``time_limit``
  (a hard time limit per task), ``agentpost`` (all three); and ``defaults``: Celery's own
  defaults where this app departs from them for agentpost's guarantees (the ack before
  the task runs instead of after, 4 tasks prefetched per process instead of 1); and
  ``wait``: the task blocks 200 ms first, as ``bench.agents.wait_io`` does
  (``bench/io_bound.py``'s raw Celery case).

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

__all__ = ["NOOP_TASK", "WAIT_S", "app", "make_app", "parse_config", "send_options"]

NOOP_TASK = "bench.noop"
_OPTIONS = ("events", "priority", "time_limit")
_OTHERS = ("defaults", "wait")
WAIT_S = 0.2  # bench.agents.IO_WAIT_S (not imported: this worker loads no agentpost code)


def parse_config(value: str) -> frozenset[str]:
    """``"events,priority"`` -> the set of agentpost settings to copy (``agentpost``: all)."""
    parts = {p.strip() for p in value.split(",") if p.strip()}
    if "agentpost" in parts:
        parts = (parts - {"agentpost"}) | set(_OPTIONS)
    unknown = parts - set(_OPTIONS) - set(_OTHERS)
    if unknown:
        raise ValueError(
            f"unknown raw config option(s) {sorted(unknown)}; use {_OPTIONS + _OTHERS}"
        )
    return frozenset(parts)


def send_options(config: frozenset[str]) -> dict[str, Any]:
    """Publish options matching the configuration (the agentpost client sends priority 4)."""
    return {"priority": 4} if "priority" in config else {}


def make_app(broker_url: str, config: frozenset[str] = frozenset()) -> Celery:
    """The minimal app, plus the chosen agentpost settings."""
    app = Celery("bench_raw")
    app.conf.update(
        broker_url=broker_url,
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
    acks_late = "defaults" not in config
    if not acks_late:
        app.conf.update(
            task_acks_late=False, task_reject_on_worker_lost=False, worker_prefetch_multiplier=4
        )
    if "events" in config:
        app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    if "priority" in config:
        # As wire/brokers.py configures Redis's priorities for agentpost.
        app.conf.broker_transport_options = {
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
        }
    if "time_limit" in config:
        app.conf.task_time_limit = 300.0
    body = wait if "wait" in config else noop
    app.task(name=NOOP_TASK, ignore_result=True, acks_late=acks_late)(body)
    return app


_redis: dict[int, redis.Redis] = {}


def _conn() -> redis.Redis:
    """One Redis client per (forked) process."""
    pid = os.getpid()
    conn = _redis.get(pid)
    if conn is None:
        conn = _redis[pid] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return conn


def noop(*_args: Any, **_kwargs: Any) -> None:
    """Count this run; the first task stamps the start, the N-th the end."""
    _count(time.time())


def wait(*_args: Any, **_kwargs: Any) -> None:
    """``noop`` after 200 ms of blocking (an I/O-bound task, as ``bench.agents.wait_io``)."""
    started = time.time()
    time.sleep(WAIT_S)
    _count(started)


def _count(started: float) -> None:
    key = os.environ["BENCH_KEY"]
    pipe = _conn().pipeline(transaction=False)
    pipe.set(f"{key}:start", repr(started), nx=True)
    pipe.incr(f"{key}:done")
    _, done = pipe.execute()
    if done == int(os.environ["BENCH_N"]):
        _conn().set(f"{key}:end", repr(time.time()))


# The app `celery -A bench.rawapp worker` runs.
app = make_app(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"),
    parse_config(os.environ.get("BENCH_RAW_CONFIG", "")),
)
