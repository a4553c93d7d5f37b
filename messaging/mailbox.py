"""Pull mailboxes: agents that live outside Celery workers take their messages here.

A mailbox agent's messages are never published to a broker queue: ``receive``
claims the most urgent, then oldest, due message straight from the store (the same
lease as a worker's claim). A message neither acked nor nacked within its lease is
claimable again, and its lost attempt is recorded. Retries, expiry and dead letters
follow the same rules as a worker's delivery (``messaging/lifecycle.py``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from contextlib import AbstractContextManager
from typing import Any

import storage
from messaging.envelope import Envelope, parse_envelope
from messaging.lifecycle import Attempt, RetryPolicy, expired, expiry_error
from messaging.results import MessageState
from messaging.sending import Sender
from wire.boundary import store_errors
from wire.encoding import dump_json
from wire.errors import InvalidEnvelope, LeaseExpired, UnknownAgent

__all__ = ["Mailbox", "ReceivedMessage"]

_POLL_MIN_S = 0.01
_POLL_MAX_S = 0.2


class ReceivedMessage:
    """A message taken from a mailbox, to ``ack``, ``nack`` or ``reply`` to once."""

    def __init__(self, mailbox: Mailbox, attempt: Attempt, envelope: Envelope) -> None:
        self._mailbox = mailbox
        self._attempt = attempt
        self.envelope = envelope

    @property
    def message_id(self) -> str:
        return self._attempt.message_id

    @property
    def payload(self) -> Any:
        return self.envelope.payload

    @property
    def attempt(self) -> int:
        return self._attempt.number

    def ack(self) -> None:
        """Mark the message delivered.

        Raises:
            LeaseExpired: the lease ran out and the message was taken again.
            StoreUnavailable: the store did not answer.
        """
        self._finish(reply=None)

    def reply(self, payload: Any) -> None:
        """Mark the message delivered with ``payload`` as its reply (what ``request`` returns)."""
        self._finish(reply=dump_json(payload))

    def nack(self, error: str | BaseException = "nacked") -> None:
        """Fail this attempt: retried with backoff, dead after the agent's max attempts."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        tb = None if isinstance(error, str) else "".join(traceback.format_exception(error))
        with self._mailbox.store():
            policy = self._mailbox.retry_policy()
            failure = self._attempt.failed(policy, error=text, traceback=tb)
        if not failure.dead and not failure.recorded:
            raise LeaseExpired(f"message {self.message_id}: lease lost before the nack")

    def _finish(self, *, reply: str | None) -> None:
        with self._mailbox.store():
            ok = self._attempt.complete(reply)
        if not ok:
            raise LeaseExpired(
                f"message {self.message_id}: the lease of attempt {self.attempt} expired "
                "and the message was taken again; this outcome was not recorded"
            )


class Mailbox:
    """The inbox of one mailbox agent (``client.mailbox("writer")``).

    Its calls raise ``StoreUnavailable`` (or ``SchemaOutdated``) when the store fails.
    """

    def __init__(self, core: Sender, name: str) -> None:
        self._core = core
        self.name = name
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:mailbox"
        with self.store():
            row = storage.find_agent(core.engine, name)
        self._max_concurrency = None if row is None else row.max_concurrency

    def store(self) -> AbstractContextManager[None]:
        """The store boundary of this mailbox's calls."""
        return store_errors(self._core.settings.database)

    def retry_policy(self) -> RetryPolicy:
        """The agent's retry options as registered (read afresh: they may change)."""
        row = storage.find_agent(self._core.engine, self.name)
        if row is None:
            raise UnknownAgent(f"unknown agent {self.name!r}")
        return RetryPolicy.of(
            self._core.settings,
            max_retries=row.max_retries,
            backoff_s=row.backoff_s,
            backoff_max_s=row.backoff_max_s,
        )

    def receive(
        self, *, timeout_s: float = 0.0, lease_s: float | None = None
    ) -> ReceivedMessage | None:
        """The next message (most urgent first, then oldest), or ``None`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        lease = lease_s if lease_s is not None else self._core.settings.lease_s
        while True:
            now = time.time()
            with self.store():
                taken = self._claim(now, lease)
                message = None if taken is None else self._open(taken, now)
            if message is not None:
                return message
            if taken is not None:
                continue  # it was expired, invalid or past its attempts: dead, look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    def _claim(self, now: float, lease_s: float) -> storage.Taken | None:
        """The next due message, within the mailbox's ``max_concurrency`` (read when the
        mailbox was opened): at the limit, nothing."""
        engine = self._core.engine
        if self._max_concurrency is None:
            return storage.claim_next(
                engine, self.name, worker=self.consumer, now=now, lease_s=lease_s
            )
        taken = storage.take_limited(
            engine,
            None,
            self.name,
            limit=self._max_concurrency,
            worker=self.consumer,
            now=now,
            lease_s=lease_s,
        )
        return None if isinstance(taken, storage.Busy) else taken

    def peek(self, limit: int = 10) -> list[MessageState]:
        """The next ``limit`` messages ``receive`` would return, without taking them."""
        with self.store():
            rows = storage.peek(self._core.engine, self.name, now=time.time(), limit=limit)
        return [MessageState.from_row(row, []) for row in rows]

    def _open(self, taken: storage.Taken, now: float) -> ReceivedMessage | None:
        raw = json.loads(taken.envelope)
        attempt = Attempt(self._core, taken.message_id, raw, taken.claim, self.consumer, now)
        try:
            envelope = parse_envelope(raw)
        except InvalidEnvelope as exc:
            attempt.dead(reason="invalid", error=str(exc))
            return None
        if expired(taken.expires_at, now):
            attempt.dead(reason="expired", error=expiry_error(taken.expires_at, taker="a receiver"))
            return None
        # A first attempt is never past the last (no SELECT of the policy for it).
        if attempt.number > 1 and self.retry_policy().is_past_last(attempt.number):
            # Earlier attempts were lost with their consumers and used up the retries.
            error = f"attempts exhausted ({attempt.number - 1}) by lost consumers"
            attempt.dead(reason="exhausted", error=error)
            return None
        return ReceivedMessage(
            self, attempt, envelope.model_copy(update={"attempt": attempt.number})
        )
