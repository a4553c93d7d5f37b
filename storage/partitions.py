"""Time partitions of the messages and their attempts (PostgreSQL, migration 0014).

One partition a week of the message's ``created_at`` (weeks start on Monday, UTC),
for the messages and for their attempts. The sweeper makes them ``AHEAD_S`` ahead; a
send that finds none for its time makes its own (``ensure_partitions``). Retention
drops a week whole once every row in it is past its window (``drop_week``): a DROP
where batched DELETEs would cost about 27 µs a row.

SQLite keeps plain tables: every function here does nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from storage.sql import ATTEMPTS, KEYS, MESSAGES

__all__ = [
    "AHEAD_S",
    "WEEK_S",
    "Week",
    "drop_week",
    "ensure_partitions",
    "missing_partition",
    "partitioned",
    "weeks",
]

WEEK_S = 7 * 86400.0
AHEAD_S = 2 * WEEK_S
_NAME = re.compile(r"_p(\d{8})$")
# A week's key rows deleted per statement before its drop: bounded transactions.
_KEY_BATCH = 10_000
# How long a drop waits for the tables' lock: deliveries queue behind a waiting DROP,
# so it gives up soon and the next sweep tries again.
_LOCK_TIMEOUT = "500ms"


def partitioned(engine: Engine | Connection) -> bool:
    """Whether the store's messages are partitioned (PostgreSQL)."""
    return engine.dialect.name == "postgresql"


def ensure_partitions(engine: Engine, start: float, end: float) -> int:
    """Make the weeks' partitions from ``start`` to ``end`` that do not exist yet; how
    many tables it made."""
    if not partitioned(engine):
        return 0
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
        made = conn.execute(
            text("SELECT agentpost_ensure_partitions(:start, :end)"), {"start": start, "end": end}
        ).scalar_one()
    return int(made)


def missing_partition(exc: DBAPIError) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a row no partition takes."""
    return getattr(exc.orig, "sqlstate", None) == "23514" and "no partition" in str(exc.orig)


@dataclass(frozen=True, slots=True)
class Week:
    """One week's partitions: its messages', its attempts', and when it starts."""

    messages: str
    attempts: str
    start: float

    @property
    def end(self) -> float:
        return self.start + WEEK_S


def weeks(conn: Connection) -> list[Week]:
    """The messages' partitions, oldest first."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": MESSAGES.name},
    ).scalars()
    found = []
    for name in names:
        match = _NAME.search(name)
        if match is None:
            continue  # not one of ours (an operator's own partition)
        monday = datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=UTC).timestamp()
        found.append(Week(name, f"{ATTEMPTS.name}_p{match[1]}", monday))
    return sorted(found, key=lambda week: week.start)


def _kept(week: Week) -> str:
    # A row of the week that retention must keep: on its way, or finished inside its
    # status's window (a NULL window keeps that status for ever). Each test reads one
    # partial index of the partition.
    return f"""
SELECT 1 FROM {week.messages}
WHERE status IN ('queued', 'retrying') OR status = 'running'
   OR (status = 'delivered' AND (CAST(:delivered_before AS double precision) IS NULL
                                 OR finished_at >= :delivered_before))
   OR (status = 'dead' AND (CAST(:dead_before AS double precision) IS NULL
                            OR finished_at >= :dead_before))
LIMIT 1"""


def drop_week(
    engine: Engine, week: Week, *, delivered_before: float | None, dead_before: float | None
) -> tuple[int, int] | None:
    """Drop the week's partitions if every row in them is past its window: the
    (messages, attempts) dropped, or None if it is kept (or its lock was busy).

    Its keys go first, in bounded batches; then, under the lock, the rows are checked
    again (a redrive may have moved one back) and the tables dropped, or the keys
    restored.
    """
    windows = {"delivered_before": delivered_before, "dead_before": dead_before}
    kept = text(_kept(week))
    with engine.connect() as conn:
        if conn.execute(kept, windows).first() is not None:
            return None
        messages = conn.execute(text(f"SELECT count(*) FROM {week.messages}")).scalar_one()
        attempts = conn.execute(text(f"SELECT count(*) FROM {week.attempts}")).scalar_one()
    in_week = f"created_at >= {week.start!r} AND created_at < {week.end!r}"
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(
                text(
                    f"DELETE FROM {KEYS.name} WHERE idempotency_key IN (SELECT idempotency_key "
                    f"FROM {KEYS.name} WHERE {in_week} LIMIT {_KEY_BATCH})"
                )
            ).rowcount
        if deleted < _KEY_BATCH:
            break
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
            # The parents, in the order the delivery path takes them (its UPDATE, then
            # its attempt's INSERT): the DROPs need them, and a partition locked first
            # could deadlock with a delivery that holds its parent.
            tables = f"{MESSAGES.name}, {ATTEMPTS.name}"
            conn.exec_driver_sql(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
            if conn.execute(kept, windows).first() is None:
                conn.exec_driver_sql(f"DROP TABLE {week.attempts}")
                conn.exec_driver_sql(f"DROP TABLE {week.messages}")
                return int(messages), int(attempts)
    except OperationalError:
        pass  # the lock was busy: dropped by a later sweep
    _restore_keys(engine, week)
    return None


def _restore_keys(engine: Engine, week: Week) -> None:
    """The keys of the week's rows, back: the week stays."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {KEYS.name} (idempotency_key, message_id, created_at) "
                f"SELECT idempotency_key, id, created_at FROM {week.messages} "
                "ON CONFLICT DO NOTHING"
            )
        )
