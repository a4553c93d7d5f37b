"""PostgreSQL forms of the delivery-path statements: one round trip each.

A data-modifying CTE lets the claim also record a lost attempt, and the completion
update the message and insert its attempt, in a single autocommit statement, where
the portable form needs BEGIN, two statements and COMMIT. Every round trip on this
path shows in throughput (DESIGN: measured on the project machine).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, TextClause, text

from storage.tables import Attempt, Message, table_of

__all__ = [
    "autocommit",
    "claim",
    "complete_many",
    "finish",
    "finish_on",
    "insert_many",
    "insert_one",
]

_M = table_of(Message).name
_A = table_of(Attempt).name
LOST_ERROR = "worker lost: lease expired before the attempt finished"

_CLAIM = text(f"""
WITH c AS (
    UPDATE {_M} SET
        status = 'running',
        attempts = attempts + 1,
        lease_until = :lease_until,
        claimed_by = :worker,
        recovered_from = CASE WHEN status = 'running' THEN coalesce(claimed_by, '?') END,
        updated_at = :now
    WHERE id = :id
      AND receiver = coalesce(CAST(:receiver AS VARCHAR), receiver)
      AND (status IN ('queued', 'retrying') OR (status = 'running' AND lease_until < :now))
    RETURNING attempts, redrives, recovered_from, envelope, expires_at
), lost AS (
    INSERT INTO {_A} (message_id, number, redrive, worker, ended_at, outcome, error)
    SELECT :id, attempts - 1, redrives, recovered_from, :now, 'lost', :lost_error
    FROM c WHERE recovered_from IS NOT NULL
)
SELECT attempts, redrives, recovered_from, envelope, expires_at FROM c
""")


_autocommit_engines: WeakKeyDictionary[Engine, Engine] = WeakKeyDictionary()


def autocommit(engine: Engine) -> Engine:
    # One statement is atomic on its own: no BEGIN/COMMIT round trips around it.
    found = _autocommit_engines.get(engine)
    if found is None:
        found = engine.execution_options(isolation_level="AUTOCOMMIT")
        _autocommit_engines[engine] = found
    return found


# A batch as one JSON array of rows: a statement whose text never changes (psycopg
# parses it once; a multi-row VALUES list is a new text for every batch size), and a
# parameter that the C JSON encoder writes and PostgreSQL parses at C speed (text
# arrays are escaped element by element in Python).
_INSERT_MANY = text(f"""
INSERT INTO {_M} (id, idempotency_key, correlation_id, parent_id, sender, receiver,
                  priority, status, envelope, attempts, redrives, created_at, updated_at,
                  due_at, expires_at)
SELECT id, idempotency_key, correlation_id, parent_id, sender, receiver,
       priority, 'queued', envelope, 0, 0, created_at, created_at, created_at, expires_at
FROM json_to_recordset(CAST(:rows AS json)) AS batch(
    id varchar, idempotency_key varchar, correlation_id varchar, parent_id varchar,
    sender varchar, receiver varchar, priority integer, envelope text,
    created_at double precision, expires_at double precision
)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, idempotency_key
""")
_BATCH_COLUMNS = (
    "id",
    "idempotency_key",
    "correlation_id",
    "parent_id",
    "sender",
    "receiver",
    "priority",
    "envelope",
    "created_at",
    "expires_at",
)


def insert_many(conn: Connection, rows: Sequence[Any]) -> list[tuple[str, str]]:
    """Insert a batch in one statement; (id, key) of each row it created."""
    batch = json.dumps([{name: getattr(row, name) for name in _BATCH_COLUMNS} for row in rows])
    return [(new_id, key) for new_id, key in conn.execute(_INSERT_MANY, {"rows": batch})]


def insert_one(engine: Engine, statement: Any, values: dict[str, Any]) -> Any:
    """Run one INSERT ... ON CONFLICT DO NOTHING RETURNING id outside a transaction."""
    with autocommit(engine).connect() as conn:
        return conn.execute(statement, values).scalar()


def claim(
    engine: Engine,
    message_id: str,
    *,
    receiver: str | None,
    worker: str,
    now: float,
    lease_s: float,
) -> Any:
    """The claim row (attempts, redrives, recovered_from, envelope, expires_at) or ``None``."""
    with autocommit(engine).connect() as conn:
        return conn.execute(
            _CLAIM,
            {
                "id": message_id,
                "receiver": receiver,
                "worker": worker,
                "now": now,
                "lease_until": now + lease_s,
                "lost_error": LOST_ERROR,
            },
        ).one_or_none()


def finish(
    engine: Engine,
    message_id: str,
    *,
    attempt: int,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    """Move the fenced row on with ``values`` and insert its attempt: one statement.

    Fenced off (another claim took the row over), nothing changes: that attempt was
    already recorded as lost by the takeover.
    """
    with autocommit(engine).connect() as conn:
        return finish_on(conn, message_id, attempt=attempt, values=values, attempt_row=attempt_row)


def finish_on(
    conn: Connection,
    message_id: str,
    *,
    attempt: int,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    """``finish`` on the caller's connection (inside its transaction, for exactly-once)."""
    statement = _finish_statement(tuple(values), tuple(attempt_row))
    params = {"id": message_id, "attempt": attempt}
    params.update({f"v_{k}": v for k, v in values.items()})
    params.update({f"a_{k}": v for k, v in attempt_row.items()})
    return bool(conn.execute(statement, params).scalar())


@cache
def _finish_statement(
    value_columns: tuple[str, ...], attempt_columns: tuple[str, ...]
) -> TextClause:
    # A handful of column sets exist (delivered, retry, dead): built once each.
    assignments = ", ".join(f"{column} = :v_{column}" for column in value_columns)
    columns = ", ".join(attempt_columns)
    placeholders = ", ".join(f":a_{column}" for column in attempt_columns)
    return text(f"""
WITH m AS (
    UPDATE {_M} SET {assignments}
    WHERE id = :id AND status = 'running' AND attempts = :attempt
    RETURNING 1
)
INSERT INTO {_A} ({columns}) SELECT {placeholders} FROM m
RETURNING 1
""")


# A batch of completions as one JSON array (as _INSERT_MANY): each row fenced on its own
# attempt, and an attempt row only for the messages the UPDATE moved.
_COMPLETE_MANY = text(f"""
WITH b AS (
    SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS b(
        id varchar, attempt integer, redrive integer, worker varchar,
        started_at double precision, ended_at double precision, reply text
    )
), m AS (
    UPDATE {_M} AS t SET
        status = 'delivered', reply = b.reply, finished_at = b.ended_at, error = NULL,
        updated_at = b.ended_at, lease_until = NULL
    FROM b
    WHERE t.id = b.id AND t.status = 'running' AND t.attempts = b.attempt
    RETURNING t.id
)
INSERT INTO {_A} (message_id, number, redrive, worker, started_at, ended_at, outcome)
SELECT b.id, b.attempt, b.redrive, b.worker, b.started_at, b.ended_at, 'delivered'
FROM b JOIN m ON m.id = b.id
RETURNING message_id
""")


def complete_many(engine: Engine, done: Sequence[dict[str, Any]]) -> list[str]:
    """Deliver a batch of claimed messages in one autocommit statement; the ids recorded.

    ``done``: one dict a message, with the columns of ``_COMPLETE_MANY``'s ``b``.
    """
    rows = json.dumps(list(done))
    with autocommit(engine).connect() as conn:
        return [message_id for (message_id,) in conn.execute(_COMPLETE_MANY, {"rows": rows})]
