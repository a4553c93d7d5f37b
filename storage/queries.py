"""Read-only queries: one message, its attempts, chains, dead letters, a mailbox's next."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, select

from storage import postgres
from storage.sql import (
    ATTEMPTS,
    MESSAGES,
    claimable,
    finished,
)
from storage.stats import current_counts
from storage.tables import Attempt, Message

__all__ = [
    "ReplyState",
    "attempts_of",
    "chain_starter",
    "dead_letters",
    "get_message",
    "ids_starting",
    "peek",
    "reply_state",
    "status_counts",
    "trace",
]


def get_message(engine: Engine, message_id: str) -> Message | None:
    """One message row."""
    with engine.connect() as conn:
        row = conn.execute(select(MESSAGES).where(MESSAGES.c.id == message_id)).one_or_none()
    return Message.model_validate(row._mapping) if row is not None else None


def ids_starting(
    engine: Engine, prefix: str, *, correlation: bool = False, limit: int = 6
) -> list[str]:
    """Up to ``limit`` message ids (or correlation ids) that start with ``prefix``."""
    column = MESSAGES.c.correlation_id if correlation else MESSAGES.c.id
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    with engine.connect() as conn:
        rows = conn.execute(
            select(column)
            .where(column.like(f"{escaped}%", escape="\\"))
            .distinct()
            .order_by(column)
            .limit(limit)
        ).all()
    return [str(r[0]) for r in rows]


def attempts_of(engine: Engine, message_ids: Iterable[str]) -> list[Attempt]:
    """Every attempt of these messages, oldest first."""
    ids = list(message_ids)
    if not ids:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(ids)).order_by(ATTEMPTS.c.id)
        ).all()
    return [Attempt.model_validate(r._mapping) for r in rows]


def trace(engine: Engine, correlation_id: str) -> list[Message]:
    """Every message of a correlation chain, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES)
            .where(MESSAGES.c.correlation_id == correlation_id)
            .order_by(MESSAGES.c.created_at, MESSAGES.c.id)
        ).all()
    return [Message.model_validate(r._mapping) for r in rows]


def chain_starter(engine: Engine, correlation_id: str) -> str | None:
    """The sender of a correlation chain's first message (``None``: no such chain)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(MESSAGES.c.sender)
            .where(MESSAGES.c.correlation_id == correlation_id)
            .order_by(MESSAGES.c.created_at, MESSAGES.c.id)
            .limit(1)
        ).scalar()
    return None if found is None else str(found)


def dead_letters(
    engine: Engine,
    *,
    receiver: str | None = None,
    reason: str | None = None,
    since: float | None = None,
    correlation_id: str | None = None,
    limit: int = 100,
) -> list[Message]:
    """Dead messages, newest first, optionally filtered."""
    stmt = select(MESSAGES).where(finished("dead"))
    if receiver is not None:
        stmt = stmt.where(MESSAGES.c.receiver == receiver)
    if reason is not None:
        stmt = stmt.where(MESSAGES.c.dead_reason == reason)
    if since is not None:
        stmt = stmt.where(MESSAGES.c.finished_at >= since)
    if correlation_id is not None:
        stmt = stmt.where(MESSAGES.c.correlation_id == correlation_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(MESSAGES.c.finished_at.desc()).limit(limit)).all()
    return [Message.model_validate(r._mapping) for r in rows]


def peek(engine: Engine, receiver: str, *, now: float, limit: int) -> list[Message]:
    """The next ``limit`` messages ``claim_next`` would take, without taking them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES)
            .where(MESSAGES.c.receiver == receiver, claimable(now))
            .order_by(MESSAGES.c.priority.desc(), MESSAGES.c.created_at, MESSAGES.c.id)
            .limit(limit)
        ).all()
    return [Message.model_validate(r._mapping) for r in rows]


@dataclass(frozen=True, slots=True)
class ReplyState:
    """What a request waiter needs of a message: one narrow row, no attempts."""

    status: str
    reply: str | None
    dead_reason: str | None
    error: str | None
    sender: str
    receiver: str
    correlation_id: str


def reply_state(engine: Engine, message_id: str) -> ReplyState | None:
    """The status and reply of one message in a single cheap read (a reply waiter's)."""
    if engine.dialect.name == "postgresql":
        row = postgres.reply_state(engine, message_id)
    else:
        with engine.connect() as conn:
            row = conn.execute(_reply_state(), {"id": message_id}).one_or_none()
    return None if row is None else ReplyState(*row)


@functools.cache
def _reply_state() -> Any:
    return select(
        MESSAGES.c.status,
        MESSAGES.c.reply,
        MESSAGES.c.dead_reason,
        MESSAGES.c.error,
        MESSAGES.c.sender,
        MESSAGES.c.receiver,
        MESSAGES.c.correlation_id,
    ).where(MESSAGES.c.id == bindparam("id"))


def status_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Message counts by receiver, then status: queued, running, retrying and dead now,
    delivered ever (``storage/stats.py``: without reading history)."""
    return current_counts(engine)
