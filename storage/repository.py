"""The functions that read and change the store.

Every state change on the delivery path is one conditional statement, so the
database decides races: the idempotent insert relies on the unique key, the claim is
an ``UPDATE ... WHERE status IN (...)`` (never read-then-write), and completions are
fenced on the attempt number so a worker whose lease was taken over cannot overwrite
the newer attempt's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from storage import postgres
from storage.sql import (
    ACTIVE_STATUSES,
    ATTEMPTS,
    CLAIMABLE,
    MESSAGES,
    claimable,
    dialect_insert,
    fenced,
)

__all__ = [
    "Claim",
    "Inserted",
    "NewMessage",
    "Republish",
    "Taken",
    "claim",
    "claim_next",
    "complete",
    "insert_messages",
    "mark_dead",
    "purge",
    "redrive",
    "schedule_retry",
]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """The columns the client fills in when it accepts a message."""

    id: str
    idempotency_key: str
    correlation_id: str
    parent_id: str | None
    sender: str
    receiver: str
    priority: int
    envelope: str
    created_at: float
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Inserted:
    """Outcome of an idempotent insert: the id that holds the key, and whether it was new."""

    message_id: str
    duplicate: bool
    status: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A successful claim: the attempt number this worker now owns."""

    attempt: int
    redrive: int
    recovered_from: str | None


@dataclass(frozen=True, slots=True)
class Republish:
    """A row whose task must be published (again)."""

    message_id: str
    receiver: str
    priority: int
    envelope: str


@dataclass(frozen=True, slots=True)
class Taken:
    """A message taken from a mailbox: its claim and its stored envelope."""

    message_id: str
    claim: Claim
    envelope: str
    expires_at: float | None


def insert_messages(engine: Engine, rows: Sequence[NewMessage]) -> list[Inserted]:
    """Insert messages in one transaction; an existing idempotency key wins.

    The unique constraint decides: ``ON CONFLICT DO NOTHING RETURNING id`` tells
    whether this call created the row (``rowcount`` is unreliable for it on
    psycopg 3), and only a duplicate pays for the lookup of the first message.
    """
    if len(rows) == 1 and engine.dialect.name == "postgresql":
        # The common single send: one autocommit statement, a lookup only if repeated.
        row = rows[0]
        new_id = postgres.insert_one(engine, _insert_statement(postgresql.insert, row))
        if new_id is not None:
            return [Inserted(new_id, False, "queued")]
        with engine.connect() as conn:
            return [_first_holder(conn, row.idempotency_key)]
    results: list[Inserted] = []
    with engine.begin() as conn:
        insert = dialect_insert(conn)
        for row in rows:
            new_id = conn.execute(_insert_statement(insert, row)).scalar()
            if new_id is not None:
                results.append(Inserted(new_id, False, "queued"))
            else:
                results.append(_first_holder(conn, row.idempotency_key))
    return results


def _insert_statement(insert: Any, row: NewMessage) -> Any:
    values = {
        "id": row.id,
        "idempotency_key": row.idempotency_key,
        "correlation_id": row.correlation_id,
        "parent_id": row.parent_id,
        "sender": row.sender,
        "receiver": row.receiver,
        "priority": row.priority,
        "status": "queued",
        "envelope": row.envelope,
        "attempts": 0,
        "redrives": 0,
        "created_at": row.created_at,
        "updated_at": row.created_at,
        "due_at": row.created_at,
        "expires_at": row.expires_at,
    }
    return (
        insert(MESSAGES)
        .values(values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(MESSAGES.c.id)
    )


def _first_holder(conn: Connection, key: str) -> Inserted:
    first = conn.execute(
        select(MESSAGES.c.id, MESSAGES.c.status).where(MESSAGES.c.idempotency_key == key)
    ).one()
    return Inserted(first.id, True, first.status)


def claim(
    engine: Engine, message_id: str, *, worker: str, now: float, lease_s: float
) -> Claim | None:
    """Take the message for one attempt, or ``None`` if it is not claimable.

    Claimable: queued, retrying, or running under an expired lease (its worker
    died). SET expressions see the row's old values, which is how
    ``recovered_from`` learns, in the same statement, whose lease was taken over.
    """
    if engine.dialect.name == "postgresql":
        found = postgres.claim(engine, message_id, worker=worker, now=now, lease_s=lease_s)
        return None if found is None else Claim(*found)
    stmt = (
        update(MESSAGES)
        .where(
            MESSAGES.c.id == message_id,
            or_(
                MESSAGES.c.status.in_(CLAIMABLE),
                and_(MESSAGES.c.status == "running", MESSAGES.c.lease_until < now),
            ),
        )
        .values(_claim_values(worker, now, lease_s))
        .returning(MESSAGES.c.attempts, MESSAGES.c.redrives, MESSAGES.c.recovered_from)
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).one_or_none()
        if row is None:
            return None
        if row.recovered_from is not None:
            _record_lost(conn, message_id, row, now)
    return Claim(row.attempts, row.redrives, row.recovered_from)


def _claim_values(worker: str, now: float, lease_s: float) -> dict[str, Any]:
    """The SET of a claim. SET expressions see the row's old values, which is how
    ``recovered_from`` learns, in the same statement, whose lease was taken over."""
    return {
        "status": "running",
        "attempts": MESSAGES.c.attempts + 1,
        "lease_until": now + lease_s,
        "claimed_by": worker,
        "recovered_from": case(
            (MESSAGES.c.status == "running", func.coalesce(MESSAGES.c.claimed_by, "?")),
            else_=None,
        ),
        "updated_at": now,
    }


def _record_lost(conn: Connection, message_id: str, row: Any, now: float) -> None:
    # The previous attempt's worker died without a word: record it as lost.
    conn.execute(
        ATTEMPTS.insert().values(
            message_id=message_id,
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
    candidate = (
        select(MESSAGES.c.id)
        .where(MESSAGES.c.receiver == receiver, claimable(now))
        .order_by(MESSAGES.c.priority.desc(), MESSAGES.c.created_at, MESSAGES.c.id)
        .limit(1)
    )
    if engine.dialect.name == "postgresql":
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
        )
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).one_or_none()
        if row is None:
            return None
        if row.recovered_from is not None:
            _record_lost(conn, row.id, row, now)
    claim_ = Claim(row.attempts, row.redrives, row.recovered_from)
    return Taken(row.id, claim_, row.envelope, row.expires_at)


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
        return _finish_on(engine, message_id, claim_.attempt, values, attempt_row)
    if engine.dialect.name == "postgresql":
        return postgres.finish(
            engine, message_id, attempt=claim_.attempt, values=values, attempt_row=attempt_row
        )
    with engine.begin() as conn:
        return _finish_on(conn, message_id, claim_.attempt, values, attempt_row)


def _finish_on(
    conn: Connection,
    message_id: str,
    attempt: int,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    if conn.dialect.name == "postgresql":
        return postgres.finish_on(
            conn, message_id, attempt=attempt, values=values, attempt_row=attempt_row
        )
    changed = conn.execute(
        update(MESSAGES).where(fenced(message_id, attempt)).values(**values)
    ).rowcount
    if changed:  # fenced off: the takeover already recorded this attempt as lost
        conn.execute(ATTEMPTS.insert().values(**attempt_row))
    return bool(changed)


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
) -> bool:
    """Record a failed attempt whose retry is due at ``due_at``."""
    return _finish(
        engine,
        message_id,
        claim_=claim_,
        worker=worker,
        started_at=started_at,
        now=now,
        outcome="retry",
        values={"status": "retrying", "due_at": due_at, "error": error},
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
            .where(MESSAGES.c.id == message_id, MESSAGES.c.status.in_(ACTIVE_STATUSES))
            .values(updated_at=now, lease_until=None, **values)
        ).rowcount
    return bool(changed)


def redrive(engine: Engine, message_id: str, *, now: float) -> Republish | None:
    """Send a dead message again: back to queued, attempt count reset, key kept."""
    with engine.begin() as conn:
        row = conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id, MESSAGES.c.status == "dead")
            .values(
                status="queued",
                attempts=0,
                redrives=MESSAGES.c.redrives + 1,
                dead_reason=None,
                error=None,
                finished_at=None,
                due_at=now,
                updated_at=now,
            )
            .returning(MESSAGES.c.receiver, MESSAGES.c.priority, MESSAGES.c.envelope)
        ).one_or_none()
    if row is None:
        return None
    return Republish(message_id, row.receiver, row.priority, row.envelope)


def purge(engine: Engine, message_ids: Sequence[str]) -> int:
    """Delete dead messages and their attempts for good; returns how many."""
    if not message_ids:
        return 0
    with engine.begin() as conn:
        dead = select(MESSAGES.c.id).where(
            MESSAGES.c.id.in_(list(message_ids)), MESSAGES.c.status == "dead"
        )
        conn.execute(ATTEMPTS.delete().where(ATTEMPTS.c.message_id.in_(dead)))
        removed = conn.execute(
            MESSAGES.delete().where(
                MESSAGES.c.id.in_(list(message_ids)), MESSAGES.c.status == "dead"
            )
        ).rowcount
    return int(removed)
