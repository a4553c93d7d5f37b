"""The ``agentpost.deliver`` task: a thin Celery wrapper around ``deliver_envelope``.

``deliver_envelope`` does the work and returns an ``Outcome``; the task only turns
it into Celery's language (return, ``self.retry``, or an exception for FAILURE).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from celery import Task
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

import storage
from messaging import tracing
from messaging.agents import AgentSpec, get_agent
from messaging.context import Context
from messaging.envelope import Envelope, dump_json, parse_envelope
from messaging.errors import DeadLettered, InvalidEnvelope, PermanentError
from worker import logs
from worker.deadletter import dead_letter
from worker.routing import DELIVER_TASK, summary
from worker.transports import profile_for

if TYPE_CHECKING:
    from messaging.client import Client
    from worker.app import AgentpostCelery

__all__ = ["Outcome", "backoff_delay_s", "deliver_envelope", "register"]

log = logging.getLogger("agentpost.deliver")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery task run came to."""

    kind: Literal["delivered", "retry", "dead", "skipped"]
    message_id: str | None = None
    attempt: int = 0
    countdown_s: float = 0.0
    reason: str | None = None
    error: str | None = None


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


@functools.cache
def _host() -> str:
    return socket.gethostname()


def worker_identity() -> str:
    """``host:pid`` of this process, recorded on claims and attempts."""
    return f"{_host()}:{os.getpid()}"


def deliver_envelope(app: AgentpostCelery, raw: Any, *, client: Client) -> Outcome:
    """Claim, run the handler, and record the outcome of one delivery."""
    settings = app.settings
    engine = storage.engine_for(settings.database)
    now = time.time()
    try:
        envelope = parse_envelope(raw)
    except InvalidEnvelope as exc:
        message_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(message_id, str):
            storage.mark_dead(engine, message_id, reason="invalid", error=str(exc), now=now)
        dead_letter(app, raw, reason="invalid", error=str(exc), attempts=0)
        return Outcome("dead", _str(message_id), reason="invalid", error=str(exc))

    message_id = str(envelope.id)
    spec = get_agent(envelope.receiver)
    if spec is None:
        # A worker consuming an inbox whose code it does not have: leave the row alone,
        # the sweeper republishes it until a worker that has the agent takes it.
        log.error(
            "no handler for agent %r in this worker; message %s left queued",
            envelope.receiver,
            message_id,
        )
        return Outcome("skipped", message_id, error="no handler in this worker")

    worker = worker_identity()
    if envelope.delivery == "best-effort":
        return _best_effort(spec, envelope, client=client, worker=worker)
    if profile_for(settings.broker).has_priorities:
        if _expired(envelope, now):
            error = _expired_error(envelope)
            if storage.mark_dead(engine, message_id, reason="expired", error=error, now=now):
                dead_letter(app, raw, reason="expired", error=error, attempts=0)
            return Outcome("dead", message_id, reason="expired", error=error)
        claim = storage.claim(engine, message_id, worker=worker, now=now, lease_s=settings.lease_s)
        if claim is None:
            # Delivered, dead, or running under a live lease: this task is a duplicate.
            return Outcome("skipped", message_id)
    else:
        # The broker cannot order by priority (filesystem): this task is a token for
        # the receiver's most urgent due message, which the store picks.
        taken = storage.claim_next(
            engine, envelope.receiver, worker=worker, now=now, lease_s=settings.lease_s
        )
        if taken is None:
            return Outcome("skipped", message_id)
        message_id, claim, raw = taken.message_id, taken.claim, json.loads(taken.envelope)
        try:
            envelope = parse_envelope(raw)
        except InvalidEnvelope as exc:
            return _dead(app, raw, claim, worker, now, reason="invalid", error=str(exc), tb=None)
        if _expired(envelope, now):
            error = _expired_error(envelope)
            return _dead(app, raw, claim, worker, now, reason="expired", error=error, tb=None)

    max_retries = spec.max_retries if spec.max_retries is not None else settings.max_retries
    if claim.attempt > max_retries + 1:
        # Earlier attempts died with their workers and used up the retries.
        error = f"attempts exhausted ({claim.attempt - 1}) by lost workers"
        return _dead(app, raw, claim, worker, now, reason="exhausted", error=error, tb=None)

    # On the filesystem broker the store may have picked another message than the task's.
    logs.note(
        message_id=message_id,
        correlation_id=envelope.correlation_id,
        sender=envelope.sender,
        attempt=claim.attempt,
    )
    delivered = envelope.model_copy(update={"attempt": claim.attempt})
    # exactly-once: the handler's ctx.session writes and the completion share one
    # transaction, so a crash in between loses both and the redelivery redoes both.
    session = Session(engine) if envelope.delivery == "exactly-once" else None
    ctx = Context(delivered, client=client, worker=worker, session=session)
    try:
        try:
            reply = _run(spec, delivered, ctx)
            reply_json = None if reply is None else dump_json(reply)
        except PermanentError as exc:
            _rollback(session)
            return _dead(
                app,
                raw,
                claim,
                worker,
                now,
                reason="rejected",
                error=_describe(exc),
                tb=traceback.format_exc(),
            )
        except Exception as exc:
            _rollback(session)
            return _failed(app, raw, spec, claim, worker, now, exc)
        return _complete(engine, session, message_id, claim, worker, now, reply_json)
    finally:
        if session is not None:
            session.close()


def _rollback(session: Session | None) -> None:
    if session is not None:
        session.rollback()


def _complete(
    engine: Engine,
    session: Session | None,
    message_id: str,
    claim: storage.Claim,
    worker: str,
    started_at: float,
    reply_json: str | None,
) -> Outcome:
    target = session.connection() if session is not None else engine
    done = storage.complete(
        target,
        message_id,
        claim_=claim,
        worker=worker,
        started_at=started_at,
        now=time.time(),
        reply=reply_json,
    )
    if session is not None:
        if not done:
            # Fenced off: another attempt owns the message now, and its writes count.
            session.rollback()
            return Outcome("skipped", message_id, claim.attempt, error="lease lost")
        session.commit()
    return Outcome("delivered", message_id, claim.attempt)


def _failed(
    app: AgentpostCelery,
    raw: Any,
    spec: AgentSpec,
    claim: storage.Claim,
    worker: str,
    started_at: float,
    exc: Exception,
) -> Outcome:
    """A handler error: retry with backoff, or dead when the attempts are used up."""
    settings = app.settings
    error, tb = _describe(exc), traceback.format_exc()
    max_retries = spec.max_retries if spec.max_retries is not None else settings.max_retries
    if claim.attempt > max_retries:
        return _dead(app, raw, claim, worker, started_at, reason="exhausted", error=error, tb=tb)
    countdown = backoff_delay_s(
        claim.attempt,
        base_s=spec.backoff_s if spec.backoff_s is not None else settings.backoff_s,
        max_s=spec.backoff_max_s if spec.backoff_max_s is not None else settings.backoff_max_s,
        jitter=spec.jitter if spec.jitter is not None else settings.backoff_jitter,
    )
    ended = time.time()
    message_id = str(raw["id"])
    storage.schedule_retry(
        storage.engine_for(settings.database),
        message_id,
        claim_=claim,
        worker=worker,
        started_at=started_at,
        now=ended,
        due_at=ended + countdown,
        error=error,
        traceback=tb,
    )
    return Outcome("retry", message_id, claim.attempt, countdown_s=countdown, error=error)


def _best_effort(spec: AgentSpec, envelope: Envelope, *, client: Client, worker: str) -> Outcome:
    """No row, no claim, no retries: run the handler once; a failure only fails the task."""
    delivered = envelope.model_copy(update={"attempt": 1})
    message_id = str(envelope.id)
    logs.note(attempt=1)
    try:
        _run(spec, delivered, Context(delivered, client=client, worker=worker))
    except Exception as exc:
        log.warning("best-effort message %s failed and is dropped: %s", message_id, exc)
        return Outcome("dead", message_id, 1, reason="best-effort", error=_describe(exc))
    return Outcome("delivered", message_id, 1)


def _expired(envelope: Envelope, now: float) -> bool:
    return envelope.expires_at is not None and envelope.expires_at.timestamp() <= now


def _expired_error(envelope: Envelope) -> str:
    expires = envelope.expires_at.isoformat() if envelope.expires_at else "?"
    return f"expired at {expires} before a handler took it"


def _run(spec: AgentSpec, envelope: Envelope, ctx: Context) -> Any:
    with tracing.delivery_span(envelope, attempt=envelope.attempt):
        result = spec.handler(envelope, ctx)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _dead(
    app: AgentpostCelery,
    raw: Any,
    claim: storage.Claim,
    worker: str,
    started_at: float,
    *,
    reason: str,
    error: str,
    tb: str | None,
) -> Outcome:
    message_id = str(raw["id"])
    engine = storage.engine_for(app.settings.database)
    if storage.mark_dead(
        engine,
        message_id,
        reason=reason,
        error=error,
        now=time.time(),
        claim_=claim,
        worker=worker,
        started_at=started_at,
        traceback=tb,
    ):
        dead_letter(app, raw, reason=reason, error=error, attempts=claim.attempt)
    return Outcome("dead", message_id, claim.attempt, reason=reason, error=error)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def register(app: AgentpostCelery) -> None:
    """Declare ``agentpost.deliver`` on ``app``."""

    # The store unreachable (or a pooled connection found dead) is not the handler's
    # fault: Celery retries the whole delivery with backoff, nothing counts an attempt.
    @app.task(
        name=DELIVER_TASK,
        bind=True,
        max_retries=None,
        acks_late=True,
        autoretry_for=(OperationalError, InterfaceError),
        retry_backoff=1,
        retry_backoff_max=60,
        retry_jitter=True,
    )
    def deliver(self: Task[Any, Any], envelope: Any) -> dict[str, Any]:
        with logs.delivery_context(envelope):
            started = time.perf_counter()
            outcome = deliver_envelope(app, envelope, client=_client(app))
            _log_outcome(outcome, time.perf_counter() - started)
        if outcome.kind == "retry":
            raise self.retry(  # type: ignore[call-arg]  # celery-types omits **options
                countdown=outcome.countdown_s,
                max_retries=None,
                exc=_Retrying(outcome.error),
                # Flower shows the retry's arguments: keep the summary, not the payload.
                argsrepr=summary(envelope) if isinstance(envelope, dict) else None,
            )
        if outcome.kind == "dead":
            raise DeadLettered(
                f"message {outcome.message_id} dead ({outcome.reason}) after "
                f"{outcome.attempt} attempt(s): {outcome.error}"
            )
        return {
            "status": outcome.kind,
            "message_id": outcome.message_id,
            "attempt": outcome.attempt,
        }


def _log_outcome(outcome: Outcome, took_s: float) -> None:
    """The delivery line: one per task run, with the delivery fields attached."""
    ms = took_s * 1000
    if outcome.kind == "delivered":
        log.info("delivered %s (attempt %d) in %.1f ms", outcome.message_id, outcome.attempt, ms)
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


class _Retrying(Exception):
    """The handler error, as Celery shows it on a RETRY."""


def _client(app: AgentpostCelery) -> Client:
    client: Client | None = getattr(app, "_agentpost_client", None)
    if client is None:
        from messaging.client import Client  # noqa: PLC0415  (messaging imports worker)

        client = Client(app.settings, app=app)
        app._agentpost_client = client  # type: ignore[attr-defined]
    return client
