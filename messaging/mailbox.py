"""Pull mailboxes: agents that live outside Celery workers take their messages here.

A mailbox agent's messages are never published to a broker queue: ``receive``
claims the most urgent, then oldest, due message straight from the store (the same
lease as a worker's claim). A message neither acked nor nacked within its lease is
claimable again, and its lost attempt is recorded.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import TYPE_CHECKING, Any

import storage
from messaging.envelope import Envelope, dump_json, parse_envelope
from messaging.errors import InvalidEnvelope, LeaseExpired
from messaging.results import MessageState

if TYPE_CHECKING:
    from messaging.client import Client

__all__ = ["Mailbox", "ReceivedMessage"]

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.2


class ReceivedMessage:
    """A message taken from a mailbox, to ``ack``, ``nack`` or ``reply`` to once."""

    def __init__(self, mailbox: Mailbox, taken: storage.Taken, envelope: Envelope) -> None:
        self._mailbox = mailbox
        self._taken = taken
        self._started_at = time.time()
        self.envelope = envelope

    @property
    def message_id(self) -> str:
        return self._taken.message_id

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    @property
    def attempt(self) -> int:
        return self._taken.claim.attempt

    def ack(self) -> None:
        """Mark the message delivered."""
        self._finish(reply=None)

    def reply(self, payload: Any) -> None:
        """Mark the message delivered with ``payload`` as its reply (what ``request`` returns)."""
        self._finish(reply=dump_json(payload))

    def nack(self, error: str | BaseException = "nacked") -> None:
        """Fail this attempt: retried with backoff, dead after the agent's max attempts."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        tb = None if isinstance(error, str) else "".join(traceback.format_exception(error))
        self._mailbox._fail(self, text, tb)

    def _finish(self, *, reply: str | None) -> None:
        engine = self._mailbox._engine
        ok = storage.complete(
            engine,
            self.message_id,
            claim_=self._taken.claim,
            worker=self._mailbox.consumer,
            started_at=self._started_at,
            now=time.time(),
            reply=reply,
        )
        if not ok:
            raise LeaseExpired(
                f"message {self.message_id}: the lease of attempt {self.attempt} expired "
                "and the message was taken again; this outcome was not recorded"
            )


class Mailbox:
    """The inbox of one mailbox agent (``client.mailbox("writer")``)."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:mailbox"

    @property
    def _engine(self) -> Any:
        return storage.engine_for(self._client.settings.database)

    def receive(
        self, *, timeout_s: float = 0.0, lease_s: float | None = None
    ) -> ReceivedMessage | None:
        """The next message (most urgent first, then oldest), or ``None`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        lease = lease_s if lease_s is not None else self._client.settings.lease_s
        while True:
            now = time.time()
            taken = storage.claim_next(
                self._engine, self.name, worker=self.consumer, now=now, lease_s=lease
            )
            if taken is not None:
                message = self._open(taken, now)
                if message is not None:
                    return message
                continue  # it was expired or invalid: dead-lettered, look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    def peek(self, limit: int = 10) -> list[MessageState]:
        """The next ``limit`` messages ``receive`` would return, without taking them."""
        rows = storage.peek(self._engine, self.name, now=time.time(), limit=limit)
        return [MessageState.from_row(row, []) for row in rows]

    def _open(self, taken: storage.Taken, now: float) -> ReceivedMessage | None:
        import json  # noqa: PLC0415

        raw = json.loads(taken.envelope)
        try:
            envelope = parse_envelope(raw)
        except InvalidEnvelope as exc:
            self._dead(taken, raw, reason="invalid", error=str(exc), tb=None, started=now)
            return None
        if taken.expires_at is not None and taken.expires_at <= now:
            error = f"expired at {envelope.expires_at} before a receiver took it"
            self._dead(taken, raw, reason="expired", error=error, tb=None, started=now)
            return None
        return ReceivedMessage(
            self, taken, envelope.model_copy(update={"attempt": taken.claim.attempt})
        )

    def _fail(self, message: ReceivedMessage, error: str, tb: str | None) -> None:
        options = self._client._mailbox_options(self.name)
        settings = self._client.settings
        max_retries = (
            options.max_retries if options.max_retries is not None else settings.max_retries
        )
        if message.attempt > max_retries:
            raw = message.envelope.wire()
            self._dead(
                message._taken,
                raw,
                reason="exhausted",
                error=error,
                tb=tb,
                started=message._started_at,
            )
            return
        from worker.deliver import backoff_delay_s  # noqa: PLC0415

        delay = backoff_delay_s(
            message.attempt,
            base_s=options.backoff_s if options.backoff_s is not None else settings.backoff_s,
            max_s=options.backoff_max_s
            if options.backoff_max_s is not None
            else settings.backoff_max_s,
            jitter=settings.backoff_jitter,
        )
        now = time.time()
        ok = storage.schedule_retry(
            self._engine,
            message.message_id,
            claim_=message._taken.claim,
            worker=self.consumer,
            started_at=message._started_at,
            now=now,
            due_at=now + delay,
            error=error,
            traceback=tb,
        )
        if not ok:
            raise LeaseExpired(f"message {message.message_id}: lease lost before the nack")

    def _dead(
        self,
        taken: storage.Taken,
        raw: Any,
        *,
        reason: str,
        error: str,
        tb: str | None,
        started: float,
    ) -> None:
        if storage.mark_dead(
            self._engine,
            taken.message_id,
            reason=reason,
            error=error,
            now=time.time(),
            claim_=taken.claim,
            worker=self.consumer,
            started_at=started,
            traceback=tb,
        ):
            from worker.deadletter import dead_letter  # noqa: PLC0415

            dead_letter(
                self._client.app, raw, reason=reason, error=error, attempts=taken.claim.attempt
            )
