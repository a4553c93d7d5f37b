"""The attempt lifecycle, written once: retry policy, backoff, expiry, dead-lettering.

A worker's delivery (``worker/deliver.py``) and a mailbox's receive and nack
(``messaging/mailbox.py``) follow the same rules, from here:

- an agent's retry policy is its own options, else the settings' defaults;
- a failed attempt is retried after exponential backoff until ``max_retries`` retries
  are used, then the message is dead (``exhausted``);
- a claim past the last allowed attempt (its predecessors lost with their workers or
  consumers) is dead at once (``exhausted``);
- an expired message is dead (``expired``) and never handled;
- an error that can never succeed (``PermanentError``, one of the agent's
  ``give_up_on``, or one outside its ``retry_on``) is dead at once (``rejected``);
- a handler raising ``Retry(after_s=...)`` is tried again then, spending no retry;
- dead means the row is marked dead first (the store is the truth), then the envelope
  is published to the dead-letter exchange and the alerts fire.

Store errors are not translated here: the worker retries the store's connection
errors itself, and the mailbox calls this inside its ``store_errors`` boundary.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import storage
from messaging.sending import Sender
from wire.errors import PermanentError
from wire.settings import Settings

__all__ = [
    "Attempt",
    "Failure",
    "RetryPolicy",
    "backoff_delay_s",
    "can_never_succeed",
    "dead_before_claim",
    "expired",
    "expiry_error",
]


def backoff_delay_s(
    attempt: int, *, base_s: float, max_s: float, jitter: bool, rng: random.Random | None = None
) -> float:
    """Exponential backoff after ``attempt`` failed: base, 2x base, 4x base ... capped.

    With jitter the delay is drawn between half and all of it (so retries of many
    messages that failed together spread out, but never fire at once).
    """
    delay: float = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    if jitter and delay > 0:
        return (rng or random).uniform(delay / 2, delay)
    return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon an agent's failed attempts are tried again."""

    max_retries: int
    backoff_s: float
    backoff_max_s: float
    jitter: bool
    retry_on: tuple[type[BaseException], ...] | None = None
    give_up_on: tuple[type[BaseException], ...] = ()

    @classmethod
    def of(
        cls,
        settings: Settings,
        *,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        backoff_max_s: float | None = None,
        jitter: bool | None = None,
        retry_on: tuple[type[BaseException], ...] | None = None,
        give_up_on: tuple[type[BaseException], ...] = (),
    ) -> RetryPolicy:
        """An agent's options (``None``: not set) over the settings' defaults."""
        return cls(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            backoff_s=settings.backoff_s if backoff_s is None else backoff_s,
            backoff_max_s=settings.backoff_max_s if backoff_max_s is None else backoff_max_s,
            jitter=settings.backoff_jitter if jitter is None else jitter,
            retry_on=retry_on,
            give_up_on=give_up_on,
        )

    def gives_up_on(self, exc: BaseException) -> bool:
        """Whether ``exc`` is dead at once: it can never succeed, or the agent said so."""
        if can_never_succeed(exc) or isinstance(exc, self.give_up_on):
            return True
        return self.retry_on is not None and not isinstance(exc, self.retry_on)

    def is_last(self, attempt: int) -> bool:
        """Whether a failure of ``attempt`` leaves no retry."""
        return attempt > self.max_retries

    def is_past_last(self, attempt: int) -> bool:
        """Whether a claim of ``attempt`` comes after the last attempt allowed."""
        return attempt > self.max_retries + 1

    def delay_s(self, attempt: int) -> float:
        """The wait before the retry that follows failed ``attempt``."""
        return backoff_delay_s(
            attempt, base_s=self.backoff_s, max_s=self.backoff_max_s, jitter=self.jitter
        )


def expired(expires_at: float | None, now: float) -> bool:
    """Whether a message expiring at ``expires_at`` (epoch seconds) is past it."""
    return expires_at is not None and expires_at <= now


def expiry_error(expires_at: float | None, *, taker: str) -> str:
    """The recorded error of an expired message (``taker``: "a handler", "a receiver")."""
    when = "?" if expires_at is None else datetime.fromtimestamp(expires_at, UTC).isoformat()
    return f"expired at {when} before {taker} took it"


def can_never_succeed(exc: BaseException) -> bool:
    """Errors no retry can fix: the message is dead at once (reason ``rejected``)."""
    return isinstance(exc, PermanentError)


def dead_before_claim(
    core: Sender, envelope: Any, *, message_id: str | None, reason: str, error: str
) -> bool:
    """Dead-letter a message before any attempt claimed it (invalid or expired on arrival).

    Returns whether a row was marked dead (only an active one is).
    """
    marked = message_id is not None and storage.mark_dead(
        core.engine, message_id, reason=reason, error=error, now=time.time()
    )
    # An unreadable envelope may have no row at all: the DLX copy is its only record.
    if marked or reason == "invalid":
        from wire.deadletter import dead_letter  # noqa: PLC0415  (see Attempt.dead)

        dead_letter(core.app, envelope, reason=reason, error=error, attempts=0)
    return marked


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt came to: a retry after ``countdown_s``, or dead."""

    dead: bool
    countdown_s: float = 0.0
    # False when the attempt was fenced off (another attempt owns the message now).
    recorded: bool = True


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed attempt of a stored message, and the ways it can end.

    Every outcome is fenced on the claim: once another attempt took the message
    over, this one's outcome is not recorded (the methods return False).
    """

    core: Sender
    message_id: str
    envelope: Any  # the wire form: what the DLX copy carries
    claim: storage.Claim
    worker: str
    started_at: float

    @property
    def number(self) -> int:
        """The attempt number (1 on the first delivery)."""
        return self.claim.attempt

    def complete(self, reply_json: str | None, *, on: Any = None) -> bool:
        """Mark the message delivered with its reply; ``on``: the caller's connection
        (exactly-once: the handler's writes and this commit together)."""
        return storage.complete(
            self.core.engine if on is None else on,
            self.message_id,
            claim_=self.claim,
            worker=self.worker,
            started_at=self.started_at,
            now=time.time(),
            reply=reply_json,
        )

    def dead(self, *, reason: str, error: str, traceback: str | None = None) -> bool:
        """Mark the message dead, then publish it to the dead-letter exchange."""
        marked = storage.mark_dead(
            self.core.engine,
            self.message_id,
            reason=reason,
            error=error,
            now=time.time(),
            claim_=self.claim,
            worker=self.worker,
            started_at=self.started_at,
            traceback=traceback,
        )
        if marked:
            # Celery and kombu only when something dies: the client and the CLI import
            # this module (through the mailbox) and mostly never dead-letter.
            from wire.deadletter import dead_letter  # noqa: PLC0415

            dead_letter(
                self.core.app, self.envelope, reason=reason, error=error, attempts=self.number
            )
        return marked

    def postpone(self, after_s: float, *, error: str) -> Failure:
        """The handler asked to be tried again later: no retry is spent."""
        return self._retry_after(after_s, error=error, traceback=None, counted=False)

    def failed(self, policy: RetryPolicy, *, error: str, traceback: str | None) -> Failure:
        """A failed attempt: retried after backoff, or dead once the policy is used up."""
        if policy.is_last(self.number):
            recorded = self.dead(reason="exhausted", error=error, traceback=traceback)
            return Failure(dead=True, recorded=recorded)
        return self._retry_after(policy.delay_s(self.number), error=error, traceback=traceback)

    def _retry_after(
        self, countdown_s: float, *, error: str, traceback: str | None, counted: bool = True
    ) -> Failure:
        ended = time.time()
        recorded = storage.schedule_retry(
            self.core.engine,
            self.message_id,
            claim_=self.claim,
            worker=self.worker,
            started_at=self.started_at,
            now=ended,
            due_at=ended + countdown_s,
            error=error,
            traceback=traceback,
            counted=counted,
        )
        return Failure(dead=False, countdown_s=countdown_s, recorded=recorded)
