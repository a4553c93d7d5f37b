"""Core handles of the store's tables and the statement pieces the modules share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy.engine import Connection

from storage.tables import (
    Agent,
    AgentTotal,
    ApiKey,
    Attempt,
    AuditEntry,
    BrokerEpoch,
    Message,
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
    "MESSAGES",
    "RATE_BUCKETS",
    "REVOKED_SUBJECTS",
    "SUBSCRIPTIONS",
    "SWEEP_JOURNAL",
    "claimable",
    "dialect_insert",
    "fenced",
]

MESSAGES = table_of(Message)
ATTEMPTS = table_of(Attempt)
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


def fenced(message_id: str, attempt: int) -> Any:
    """The row, only while this attempt still owns it (a takeover bumps ``attempts``)."""
    return and_(
        MESSAGES.c.id == message_id,
        MESSAGES.c.status == "running",
        MESSAGES.c.attempts == attempt,
    )


def claimable(now: float) -> Any:
    """Due queued/retrying rows, and running rows whose lease expired."""
    return or_(
        and_(MESSAGES.c.status.in_(CLAIMABLE), MESSAGES.c.due_at <= now),
        and_(MESSAGES.c.status == "running", MESSAGES.c.lease_until < now),
    )
