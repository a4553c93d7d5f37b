"""Core handles of the store's tables and the statement pieces the modules share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, literal_column, or_
from sqlalchemy.engine import Connection

from storage.tables import (
    Agent,
    AgentTotal,
    ApiKey,
    Attempt,
    AuditEntry,
    BrokerEpoch,
    Message,
    MessageKey,
    RateBucket,
    RevokedSubject,
    Subscription,
    SweepJournal,
    table_of,
)

__all__ = [
    "ACTIVE_STATUSES",
    "AGENTS",
    "AGENT_TOTALS",
    "API_KEYS",
    "ATTEMPTS",
    "AUDIT",
    "BROKER_EPOCHS",
    "CLAIMABLE",
    "FINISHED",
    "KEYS",
    "MESSAGES",
    "RATE_BUCKETS",
    "REVOKED_SUBJECTS",
    "SUBSCRIPTIONS",
    "SWEEP_JOURNAL",
    "by_id",
    "claimable",
    "dialect_insert",
    "fenced",
    "finished",
    "status_is",
    "waiting",
]

MESSAGES = table_of(Message)
ATTEMPTS = table_of(Attempt)
KEYS = table_of(MessageKey)
AGENTS = table_of(Agent)
AGENT_TOTALS = table_of(AgentTotal)
SUBSCRIPTIONS = table_of(Subscription)
API_KEYS = table_of(ApiKey)
AUDIT = table_of(AuditEntry)
BROKER_EPOCHS = table_of(BrokerEpoch)
RATE_BUCKETS = table_of(RateBucket)
REVOKED_SUBJECTS = table_of(RevokedSubject)
SWEEP_JOURNAL = table_of(SweepJournal)

ACTIVE_STATUSES = ("queued", "running", "retrying")
CLAIMABLE = ("queued", "retrying")
FINISHED = ("delivered", "dead")
_STATUSES = frozenset({*ACTIVE_STATUSES, *FINISHED})


def dialect_insert(conn: Connection) -> Any:
    """The dialect's INSERT that supports ``ON CONFLICT DO NOTHING``."""
    # Imported here: a process imports only its own database's dialect.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql  # noqa: PLC0415

        return postgresql.insert
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite  # noqa: PLC0415

        return sqlite.insert
    raise NotImplementedError(f"unsupported database dialect {conn.dialect.name!r}")


def status_is(*statuses: str) -> Any:
    """``status`` tested against literals: SQLite uses a partial index only for the
    very test its predicate writes, and PostgreSQL's generic plan of a prepared
    statement cannot prove a predicate from parameters."""
    unknown = set(statuses) - _STATUSES
    if unknown or not statuses:
        raise ValueError(f"unknown message status {sorted(unknown)}")
    values: list[Any] = [literal_column(f"'{status}'") for status in statuses]
    return MESSAGES.c.status == values[0] if len(values) == 1 else MESSAGES.c.status.in_(values)


def waiting() -> Any:
    """Queued and retrying rows: the predicate of the waiting indexes (``WAITING_SQL``)."""
    return status_is(*CLAIMABLE)


def finished(status: str | None = None) -> Any:
    """Finished rows (of ``status``): the finished index's predicate (``FINISHED_SQL``)
    written out whole, as SQLite's planner needs it, then narrowed."""
    test = status_is(*FINISHED)
    return test if status is None else and_(test, status_is(status))


def by_id(message_id: str, created_at: float | None = None) -> Any:
    """The row of ``message_id``; with its ``created_at`` too, PostgreSQL reads only the
    partition of its week (``storage/partitions.py``), not each one's key."""
    if created_at is None:
        return MESSAGES.c.id == message_id
    return and_(MESSAGES.c.id == message_id, MESSAGES.c.created_at == created_at)


def fenced(message_id: str, attempt: int, created_at: float | None = None) -> Any:
    """The row, only while this attempt still owns it (a takeover bumps ``attempts``)."""
    return and_(
        by_id(message_id, created_at),
        status_is("running"),
        MESSAGES.c.attempts == attempt,
    )


def claimable(now: float) -> Any:
    """Due queued/retrying rows, and running rows whose lease expired."""
    return or_(
        and_(waiting(), MESSAGES.c.due_at <= now),
        and_(status_is("running"), MESSAGES.c.lease_until < now),
    )
