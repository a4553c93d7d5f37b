"""What a handler gets besides its message: attempt facts and ``ctx.send``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, uuid5

from messaging.envelope import Envelope, Priority
from wire.errors import PermanentError

if TYPE_CHECKING:
    from sqlmodel import Session

    from messaging.results import SendResult
    from messaging.sending import Sender

__all__ = ["Context", "child_key"]


def child_key(parent_key: str, index: int, explicit: str | None = None) -> str:
    """The idempotency key of a handler's child message.

    Derived from the parent's key and the child's position (or the key the handler
    gave), so a handler that runs again sends the same keys and the store drops
    the repeats.
    """
    suffix = f"key:{explicit}" if explicit is not None else f"n:{index}"
    return str(uuid5(NAMESPACE_URL, f"agentpost:{parent_key}/{suffix}"))


class Context:
    """The delivery context of one attempt."""

    def __init__(
        self, message: Envelope, *, sender: Sender, worker: str, session: Session | None = None
    ) -> None:
        self.message = message
        self._session = session
        self.attempt = message.attempt
        self.worker = worker
        self.logger = logging.getLogger(f"agentpost.agent.{message.receiver}")
        self._sender = sender  # the sending core of this process, not a whole Client
        self._children = 0

    @property
    def session(self) -> Session:
        """The store's database session of an ``exactly-once`` message.

        What the handler writes through it commits in the same transaction that marks
        the message delivered: once, even across crashes and redeliveries.

        Raises:
            PermanentError: the message was not sent ``exactly-once`` (no retry can
                change that: the message is dead at once, reason ``rejected``).
        """
        if self._session is None:
            raise PermanentError(
                f"ctx.session exists only for exactly-once messages; this one is "
                f"{self.message.delivery}: send it with delivery='exactly-once'"
            )
        return self._session

    @property
    def agent(self) -> str:
        """The name of the agent handling the message."""
        return self.message.receiver

    def send(
        self,
        receiver: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        priority: Priority | None = None,
        ttl_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SendResult:
        """Send a child message: same correlation id, ``parent_id`` set, key derived."""
        self._children += 1
        parent = self.message
        envelope = Envelope.build(
            receiver,
            payload,
            sender=parent.receiver,
            correlation_id=parent.correlation_id,
            parent_id=parent.id,
            idempotency_key=child_key(parent.idempotency_key, self._children, idempotency_key),
            priority=priority if priority is not None else parent.priority,
            ttl_s=ttl_s,
            metadata=metadata,
        )
        return self._sender.send(envelope)
