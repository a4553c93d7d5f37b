"""PostgreSQL forms of the delivery-path statements: one round trip each.

A data-modifying CTE lets the claim also record a lost attempt, and the completion
update the message and insert its attempt, in a single autocommit statement, where
the portable form needs BEGIN, two statements and COMMIT. Every round trip on this
path shows in throughput (DESIGN: measured on the project machine).

The statements every message pays (a send's INSERT, its claim, its completion, and a
reply waiter's read) run on a pooled psycopg connection directly, as prepared statements, below
SQLAlchemy's execution layer: about 190 µs of CPU a statement through it, 100 µs
without it, here. Their errors are translated into SQLAlchemy's, as its own would be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import DBAPIError, StatementError

from storage.tables import Agent, Attempt, Message, MessageKey, table_of

__all__ = [
    "claim",
    "claim_limited",
    "claim_rated",
    "complete_many",
    "finish",
    "finish_on",
    "insert_many",
    "insert_one",
    "reply_state",
]

_M = table_of(Message).name
_A = table_of(Attempt).name
_AG = table_of(Agent).name
_K = table_of(MessageKey).name
LOST_ERROR = "worker lost: lease expired before the attempt finished"

# The claim; given the row's created_at (``_CLAIM_IN_WEEK``) it reads only the partition of
# the row's week.
_CLAIM_SQL = f"""
WITH c AS (
    UPDATE {_M} SET
        status = 'running',
        attempts = attempts + 1,
        lease_until = :lease_until,
        claimed_by = :worker,
        recovered_from = CASE WHEN status = 'running' THEN coalesce(claimed_by, '?') END,
        updated_at = :now
    WHERE id = :id{{week}}
      AND receiver = coalesce(CAST(:receiver AS VARCHAR), receiver)
      AND (status IN ('queued', 'retrying') OR (status = 'running' AND lease_until < :now))
    RETURNING attempts, redrives, recovered_from, envelope, expires_at, receiver, created_at
), lost AS (
    INSERT INTO {_A} (message_id, receiver, message_created_at, number, redrive, worker,
                      ended_at, outcome, error)
    SELECT :id, receiver, created_at, attempts - 1, redrives, recovered_from, :now, 'lost',
           :lost_error
    FROM c WHERE recovered_from IS NOT NULL
)
SELECT attempts, redrives, recovered_from, envelope, expires_at, created_at FROM c
"""
# The row's week, when the caller knows its created_at: PostgreSQL reads that partition alone.
_IN_WEEK = " AND created_at = :created_at"
_CLAIM = text(_CLAIM_SQL.format(week=""))
_CLAIM_IN_WEEK = text(_CLAIM_SQL.format(week=_IN_WEEK))


# A batch as one JSON array of rows: a statement whose text never changes (psycopg
# parses it once; a multi-row VALUES list is a new text for every batch size), and a
# parameter that the C JSON encoder writes and PostgreSQL parses at C speed (text
# arrays are escaped element by element in Python).
_INSERT_MANY = text(f"""
WITH b AS (
    SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS batch(
        id varchar, idempotency_key varchar, correlation_id varchar, parent_id varchar,
        sender varchar, receiver varchar, priority integer, envelope text,
        created_at double precision, expires_at double precision
    )
), k AS (
    INSERT INTO {_K} (idempotency_key, message_id, created_at)
    SELECT idempotency_key, id, created_at FROM b
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING message_id
)
INSERT INTO {_M} (id, idempotency_key, correlation_id, parent_id, sender, receiver,
                  priority, status, envelope, attempts, redrives, created_at, updated_at,
                  due_at, expires_at)
SELECT DISTINCT ON (b.id) b.id, idempotency_key, correlation_id, parent_id, sender,
       receiver, priority, 'queued', envelope, 0, 0, created_at, created_at, created_at,
       expires_at
FROM b JOIN k ON k.message_id = b.id
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


_INSERT_ONE = text(f"""
WITH k AS (
    INSERT INTO {_K} (idempotency_key, message_id, created_at)
    VALUES (:idempotency_key, :id, :created_at)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING message_id
)
INSERT INTO {_M} (id, idempotency_key, correlation_id, parent_id, sender, receiver,
                  priority, status, envelope, attempts, redrives, created_at, updated_at,
                  due_at, expires_at)
SELECT message_id, :idempotency_key, :correlation_id, CAST(:parent_id AS varchar),
       :sender, :receiver, CAST(:priority AS integer), 'queued', :envelope, 0, 0,
       CAST(:created_at AS double precision), CAST(:created_at AS double precision),
       CAST(:created_at AS double precision), CAST(:expires_at AS double precision)
FROM k
RETURNING id
""")


def insert_one(engine: Engine, values: Mapping[str, Any]) -> str | None:
    """Insert one message outside a transaction: its id, or None if its key is taken.

    ``values``: the columns of ``_INSERT_ONE``.
    """
    rows = _raw(engine, _INSERT_ONE, values)
    return rows[0].id if rows else None


def claim(
    engine: Engine,
    message_id: str,
    *,
    receiver: str | None,
    created_at: float | None,
    worker: str,
    now: float,
    lease_s: float,
) -> Any:
    """The claim row (attempts, redrives, recovered_from, envelope, expires_at,
    created_at) or ``None``."""
    params = {
        "id": message_id,
        "receiver": receiver,
        "worker": worker,
        "now": now,
        "lease_until": now + lease_s,
        "lost_error": LOST_ERROR,
    }
    if created_at is None:
        rows = _raw(engine, _CLAIM, params)
    else:
        rows = _raw(engine, _CLAIM_IN_WEEK, {**params, "created_at": created_at})
    return rows[0] if rows else None


def finish(
    engine: Engine,
    message_id: str,
    *,
    attempt: int,
    created_at: float | None,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    """Move the fenced row on with ``values`` and insert its attempt: one statement.

    Fenced off (another claim took the row over), nothing changes: that attempt was
    already recorded as lost by the takeover. ``created_at``: the row's, from its claim
    (its week's partition alone is read).
    """
    statement, params = _finish(message_id, attempt, created_at, values, attempt_row)
    return bool(_raw(engine, statement, params))


def finish_on(
    conn: Connection,
    message_id: str,
    *,
    attempt: int,
    created_at: float | None,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> bool:
    """``finish`` on the caller's connection (inside its transaction, for exactly-once)."""
    statement, params = _finish(message_id, attempt, created_at, values, attempt_row)
    return bool(conn.execute(statement, params).scalar())


def _finish(
    message_id: str,
    attempt: int,
    created_at: float | None,
    values: dict[str, Any],
    attempt_row: dict[str, Any],
) -> tuple[TextClause, dict[str, Any]]:
    statement = _finish_statement(tuple(values), tuple(attempt_row), created_at is not None)
    params: dict[str, Any] = {"id": message_id, "attempt": attempt}
    if created_at is not None:
        params["created_at"] = created_at
    params.update({f"v_{k}": v for k, v in values.items()})
    params.update({f"a_{k}": v for k, v in attempt_row.items()})
    return statement, params


@cache
def _finish_statement(
    value_columns: tuple[str, ...], attempt_columns: tuple[str, ...], in_week: bool
) -> TextClause:
    # A handful of column sets exist (delivered, retry, dead): built once each.
    assignments = ", ".join(f"{column} = :v_{column}" for column in value_columns)
    columns = ", ".join(attempt_columns)
    placeholders = ", ".join(f":a_{column}" for column in attempt_columns)
    week = _IN_WEEK if in_week else ""
    return text(f"""
WITH m AS (
    UPDATE {_M} SET {assignments}
    WHERE id = :id{week} AND status = 'running' AND attempts = :attempt
    RETURNING receiver, created_at
)
INSERT INTO {_A} (receiver, message_created_at, {columns})
SELECT receiver, created_at, {placeholders} FROM m
RETURNING 1
""")


# A batch of completions as one JSON array (as _INSERT_MANY): each row fenced on its own
# attempt, and an attempt row only for the messages the UPDATE moved. With the rows'
# created_at (``_COMPLETE_MANY_IN_WEEK``) each is looked up in its week's partition.
_COMPLETE_MANY_SQL = f"""
WITH b AS (
    SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS b(
        id varchar, attempt integer, redrive integer, worker varchar,
        started_at double precision, ended_at double precision, reply text,
        created_at double precision
    )
), m AS (
    UPDATE {_M} AS t SET
        status = 'delivered', reply = b.reply, finished_at = b.ended_at, error = NULL,
        updated_at = b.ended_at, lease_until = NULL
    FROM b
    WHERE t.id = b.id{{week}} AND t.status = 'running' AND t.attempts = b.attempt
    RETURNING t.id, t.receiver, t.created_at
)
INSERT INTO {_A} (message_id, receiver, message_created_at, number, redrive, worker,
                  started_at, ended_at, outcome)
SELECT b.id, m.receiver, m.created_at, b.attempt, b.redrive, b.worker, b.started_at,
       b.ended_at, 'delivered'
FROM b JOIN m ON m.id = b.id
RETURNING message_id
"""
_COMPLETE_MANY = text(_COMPLETE_MANY_SQL.format(week=""))
_COMPLETE_MANY_IN_WEEK = text(_COMPLETE_MANY_SQL.format(week=" AND t.created_at = b.created_at"))


def complete_many(engine: Engine, done: Sequence[dict[str, Any]]) -> list[str]:
    """Deliver a batch of claimed messages in one autocommit statement; the ids recorded.

    ``done``: one dict a message, with the columns of ``_COMPLETE_MANY``'s ``b``.
    """
    in_week = all(d.get("created_at") is not None for d in done)
    statement = _COMPLETE_MANY_IN_WEEK if in_week else _COMPLETE_MANY
    rows = _raw(engine, statement, {"rows": json.dumps(list(done))})
    return [row.message_id for row in rows]


_REPLY_STATE = text(f"""
SELECT status, reply, dead_reason, error, sender, receiver, correlation_id FROM {_M}
WHERE id = :id
""")


def reply_state(engine: Engine, message_id: str) -> Any:
    """The row a reply waiter reads (the columns of ``_REPLY_STATE``), or ``None``."""
    rows = _raw(engine, _REPLY_STATE, {"id": message_id})
    return rows[0] if rows else None


# Flow control (storage/flow.py) on the delivery path, each one round trip whose commit
# does not wait for its WAL flush (storage/flow.py ``_begin`` says why that is safe).
# The claim under a concurrency limit is a function (migration 0009): it locks the
# agent's row, then counts, then claims, each statement on a fresh snapshot.
_CLAIM_LIMITED = text("""
SELECT running, attempts, redrives, recovered_from, envelope, expires_at, created_at
FROM agentpost_claim_limited(:id, :receiver, :limit, :worker, :now, :lease_until, :lost_error)
""")


def claim_limited(
    engine: Engine,
    message_id: str,
    *,
    receiver: str,
    limit: int,
    worker: str,
    now: float,
    lease_s: float,
) -> Any:
    """The claim under a concurrency limit: a row of ``running`` (the handlers running
    before it) and the claim's columns, all None when it claimed nothing."""
    params = {
        "id": message_id,
        "receiver": receiver,
        "limit": limit,
        "worker": worker,
        "now": now,
        "lease_until": now + lease_s,
        "lost_error": LOST_ERROR,
    }
    return _raw(engine, _CLAIM_LIMITED, params)[0]


# The claim of a rate-limited agent's message (GCRA): on the slot the message holds,
# else on the agent's next slot, taken here; a slot later than ``soon`` leaves the
# message unclaimed (the caller holds it until then, on that slot).
_CLAIM_RATED = text(f"""
WITH quick AS MATERIALIZED (
    SELECT set_config('synchronous_commit', 'off', true) AS quick
), held AS (
    SELECT 1 FROM {_M} WHERE id = :id AND slot_at <= :soon
), taken AS (
    UPDATE {_AG} SET rate_tat = GREATEST(coalesce(rate_tat, 0), :now) + :interval
    WHERE name = :receiver AND NOT EXISTS (SELECT 1 FROM held)
    RETURNING rate_tat - :interval AS slot
), c AS (
    UPDATE {_M} SET
        status = 'running',
        attempts = attempts + 1,
        lease_until = :lease_until,
        claimed_by = :worker,
        recovered_from = CASE WHEN status = 'running' THEN coalesce(claimed_by, '?') END,
        updated_at = :now,
        slot_at = NULL
    WHERE id = :id
      AND receiver = :receiver
      AND (status IN ('queued', 'retrying') OR (status = 'running' AND lease_until < :now))
      AND (EXISTS (SELECT 1 FROM held) OR coalesce((SELECT slot FROM taken), 0) <= :soon)
    RETURNING attempts, redrives, recovered_from, envelope, expires_at, receiver, created_at
), lost AS (
    INSERT INTO {_A} (message_id, receiver, message_created_at, number, redrive, worker,
                      ended_at, outcome, error)
    SELECT :id, receiver, created_at, attempts - 1, redrives, recovered_from, :now, 'lost',
           :lost_error
    FROM c WHERE recovered_from IS NOT NULL
)
SELECT (SELECT slot FROM taken) AS slot, quick,
       c.attempts, c.redrives, c.recovered_from, c.envelope, c.expires_at, c.created_at
FROM quick LEFT JOIN c ON true
""")


def claim_rated(
    engine: Engine,
    message_id: str,
    *,
    receiver: str,
    interval_s: float,
    worker: str,
    now: float,
    soon: float,
    lease_s: float,
) -> Any:
    """The claim of a rate-limited agent's message: a row of ``slot`` (the slot taken for
    it, None if it ran on its own) and the claim's columns, None when it claimed nothing."""
    params = {
        "id": message_id,
        "receiver": receiver,
        "interval": interval_s,
        "worker": worker,
        "now": now,
        "soon": soon,
        "lease_until": now + lease_s,
        "lost_error": LOST_ERROR,
    }
    return _raw(engine, _CLAIM_RATED, params)[0]


def _raw(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """Run ``statement`` in autocommit on a pooled psycopg connection; its rows.

    Named tuples, as SQLAlchemy's rows read by attribute; a psycopg error is raised as
    the SQLAlchemy error it would have been (``OperationalError`` for a lost server),
    and a connection it broke leaves the pool.
    """
    import psycopg  # noqa: PLC0415  (a SQLite store never loads PostgreSQL's driver)
    from psycopg.rows import namedtuple_row  # noqa: PLC0415

    sql = _psycopg_form(statement)
    fairy = engine.raw_connection()
    conn: Any = fairy.driver_connection
    try:
        conn.autocommit = True
        with conn.cursor(row_factory=namedtuple_row) as cursor:
            cursor.execute(sql, params, prepare=True)
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        raise _translated(engine, fairy, sql, params, exc) from exc
    finally:
        if not conn.closed:
            conn.autocommit = False  # the pool's other users expect transactions
        fairy.close()


def _translated(
    engine: Engine, fairy: Any, sql: str, params: Mapping[str, Any], exc: Exception
) -> StatementError:
    """The SQLAlchemy error a psycopg one would have been; a broken connection leaves."""
    import psycopg  # noqa: PLC0415

    error: Any = exc
    broken = engine.dialect.is_disconnect(error, fairy.dbapi_connection, None)
    if broken:
        fairy.invalidate(exc)
    return DBAPIError.instance(
        sql,
        params,
        exc,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=broken,
        dialect=engine.dialect,
    )


@cache
def _psycopg_form(statement: TextClause) -> str:
    # ``:name`` (SQLAlchemy's bind parameters) as ``%(name)s``; no statement here has a
    # ``::`` cast or a literal colon.
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement.text)
