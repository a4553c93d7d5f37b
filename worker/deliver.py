"""The deliver algorithm: claim a stored message, run its handler, record the outcome.

``deliver_envelope`` is a plain function of the process's sending core and the task's
envelope; it returns a ``DeliveryOutcome``. The Celery task (``worker/tasks.py``) and
the in-process harness (``worker/harness.py``) only turn that outcome into their own
language. The rules an attempt follows (retries, backoff, expiry, dead letters) are
the lifecycle's (``messaging/lifecycle.py``), shared with the mailbox.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

import storage
from messaging.agents import AgentSpec, get_agent
from messaging.context import Context
from messaging.envelope import Envelope, parse_envelope
from messaging.lifecycle import (
    Attempt,
    RetryPolicy,
    dead_before_claim,
    expired,
    expiry_error,
)
from messaging.sending import Sender
from messaging.tracing import delivery_span
from wire.app import SOFT_TIME_LIMIT_SHARE
from wire.brokers import profile_for
from wire.encoding import dump_json
from wire.errors import InvalidEnvelope, PermanentError, Retry
from worker import completions, flow, logs
from worker.eventloop import HandlerTimedOut, run_coroutine

__all__ = ["DeliveryOutcome", "deliver_envelope", "run_delivery", "worker_identity"]

log = logging.getLogger("agentpost.deliver")


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one delivery task run came to."""

    kind: Literal["delivered", "retry", "dead", "skipped"]
    message_id: str | None = None
    attempt: int = 0
    countdown_s: float = 0.0
    reason: str | None = None
    error: str | None = None


@functools.cache
def _host() -> str:
    return socket.gethostname()


def worker_identity() -> str:
    """``host:pid`` of this process, recorded on claims and attempts."""
    return f"{_host()}:{os.getpid()}"


def run_delivery(core: Sender, raw: Any, created_at: float | None = None) -> DeliveryOutcome:
    """``deliver_envelope`` with the delivery's log fields and its one log line."""
    with logs.delivery_context(raw):
        started = time.perf_counter()
        outcome = deliver_envelope(core, raw, created_at)
        _log_outcome(outcome, time.perf_counter() - started)
    return outcome


def deliver_envelope(core: Sender, raw: Any, created_at: float | None = None) -> DeliveryOutcome:
    """Claim, run the handler, and record the outcome of one delivery.

    The store is the truth and the task a token: the task names a message (its id and
    receiver) and the worker runs the envelope stored for it. A body that disagrees
    with the row (forged, or of a version this worker cannot read) is logged and
    ignored; one naming no message of this receiver claims nothing. ``created_at``,
    the row's when the task carries it, lets the claim read its week's partition alone.
    """
    settings = core.settings
    now = time.time()
    body: Envelope | None = None
    body_error: str | None = None
    try:
        body = parse_envelope(raw)
        message_id, receiver = str(body.id), body.receiver
    except InvalidEnvelope as exc:
        named = _named(raw)
        if named is None:
            # Nothing in it names a stored message: its DLX copy is its only record.
            dead_before_claim(core, raw, message_id=None, reason="invalid", error=str(exc))
            return DeliveryOutcome("dead", None, reason="invalid", error=str(exc))
        (message_id, receiver), body_error = named, str(exc)

    spec = get_agent(receiver)
    if spec is None:
        # A worker consuming an inbox whose code it does not have: leave the row queued;
        # the sweeper publishes it again until a worker that has the agent takes it.
        log.error(
            "no handler for agent %r in this worker; message %s left queued",
            receiver,
            message_id,
        )
        # Its task is taken: the sweeper sends another (only if the row is that agent's).
        storage.unhand(core.engine, [message_id], receiver=receiver)
        return DeliveryOutcome("skipped", message_id, error="no handler in this worker")

    worker = worker_identity()
    if body is not None and body.delivery == "best-effort":
        return _best_effort(core, spec, body, worker)  # no row: the body is all there is
    by_id = profile_for(settings.broker).has_priorities
    # On a broker without priorities (filesystem) the task is a token for the
    # receiver's most urgent due message, which the store picks.
    chosen = message_id if by_id else None
    admission = flow.admit(core, spec, chosen, now)
    if admission.hold_s > 0:
        return _hold(core, spec, chosen, admission, now, task_of=message_id)
    taken = _take(core, spec, chosen, worker, now, created_at if by_id else None)
    if isinstance(taken, storage.Busy):
        held = flow.busy(admission, taken.running)
        return _hold(core, spec, chosen, held, now, task_of=message_id)
    if isinstance(taken, storage.Later):
        held = flow.later(admission, taken.at, spec, now)
        return _hold(core, spec, chosen, held, now, task_of=message_id)
    if taken is None:
        # Delivered, dead, running under a live lease, or not this receiver's: this task
        # is a duplicate (or names a message it has no claim on).
        flow.release(core, spec, admission, now)
        return DeliveryOutcome("skipped", message_id)
    stored = json.loads(taken.envelope)
    if by_id and stored != raw:
        log.warning(
            "the task of message %s carries a body that differs from the stored message "
            "(%s): the stored one runs",
            message_id,
            body_error or "other field values",
        )
    attempt = Attempt(core, taken.message_id, stored, taken.claim, worker, now)
    gated = _Gated(spec, admission)
    message_id = attempt.message_id
    if body is not None and stored == raw:
        envelope = body  # the task carried the stored message: parsed once already
    else:
        try:
            envelope = parse_envelope(stored)
        except InvalidEnvelope as exc:
            return _dead(attempt, reason="invalid", error=str(exc), gated=gated)
    if expired(expires := _expires(envelope), now):
        error = expiry_error(expires, taker="a handler")
        return _dead(attempt, reason="expired", error=error, gated=gated)

    policy = RetryPolicy.of(
        settings,
        max_retries=spec.max_retries,
        backoff_s=spec.backoff_s,
        backoff_max_s=spec.backoff_max_s,
        jitter=spec.jitter,
        retry_on=spec.retry_on,
        give_up_on=spec.give_up_on,
    )
    if policy.is_past_last(attempt.number):
        # Earlier attempts died with their workers and used up the retries.
        error = f"attempts exhausted ({attempt.number - 1}) by lost workers"
        return _dead(attempt, reason="exhausted", error=error, gated=gated)

    # On the filesystem broker the store may have picked another message than the task's.
    logs.note(
        message_id=message_id,
        correlation_id=envelope.correlation_id,
        sender=envelope.sender,
        attempt=attempt.number,
    )
    try:
        payload = spec.parse_payload(envelope.payload)
    except InvalidEnvelope as exc:  # sent before the agent was typed, or by a forged task
        return _dead(attempt, reason="invalid", error=str(exc), gated=gated)
    delivered = envelope.model_copy(update={"attempt": attempt.number, "payload": payload})
    # exactly-once: the handler's ctx.session writes and the completion share one
    # transaction, so a crash in between loses both and the redelivery redoes both.
    session = Session(core.engine) if envelope.delivery == "exactly-once" else None
    ctx = Context(delivered, sender=core, worker=worker, session=session)
    try:
        try:
            reply_json = _encode_reply(spec.reply_json(_run(spec, delivered, ctx)))
            if session is not None:
                session.flush()  # the handler's own SQL fails here, as the handler's error
        except Exception as exc:
            if session is not None:
                session.rollback()
            return _failed(attempt, policy, exc, gated)
        return _complete(attempt, policy, session, reply_json, gated)
    finally:
        if session is not None:
            session.close()


@dataclass(frozen=True, slots=True)
class _Gated:
    """The agent of a claimed delivery and what its gate decided."""

    spec: AgentSpec
    admission: flow.Admission

    def release(self, attempt: Attempt) -> None:
        """The attempt ended neither ok nor failed (postponed, refused): a probe goes back."""
        flow.release(attempt.core, self.spec, self.admission, time.time())


def _take(
    core: Sender,
    spec: AgentSpec,
    message_id: str | None,
    worker: str,
    now: float,
    created_at: float | None,
) -> storage.Taken | storage.Busy | storage.Later | None:
    """The claim: by id, or the receiver's next due message; within its concurrency
    limit, or on a rate slot when a rate is its only limit (those two by id alone)."""
    engine, lease_s, receiver = core.engine, core.settings.lease_s, spec.name
    rate = spec.rate_per_s
    if rate is not None and spec.max_concurrency is None:
        return storage.take_rated(
            engine,
            message_id,
            receiver,
            interval_s=1 / rate,
            worker=worker,
            now=now,
            lease_s=lease_s,
        )
    if spec.max_concurrency is not None:
        return storage.take_limited(
            engine,
            message_id,
            receiver,
            limit=spec.max_concurrency,
            worker=worker,
            now=now,
            lease_s=lease_s,
        )
    if message_id is None:
        return storage.claim_next(engine, receiver, worker=worker, now=now, lease_s=lease_s)
    return storage.take(
        engine,
        message_id,
        receiver,
        created_at=created_at,
        worker=worker,
        now=now,
        lease_s=lease_s,
    )


def _hold(
    core: Sender,
    spec: AgentSpec,
    message_id: str | None,
    admission: flow.Admission,
    now: float,
    *,
    task_of: str,
) -> DeliveryOutcome:
    """Hold the delivery (its task comes back after ``admission.hold_s``), or, if its
    message is no longer waiting, drop this task as a duplicate. ``message_id`` None
    holds the receiver's next due message (a token's, on the filesystem broker);
    ``task_of`` is the message the task names."""
    flow.release(core, spec, admission, now)
    until = now + admission.hold_s
    if not storage.hold(
        core.engine, message_id, spec.name, until=until, now=now, slot=admission.slot
    ):
        return DeliveryOutcome("skipped", task_of)
    return DeliveryOutcome(
        "retry",
        task_of,
        countdown_s=admission.hold_s,
        reason="held",
        error=f"held ({admission.reason})",
    )


def _named(raw: Any) -> tuple[str, str] | None:
    """(id, receiver) of a body that names a message, even one that is not valid."""
    if not isinstance(raw, dict):
        return None
    message_id, receiver = raw.get("id"), raw.get("receiver")
    if isinstance(message_id, str) and isinstance(receiver, str) and len(message_id) <= 36:
        return message_id, receiver
    return None


def _encode_reply(reply: Any) -> str | None:
    """The reply's JSON; one JSON has no form for is an error no retry can fix."""
    if reply is None:
        return None
    try:
        return dump_json(reply)
    except (TypeError, ValueError) as exc:
        raise PermanentError(
            f"the reply is not JSON ({exc}): return dicts, lists, strings, numbers, "
            "booleans, None or a pydantic model"
        ) from exc


def _expires(envelope: Envelope) -> float | None:
    return envelope.expires_at.timestamp() if envelope.expires_at is not None else None


def _complete(
    attempt: Attempt,
    policy: RetryPolicy,
    session: Session | None,
    reply_json: str | None,
    gated: _Gated,
) -> DeliveryOutcome:
    flow.succeeded(attempt.core, gated.spec, gated.admission)
    if session is None:
        # At-least-once: recorded in the background, the task returns now
        # (worker/completions.py says why a completion that never lands is safe).
        done = storage.Delivered(
            attempt.message_id,
            attempt.claim,
            attempt.worker,
            attempt.started_at,
            time.time(),
            reply_json,
        )
        completions.complete_later(attempt.core.settings.database, done)
        return DeliveryOutcome("delivered", attempt.message_id, attempt.number)
    if not attempt.complete(reply_json, on=session.connection()):
        # Fenced off: another attempt owns the message now, and its writes count.
        session.rollback()
        return DeliveryOutcome("skipped", attempt.message_id, attempt.number, error="lease lost")
    try:
        session.commit()
    except SQLAlchemyError as exc:
        # The handler's writes and the completion were refused together (a deferred
        # constraint, a serialization failure): recorded as this attempt's failure,
        # not left running until its lease expires.
        session.rollback()
        return _failed(attempt, policy, exc, gated)
    return DeliveryOutcome("delivered", attempt.message_id, attempt.number)


def _failed(
    attempt: Attempt, policy: RetryPolicy, exc: Exception, gated: _Gated
) -> DeliveryOutcome:
    """A handler error: dead at once if it can never succeed, else the policy decides."""
    if isinstance(exc, Retry):
        gated.release(attempt)
        error = f"postponed: {exc}"
        attempt.postpone(exc.after_s, error=error)
        return DeliveryOutcome(
            "retry",
            attempt.message_id,
            attempt.number,
            countdown_s=exc.after_s,
            reason="postponed",
            error=error,
        )
    error, tb = _describe(exc), traceback.format_exc()
    if isinstance(exc, HandlerTimedOut):
        error = str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = current_app.conf.task_soft_time_limit
        error = (
            f"timed-out: the handler ran past its time limit ({limit:g} s: "
            f"{SOFT_TIME_LIMIT_SHARE:.0%} of AGENTPOST_LEASE_S)"
        )
    if policy.gives_up_on(exc):
        # The message's fault, not the agent's: the circuit does not count it.
        return _dead(attempt, reason="rejected", error=error, tb=tb, gated=gated)
    flow.failed(attempt.core, gated.spec, error, time.time())
    failure = attempt.failed(policy, error=error, traceback=tb)
    if failure.dead:
        return DeliveryOutcome(
            "dead", attempt.message_id, attempt.number, reason="exhausted", error=error
        )
    return DeliveryOutcome(
        "retry", attempt.message_id, attempt.number, countdown_s=failure.countdown_s, error=error
    )


def _dead(
    attempt: Attempt,
    *,
    reason: str,
    error: str,
    tb: str | None = None,
    gated: _Gated | None = None,
) -> DeliveryOutcome:
    """Dead for a cause that is the message's, not its agent's (a probe goes back)."""
    if gated is not None:
        gated.release(attempt)
    attempt.dead(reason=reason, error=error, traceback=tb)
    return DeliveryOutcome("dead", attempt.message_id, attempt.number, reason=reason, error=error)


def _best_effort(core: Sender, spec: AgentSpec, envelope: Envelope, worker: str) -> DeliveryOutcome:
    """No row, no claim, no retries: run the handler once; a failure only fails the task."""
    message_id = str(envelope.id)
    logs.note(attempt=1)
    try:
        payload = spec.parse_payload(envelope.payload)
        delivered = envelope.model_copy(update={"attempt": 1, "payload": payload})
        _run(spec, delivered, Context(delivered, sender=core, worker=worker))
    except Exception as exc:
        log.warning("best-effort message %s failed and is dropped: %s", message_id, exc)
        return DeliveryOutcome("dead", message_id, 1, reason="best-effort", error=_describe(exc))
    return DeliveryOutcome("delivered", message_id, 1)


def _run(spec: AgentSpec, envelope: Envelope, ctx: Context) -> Any:
    limit = spec.time_limit_s
    with delivery_span(envelope, attempt=envelope.attempt):
        started = time.monotonic()
        with _alarm(limit):
            result = spec.handler(envelope, ctx)
        if inspect.iscoroutine(result):
            return run_coroutine(result, timeout_s=limit)
        if inspect.isawaitable(result):
            return run_coroutine(_await(result), timeout_s=limit)
        if limit is not None and time.monotonic() - started > limit:
            raise HandlerTimedOut(limit)  # a thread the alarm cannot interrupt came back late
        return result


@contextlib.contextmanager
def _alarm(limit_s: float | None) -> Iterator[None]:
    """Interrupt a sync handler at ``limit_s`` where a signal can: the main thread
    (prefork's children run their tasks there). Elsewhere nothing interrupts it."""
    if limit_s is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise HandlerTimedOut(limit_s)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _log_outcome(outcome: DeliveryOutcome, took_s: float) -> None:
    """The delivery line: one per task run, with the delivery fields attached."""
    ms = took_s * 1000
    if outcome.kind == "delivered":
        log.info("delivered %s (attempt %d) in %.1f ms", outcome.message_id, outcome.attempt, ms)
    elif outcome.kind == "retry" and outcome.reason == "held":
        log.info("%s %s for %.2f s", outcome.error, outcome.message_id, outcome.countdown_s)
    elif outcome.kind == "retry" and outcome.reason == "postponed":
        log.info(
            "postponed %s for %.2f s (%s)", outcome.message_id, outcome.countdown_s, outcome.error
        )
    elif outcome.kind == "retry":
        log.warning(
            "attempt %d of %s failed, retry in %.2f s: %s",
            outcome.attempt,
            outcome.message_id,
            outcome.countdown_s,
            outcome.error,
        )
    elif outcome.kind == "dead":
        log.error(
            "dead-lettered %s (%s) after %d attempt(s): %s",
            outcome.message_id,
            outcome.reason,
            outcome.attempt,
            outcome.error,
        )
    else:
        log.info("skipped %s: %s", outcome.message_id, outcome.error or "duplicate task")
