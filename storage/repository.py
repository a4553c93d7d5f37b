"""Accepting messages, and the operator's changes: redrive and purge.

The idempotent insert relies on the keys table's unique key (``MessageKey``), so the
database decides which of two senders of one key made the message. Claims live in
``storage/claims.py``, the ends of an attempt in ``storage/completion.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from storage import partitions, postgres
from storage.sql import ATTEMPTS, KEYS, MESSAGES, dialect_insert, status_is

__all__ = ["Inserted", "NewMessage", "Republish", "insert_messages", "purge", "redrive"]


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
class Republish:
    """A row whose task must be published (again)."""

    message_id: str
    receiver: str
    priority: int
    envelope: str
    due_at: float | None = None  # a retry waiting for its countdown; None: due now
    created_at: float | None = None  # the row's: its task carries it (see wire/publish)


def insert_messages(engine: Engine, rows: Sequence[NewMessage]) -> list[Inserted]:
    """Insert messages in one transaction; an existing idempotency key wins.

    On PostgreSQL a week with no partition yet gets one, and the insert runs again.
    """
    try:
        return _insert(engine, rows)
    except IntegrityError as exc:
        if not partitions.missing_partition(exc):
            raise
    times = [row.created_at for row in rows]
    partitions.ensure_partitions(engine, min(times), max(times))
    return _insert(engine, rows)


def _insert(engine: Engine, rows: Sequence[NewMessage]) -> list[Inserted]:
    """The keys' unique constraint decides: ``ON CONFLICT DO NOTHING RETURNING`` tells
    which keys this call took (``rowcount`` is unreliable for it on psycopg 3), only
    their messages are stored, and only the repeated keys pay for a lookup of their
    first message. A batch is one statement on PostgreSQL (a JSON recordset), two
    executemany elsewhere (which SQLAlchemy sends as multi-row INSERTs), never a
    statement per message.
    """
    if not rows:
        return []
    if len(rows) == 1 and engine.dialect.name == "postgresql":
        # The common single send: one autocommit statement, a lookup only if repeated.
        row = rows[0]
        new_id = postgres.insert_one(engine, _values(row))
        if new_id is not None:
            return [Inserted(new_id, False, "queued")]
        with engine.connect() as conn:
            return [_first_holder(conn, row.idempotency_key)]
    with engine.begin() as conn:
        # A row comes back for each key taken; a key already taken returns none.
        if conn.dialect.name == "postgresql":
            returned = postgres.insert_many(conn, rows)
        else:
            returned = _insert_portable(conn, rows)
        created = {key: new_id for new_id, key in returned}
        repeated = {row.idempotency_key for row in rows if row.idempotency_key not in created}
        holders = _first_holders(conn, repeated) if repeated else {}
    results: list[Inserted] = []
    for row in rows:
        new_id = created.get(row.idempotency_key)
        if new_id == row.id:
            results.append(Inserted(new_id, False, "queued"))
        elif new_id is not None:  # the key came twice in this batch: the first one holds it
            results.append(Inserted(new_id, True, "queued"))
        else:
            results.append(holders[row.idempotency_key])
    return results


def _insert_portable(conn: Connection, rows: Sequence[NewMessage]) -> list[tuple[str, str]]:
    """The keys, then the messages whose keys this call took: (id, key) of each."""
    keys = (
        dialect_insert(conn)(KEYS)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(KEYS.c.message_id, KEYS.c.idempotency_key, sort_by_parameter_order=True)
    )
    params = [
        {"idempotency_key": r.idempotency_key, "message_id": r.id, "created_at": r.created_at}
        for r in rows
    ]
    taken = [(i, k) for i, k in conn.execute(keys, params)]
    ids = {new_id for new_id, _ in taken}
    stored = {r.id: _values(r) for r in reversed(rows) if r.id in ids}  # first one of an id
    if stored:
        conn.execute(insert(MESSAGES), list(stored.values()))
    return taken


def _values(row: NewMessage) -> dict[str, Any]:
    return {
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


def _first_holder(conn: Connection, key: str) -> Inserted:
    return _first_holders(conn, {key})[key]


def _first_holders(conn: Connection, keys: set[str]) -> dict[str, Inserted]:
    found = conn.execute(
        select(KEYS.c.idempotency_key, MESSAGES.c.id, MESSAGES.c.status)
        .join(
            MESSAGES,
            (MESSAGES.c.id == KEYS.c.message_id) & (MESSAGES.c.created_at == KEYS.c.created_at),
        )
        .where(KEYS.c.idempotency_key.in_(sorted(keys)))
    )
    return {key: Inserted(message_id, True, status) for key, message_id, status in found}


def redrive(engine: Engine, message_id: str, *, now: float) -> Republish | None:
    """Send a dead message again: back to queued, attempt count reset, key kept."""
    with engine.begin() as conn:
        row = conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id, status_is("dead"))
            .values(
                status="queued",
                attempts=0,
                redrives=MESSAGES.c.redrives + 1,
                dead_reason=None,
                error=None,
                finished_at=None,
                due_at=now,
                updated_at=now,
                handed_at=None,  # the redriving client hands it anew
                spare_at=None,
            )
            .returning(
                MESSAGES.c.receiver,
                MESSAGES.c.priority,
                MESSAGES.c.envelope,
                MESSAGES.c.created_at,
            )
        ).one_or_none()
    if row is None:
        return None
    return Republish(
        message_id, row.receiver, row.priority, row.envelope, created_at=row.created_at
    )


def purge(engine: Engine, message_ids: Sequence[str]) -> int:
    """Delete dead messages and their attempts for good; returns how many."""
    if not message_ids:
        return 0
    with engine.begin() as conn:
        dead = select(MESSAGES.c.id).where(MESSAGES.c.id.in_(list(message_ids)), status_is("dead"))
        conn.execute(ATTEMPTS.delete().where(ATTEMPTS.c.message_id.in_(dead)))
        conn.execute(KEYS.delete().where(KEYS.c.message_id.in_(dead)))
        removed = conn.execute(
            MESSAGES.delete().where(MESSAGES.c.id.in_(list(message_ids)), status_is("dead"))
        ).rowcount
    return int(removed)
