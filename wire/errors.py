"""The one error tree of agentpost.

::

    AgentpostError
    ├── ConfigurationError (ValueError)      bad settings or agent options, found at declaration
    ├── InvalidEnvelope (ValueError)         a message refused before anything is stored
    │   └── PayloadTooLarge                  over AGENTPOST_MAX_PAYLOAD_BYTES
    ├── UnknownAgent (LookupError)           a receiver that no agent has registered
    ├── InboxFull                            the receiver's backlog is at its max_backlog
    ├── MessageNotFound (LookupError)        no such message (or not in a state for that call)
    ├── RequestTimeout (TimeoutError)        no reply in time; carries the message id
    ├── RequestFailed                        the request ended dead; carries id, reason, error
    ├── StoreUnavailable (ConnectionError)   the database did not answer
    ├── SchemaOutdated                       the store's schema is behind: `agentpost db upgrade`
    ├── BrokerUnavailable (ConnectionError)  the broker did not answer
    ├── GatewayError                         the HTTP gateway refused a call (status, detail)
    └── DeliveryError                        raised on the worker side
        ├── PermanentError                   raise it in a handler to dead-letter at once
        ├── Retry                            raise it in a handler to try again later, uncounted
        ├── DeadLettered                     the final failure of a delivery task
        └── LeaseExpired                     a mailbox ack/nack/reply after the lease was lost

Users import them from ``messaging``. The store's and the broker's own errors
(SQLAlchemy; kombu, redis, amqp) are translated into ``StoreUnavailable``,
``SchemaOutdated`` and ``BrokerUnavailable`` at one boundary, ``wire/boundary.py``,
with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentpostError",
    "AmbiguousId",
    "BrokerUnavailable",
    "ConfigurationError",
    "DeadLettered",
    "DeliveryError",
    "GatewayError",
    "InboxFull",
    "InvalidEnvelope",
    "LeaseExpired",
    "MessageNotFound",
    "PayloadTooLarge",
    "PermanentError",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "SchemaOutdated",
    "StoreUnavailable",
    "UnknownAgent",
]


class AgentpostError(Exception):
    """The root of every error agentpost raises."""


class ConfigurationError(AgentpostError, ValueError):
    """Settings or agent options that cannot work."""


class InvalidEnvelope(AgentpostError, ValueError):
    """A message that is refused: nothing is stored or enqueued for it."""


class PayloadTooLarge(InvalidEnvelope):
    """The serialised payload is over the configured maximum."""


class UnknownAgent(AgentpostError, LookupError):
    """A receiver that no agent has registered."""


class InboxFull(AgentpostError):
    """The receiver's undelivered messages reached its ``max_backlog``: nothing was stored.

    Send again later, or ``send(..., wait_s=...)`` to wait for room.
    """

    def __init__(self, receiver: str, *, backlog: int, limit: int) -> None:
        super().__init__(
            f"agent {receiver!r} has {backlog} undelivered message(s), its max_backlog is "
            f"{limit}: send again later (or send(..., wait_s=...) to wait for room)"
        )
        self.receiver = receiver
        self.backlog = backlog
        self.limit = limit


class MessageNotFound(AgentpostError, LookupError):
    """No message with that id (or not in a state the call needs)."""


class AmbiguousId(AgentpostError, LookupError):
    """A shortened id that more than one message's id starts with (``candidates``)."""

    def __init__(self, message: str, *, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


class StoreUnavailable(AgentpostError, ConnectionError):
    """The database could not be reached or refused the statement."""


class SchemaOutdated(AgentpostError):
    """The store's schema is older than this agentpost: run ``agentpost db upgrade``."""


class BrokerUnavailable(AgentpostError, ConnectionError):
    """The broker could not be reached."""


class DeliveryError(AgentpostError):
    """Errors of the delivery side."""


class PermanentError(DeliveryError):
    """Raised by a handler: the message can never succeed, dead-letter it without retries."""


class Retry(DeliveryError):
    """Raised by a handler: try this message again in ``after_s`` seconds.

    Not a failure: the attempt is recorded ``postponed`` and spends none of the retries
    (a message that keeps postponing lives until its ``ttl_s``).
    """

    def __init__(self, reason: str = "", *, after_s: float) -> None:
        if not after_s >= 0:
            raise ValueError(f"Retry(after_s=...) must be >= 0, got {after_s!r}")
        super().__init__(reason or f"try again in {after_s:g} s")
        self.after_s = float(after_s)


class DeadLettered(DeliveryError):
    """The final failure of a delivery: the message is dead (its reason and last error)."""


class RequestTimeout(AgentpostError, TimeoutError):
    """No reply within the timeout; the request is still delivered later.

    Fetch its reply then with ``client.result(exc.message_id, timeout_s=...)``.
    """

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message)
        self.message_id = message_id


class RequestFailed(AgentpostError):
    """The request will never get a reply: it ended dead."""

    def __init__(self, message: str, *, message_id: str, reason: str | None) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.reason = reason


class GatewayError(AgentpostError):
    """The HTTP gateway refused a call: ``status_code`` and its ``detail``."""

    def __init__(
        self, status_code: int, detail: Any, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"gateway answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after_s = retry_after_s


class LeaseExpired(DeliveryError):
    """A mailbox message was acked, nacked or replied to after its lease was taken over."""
