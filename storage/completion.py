"""How an attempt ends: delivered, retry scheduled, or dead; each fenced on the attempt.

A worker whose lease was taken over cannot overwrite the newer attempt's outcome:
every statement here requires the row to be ``running`` under this attempt's number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.engine import Connection

from storage import postgres
from storage.claims import Claim
from storage.sql import ACTIVE_STATUSES, ATTEMPTS, MESSAGES, fenced, status_is

__all__ = ["Delivered", "complete", "complete_many", "mark_dead", "schedule_retry"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """An attempt that delivered its message, to be recorded with others in one batch."""

    message_id: str
    claim: Claim
    worker: str
    started_at: float
    ended_at: float
    reply: str | None


def _finish(
    engine: Engine | Connection,
    message_id: str,
    *,
    claim_: Claim,
    worker: str,
    started_at: float,
    now: float,
    outcome: str,
    values: dict[str, Any],
    error: str | None,
    traceback: str | None,
) -> bool:
    """Record the attempt and move the row on, in one transaction; False if fenced off."""
    values = {**values, "updated_at": now, "lease_until": None}
    attempt_row = {
        "message_id": message_id,
        "number": claim_.attempt,
        "redrive": claim_.redrive,
        "worker": worker,
        "started_at": started_at,
        "ended_at": now,
        "outcome": outcome,
        "error": error,
        "traceback": traceback,
    }
    if isinstance(engine, Connection):
        return _finish_on(engine, message_id, claim_, values, attempt_row)
    if engine.dialect.name == "postgresql":
        return postgres.finish(
            engine,
            message_id,
            attempt=claim_.attempt,
            created_at=claim_.created_at,
            values=values,
            attempt_row=attempt_row,
        )
    with engine.begin() as conn:
        return _finish_on(conn, message_id, claim_, values, attempt_row)


def _finish_on(
    conn: Connection,
    message_id: str,
    claim_: Claim,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    if conn.dialect.name == "postgresql":
        return postgres.finish_on(
            conn,
            message_id,
            attempt=claim_.attempt,
            created_at=claim_.created_at,
            values=values,
            attempt_row=attempt_row,
        )
    moved = conn.execute(
        update(MESSAGES)
        .where(fenced(message_id, claim_.attempt, claim_.created_at))
        .values(**values)
        .returning(MESSAGES.c.receiver, MESSAGES.c.created_at)
    ).one_or_none()
    if moved is None:  # fenced off: the takeover already recorded this attempt as lost
        return False
    conn.execute(
        ATTEMPTS.insert().values(
            **attempt_row, receiver=moved.receiver, message_created_at=moved.created_at
        )
    )
    return True


def complete(
    engine: Engine | Connection,
    message_id: str,
    *,
    claim_: Claim,
    worker: str,
    started_at: float,
    now: float,
    reply: str | None,
) -> bool:
    """Mark the message delivered with the handler's reply.

    Given a ``Connection`` it runs inside the caller's transaction: exactly-once
    delivery commits the handler's own writes and this completion together.
    """
    return _finish(
        engine,
        message_id,
        claim_=claim_,
        worker=worker,
        started_at=started_at,
        now=now,
        outcome="delivered",
        values={"status": "delivered", "reply": reply, "finished_at": now, "error": None},
        error=None,
        traceback=None,
    )


def complete_many(engine: Engine, done: Sequence[Delivered]) -> list[str]:
    """Mark these messages delivered and record their attempts, in one transaction.

    Each is fenced on its own claim as ``complete`` is; returns the ids of those
    recorded (the others were taken over, their attempts recorded lost by the takeover).
    """
    if len(done) > 1 and engine.dialect.name == "postgresql":
        return postgres.complete_many(
            engine,
            [
                {
                    "id": d.message_id,
                    "attempt": d.claim.attempt,
                    "redrive": d.claim.redrive,
                    "worker": d.worker,
                    "started_at": d.started_at,
                    "ended_at": d.ended_at,
                    "reply": d.reply,
                    "created_at": d.claim.created_at,
                }
                for d in done
            ],
        )
    if len(done) == 1:
        # One alone takes the single completion's statement (on PostgreSQL one autocommit
        # round trip): planning the batch's JSON join costs more than the row itself.
        return [d.message_id for d in done if _complete_one(engine, d)]
    with engine.begin() as conn:
        return [d.message_id for d in done if _complete_one(conn, d)]


def _complete_one(engine: Engine | Connection, d: Delivered) -> bool:
    return complete(
        engine,
        d.message_id,
        claim_=d.claim,
        worker=d.worker,
        started_at=d.started_at,
        now=d.ended_at,
        reply=d.reply,
    )


def schedule_retry(
    engine: Engine,
    message_id: str,
    *,
    claim_: Claim,
    worker: str,
    started_at: float,
    now: float,
    due_at: float,
    error: str,
    traceback: str | None,
    counted: bool = True,
) -> bool:
    """Record a failed attempt whose retry is due at ``due_at``; with ``counted=False``
    one the handler postponed, whose number is given back (the next claim takes it
    again), so it spends no retry."""
    values: dict[str, Any] = {
        "status": "retrying",
        "due_at": due_at,
        "error": error,
        # The retry's task is published by the worker right after this commit.
        "handed_at": now,
        "spare_at": None,
    }
    if not counted:
        values["attempts"] = claim_.attempt - 1
    return _finish(
        engine,
        message_id,
        claim_=claim_,
        worker=worker,
        started_at=started_at,
        now=now,
        outcome="retry" if counted else "postponed",
        values=values,
        error=error,
        traceback=traceback,
    )


def mark_dead(
    engine: Engine,
    message_id: str,
    *,
    reason: str,
    error: str,
    now: float,
    claim_: Claim | None = None,
    worker: str | None = None,
    started_at: float | None = None,
    traceback: str | None = None,
) -> bool:
    """Dead-letter the message. With a claim, the attempt is recorded and fenced."""
    values = {"status": "dead", "dead_reason": reason, "error": error, "finished_at": now}
    if claim_ is not None:
        return _finish(
            engine,
            message_id,
            claim_=claim_,
            worker=worker or "?",
            started_at=started_at if started_at is not None else now,
            now=now,
            outcome="dead",
            values=values,
            error=error,
            traceback=traceback,
        )
    with engine.begin() as conn:
        changed = conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id, status_is(*ACTIVE_STATUSES))
            .values(updated_at=now, lease_until=None, **values)
        ).rowcount
    return bool(changed)
