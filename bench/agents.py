"""The agents the benchmarks deliver to.

* ``noop`` (``bench/throughput.py``): a handler that does nothing.
* ``echo`` (``bench/latency.py``): replies with the request's payload.

``python -m messaging.cli worker bench.agents`` imports this module in the worker.
"""

from __future__ import annotations

from typing import Any

from messaging.agents import agent
from messaging.context import Context
from messaging.envelope import Envelope

__all__ = ["echo", "noop"]


@agent("noop")
def noop(msg: Envelope, ctx: Context) -> None:
    """Accept the message and reply nothing."""
    return None


@agent("echo")
def echo(msg: Envelope, ctx: Context) -> Any:
    """Reply with the request's payload (the request/reply round trip of the latency bench)."""
    return msg.payload
