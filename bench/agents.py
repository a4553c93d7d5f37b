"""The agents the benchmarks deliver to.

* ``noop`` (``bench/throughput.py``): a handler that does nothing; ``noop_limited``,
  ``noop_metered`` and ``noop_circuit`` (``bench/flow.py``): the same under flow limits
  it never reaches, to price their checks.
* ``echo`` (``bench/latency.py``): replies with the request's payload.
* ``effect`` (``bench/faults.py``): records one effect row per run.
* ``wait`` and ``await`` (``bench/io_bound.py``): an I/O-bound agent, 200 ms of waiting
  (``time.sleep``, ``asyncio.sleep``) as a call to a model would be.

``python -m messaging.cli worker bench.agents`` imports this module in the worker.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache
from typing import Any

from sqlalchemy import text

import storage
from messaging.agents import agent
from messaging.context import Context
from messaging.envelope import Envelope
from wire.settings import Settings

__all__ = [
    "await_io",
    "echo",
    "effect",
    "noop",
    "noop_circuit",
    "noop_limited",
    "noop_metered",
    "wait_io",
]

IO_WAIT_S = 0.2


@agent("noop")
def noop(msg: Envelope, ctx: Context) -> None:
    """Accept the message and reply nothing."""
    return None


@agent("noop_limited", max_concurrency=64)
def noop_limited(msg: Envelope, ctx: Context) -> None:
    """``noop`` under a concurrency limit it never reaches (``bench/flow.py``: its cost)."""
    return None


@agent("noop_metered", rate_limit="100000/s")
def noop_metered(msg: Envelope, ctx: Context) -> None:
    """``noop`` under a rate limit it never reaches."""
    return None


@agent("noop_circuit", circuit_after=1000)
def noop_circuit(msg: Envelope, ctx: Context) -> None:
    """``noop`` with a circuit breaker that stays closed."""
    return None


@agent("echo")
def echo(msg: Envelope, ctx: Context) -> Any:
    """Reply with the request's payload (the request/reply round trip of the latency bench)."""
    return msg.payload


@agent("wait")
def wait_io(msg: Envelope, ctx: Context) -> None:
    """Wait 200 ms in a blocking call (a synchronous HTTP client)."""
    time.sleep(IO_WAIT_S)


@agent("await")
async def await_io(msg: Envelope, ctx: Context) -> None:
    """Wait 200 ms on the event loop (an async HTTP client)."""
    await asyncio.sleep(IO_WAIT_S)


_EFFECT = text(
    "INSERT INTO fault_effects (key, delivery, message_id, attempt) VALUES (:k, :d, :m, :a)"
)


@agent("effect", max_retries=50)
def effect(msg: Envelope, ctx: Context) -> int:
    """The fault run's agent (``bench/faults.py``): one ``fault_effects`` row per run.

    An exactly-once message writes it through ``ctx.session`` (committed with the
    completion, so exactly once); an at-least-once message commits it on its own
    first (so at least once: a kill after the commit runs it again).
    """
    values = {"k": msg.idempotency_key, "d": msg.delivery, "m": str(msg.id), "a": ctx.attempt}
    if msg.delivery == "exactly-once":
        ctx.session.execute(_EFFECT, values)
    else:
        with storage.engine_for(_database()).begin() as conn:
            conn.execute(_EFFECT, values)
    return ctx.attempt


@cache
def _database() -> str:
    return Settings().database
