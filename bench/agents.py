"""The agent the throughput benchmark delivers to: a handler that does nothing.

``python -m messaging.cli worker bench.agents`` imports this module in the worker.
"""

from __future__ import annotations

from messaging.agents import agent
from messaging.context import Context
from messaging.envelope import Envelope

__all__ = ["noop"]


@agent("noop")
def noop(msg: Envelope, ctx: Context) -> None:
    """Accept the message and reply nothing."""
    return None
