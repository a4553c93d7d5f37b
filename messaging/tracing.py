"""OpenTelemetry trace context, carried in the envelope from ``send`` to the handler.

Active only when the optional extra is installed (``pip install agentpost[otel]``)
and the application configured a tracer provider; otherwise every call is a no-op.
The context rides in the envelope (not only in Celery headers) so that a message
the sweeper republishes or an operator redrives keeps its trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional extra is not installed
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from messaging.envelope import Envelope

__all__ = ["current_context", "delivery_span"]


def current_context() -> dict[str, str]:
    """The caller's trace context as W3C headers (``traceparent``), or empty."""
    if propagate is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _no_provider() -> bool:
    # The API's stand-in until the application sets a provider: its spans record
    # nothing, and building one cost 6 % of a no-op delivery's CPU.
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextlib.contextmanager
def delivery_span(envelope: Envelope, *, attempt: int) -> Iterator[None]:
    """A consumer span around one handler run, child of the sender's context."""
    if trace is None or propagate is None or _no_provider():
        yield
        return
    parent = propagate.extract(envelope.trace) if envelope.trace else None
    attributes: dict[str, Any] = {
        "messaging.system": "agentpost",
        "messaging.operation.type": "process",
        "messaging.destination.name": envelope.receiver,
        "messaging.message.id": str(envelope.id),
        "messaging.message.conversation_id": envelope.correlation_id,
        "agentpost.sender": envelope.sender,
        "agentpost.attempt": attempt,
    }
    tracer = trace.get_tracer("agentpost")
    with tracer.start_as_current_span(
        f"deliver {envelope.receiver}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield
