"""Claims: an attempt takes a message, by id (a worker) or the next due one (a mailbox).

A claim is one ``UPDATE ... WHERE status IN (...) OR lease expired`` (never
read-then-write), so the database decides which of two racing claims wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select, update
from sqlalchemy.engine import Connection

from storage import postgres
from storage.sql import ATTEMPTS, MESSAGES, by_id, claimable, status_is, waiting

__all__ = [
    "Claim",
    "Taken",
    "claim",
    "claim_next",
    "claim_next_on",
    "claim_of",
    "claim_row_on",
    "take",
]


@dataclass(frozen=True, slots=True)
class Claim:
    """A successful claim: the attempt number this worker now owns."""

    attempt: int
    redrive: int
    recovered_from: str | None
    # The row's: the statements that end the attempt find its partition by it (where
    # the row is, not what the claim is: left out of comparisons).
    created_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Taken:
    """A message taken from a mailbox: its claim and its stored envelope."""

    message_id: str
    claim: Claim
    envelope: str
    expires_at: float | None


def claim(
    engine: Engine, message_id: str, *, worker: str, now: float, lease_s: float
) -> Claim | None:
    """Take the message for one attempt, or ``None`` if it is not claimable.

    Claimable: queued, retrying, or running under an expired lease (its worker
    died). SET expressions see the row's old values, which is how
    ``recovered_from`` learns, in the same statement, whose lease was taken over.
    """
    row = _claim_row(engine, message_id, None, None, worker=worker, now=now, lease_s=lease_s)
    return None if row is None else claim_of(row)


def claim_of(row: Any) -> Claim:
    """The claim a claim statement's row tells."""
    return Claim(row.attempts, row.redrives, row.recovered_from, row.created_at)


def take(
    engine: Engine,
    message_id: str,
    receiver: str,
    *,
    created_at: float | None = None,
    worker: str,
    now: float,
    lease_s: float,
) -> Taken | None:
    """``claim`` for a delivery task: only a message of ``receiver``, with its stored envelope.

    The task names the message; the row says what it is. A task whose id belongs to
    another agent's message claims nothing. ``created_at``: the row's, when the task
    carries it (a task published before it did has none).
    """
    row = _claim_row(
        engine, message_id, receiver, created_at, worker=worker, now=now, lease_s=lease_s
    )
    if row is None:
        return None
    return Taken(message_id, claim_of(row), row.envelope, row.expires_at)


def _claim_row(
    engine: Engine,
    message_id: str,
    receiver: str | None,
    created_at: float | None,
    *,
    worker: str,
    now: float,
    lease_s: float,
) -> Any:
    if engine.dialect.name == "postgresql":
        return postgres.claim(
            engine,
            message_id,
            receiver=receiver,
            created_at=created_at,
            worker=worker,
            now=now,
            lease_s=lease_s,
        )
    with engine.begin() as conn:
        return claim_row_on(
            conn,
            message_id,
            receiver,
            created_at=created_at,
            worker=worker,
            now=now,
            lease_s=lease_s,
        )


def claim_row_on(
    conn: Connection,
    message_id: str,
    receiver: str | None,
    *,
    created_at: float | None = None,
    worker: str,
    now: float,
    lease_s: float,
) -> Any:
    """The claim as a portable statement on ``conn`` (inside the caller's transaction)."""
    where = [
        by_id(message_id, created_at),
        or_(
            waiting(),
            and_(status_is("running"), MESSAGES.c.lease_until < now),
        ),
    ]
    if receiver is not None:
        where.append(MESSAGES.c.receiver == receiver)
    stmt = (
        update(MESSAGES)
        .where(*where)
        .values(_claim_values(worker, now, lease_s))
        .returning(
            MESSAGES.c.attempts,
            MESSAGES.c.redrives,
            MESSAGES.c.recovered_from,
            MESSAGES.c.envelope,
            MESSAGES.c.expires_at,
            MESSAGES.c.receiver,
            MESSAGES.c.created_at,
        )
    )
    row = conn.execute(stmt).one_or_none()
    if row is not None and row.recovered_from is not None:
        _record_lost(conn, message_id, row, now)
    return row


def _claim_values(worker: str, now: float, lease_s: float) -> dict[str, Any]:
    """The SET of a claim. SET expressions see the row's old values, which is how
    ``recovered_from`` learns, in the same statement, whose lease was taken over."""
    return {
        "status": "running",
        "attempts": MESSAGES.c.attempts + 1,
        "lease_until": now + lease_s,
        "claimed_by": worker,
        "recovered_from": case(
            (status_is("running"), func.coalesce(MESSAGES.c.claimed_by, "?")),
            else_=None,
        ),
        "updated_at": now,
    }


def _record_lost(conn: Connection, message_id: str, row: Any, now: float) -> None:
    # The previous attempt's worker died without a word: record it as lost.
    conn.execute(
        ATTEMPTS.insert().values(
            message_id=message_id,
            receiver=row.receiver,
            message_created_at=row.created_at,
            number=row.attempts - 1,
            redrive=row.redrives,
            worker=row.recovered_from,
            ended_at=now,
            outcome="lost",
            error=postgres.LOST_ERROR,
        )
    )


def claim_next(
    engine: Engine, receiver: str, *, worker: str, now: float, lease_s: float
) -> Taken | None:
    """Claim the most urgent, then oldest, claimable message of ``receiver``.

    The candidate is chosen in a subquery and re-checked by the UPDATE itself, so
    two receivers never take the same row; on PostgreSQL ``SKIP LOCKED`` lets
    them take different rows at once instead of queueing behind one another.
    """
    with engine.begin() as conn:
        return claim_next_on(conn, receiver, worker=worker, now=now, lease_s=lease_s)


def claim_next_on(
    conn: Connection, receiver: str, *, worker: str, now: float, lease_s: float
) -> Taken | None:
    """``claim_next`` on ``conn``, inside the caller's transaction."""
    candidate = (
        select(MESSAGES.c.id)
        .where(MESSAGES.c.receiver == receiver, claimable(now))
        .order_by(MESSAGES.c.priority.desc(), MESSAGES.c.created_at, MESSAGES.c.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(MESSAGES)
        .where(MESSAGES.c.id == candidate.scalar_subquery(), claimable(now))
        .values(_claim_values(worker, now, lease_s))
        .returning(
            MESSAGES.c.id,
            MESSAGES.c.attempts,
            MESSAGES.c.redrives,
            MESSAGES.c.recovered_from,
            MESSAGES.c.envelope,
            MESSAGES.c.expires_at,
            MESSAGES.c.receiver,
            MESSAGES.c.created_at,
        )
    )
    row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    if row.recovered_from is not None:
        _record_lost(conn, row.id, row, now)
    return Taken(row.id, claim_of(row), row.envelope, row.expires_at)
