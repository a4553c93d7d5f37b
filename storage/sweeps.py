"""The sweeper's queries: expired leases and overdue tasks of handler agents."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update

from storage import postgres
from storage.repository import Republish
from storage.sql import (
    AGENTS,
    ATTEMPTS,
    CLAIMABLE,
    MESSAGES,
    fenced,
)

__all__ = [
    "overdue",
    "recover_expired",
]


def recover_expired(engine: Engine, *, now: float, grace_s: float) -> list[Republish]:
    """Turn running rows whose lease expired into retries, recording the lost attempt."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                MESSAGES.c.id,
                MESSAGES.c.attempts,
                MESSAGES.c.redrives,
                MESSAGES.c.claimed_by,
                MESSAGES.c.receiver,
                MESSAGES.c.priority,
                MESSAGES.c.envelope,
            ).where(
                MESSAGES.c.status == "running",
                MESSAGES.c.lease_until < now,
                _served_by_workers(),
            )
        ).all()
        recovered: list[Republish] = []
        for row in rows:
            changed = conn.execute(
                update(MESSAGES)
                .where(fenced(row.id, row.attempts))
                .values(status="retrying", lease_until=None, due_at=now + grace_s, updated_at=now)
            ).rowcount
            if not changed:
                continue
            conn.execute(
                ATTEMPTS.insert().values(
                    message_id=row.id,
                    number=row.attempts,
                    redrive=row.redrives,
                    worker=row.claimed_by,
                    ended_at=now,
                    outcome="lost",
                    error=postgres.LOST_ERROR,
                )
            )
            recovered.append(Republish(row.id, row.receiver, row.priority, row.envelope))
    return recovered


def _served_by_workers() -> Any:
    # Mailbox agents pull from the store: their rows are never published to a queue.
    mailboxes = select(AGENTS.c.name).where(AGENTS.c.kind == "mailbox")
    return MESSAGES.c.receiver.not_in(mailboxes)


def overdue(engine: Engine, *, now: float, grace_s: float, limit: int = 1000) -> list[Republish]:
    """Queued or retrying rows whose task is overdue by ``grace_s``: its publish was lost.

    Their ``due_at`` is pushed forward by ``grace_s`` so a row is republished at
    most once per grace period while its task is on the way.
    """
    with engine.begin() as conn:
        rows = conn.execute(
            select(MESSAGES.c.id, MESSAGES.c.receiver, MESSAGES.c.priority, MESSAGES.c.envelope)
            .where(
                MESSAGES.c.status.in_(CLAIMABLE),
                MESSAGES.c.due_at < now - grace_s,
                _served_by_workers(),
            )
            .order_by(MESSAGES.c.due_at)
            .limit(limit)
        ).all()
        if rows:
            conn.execute(
                update(MESSAGES).where(MESSAGES.c.id.in_([r.id for r in rows])).values(due_at=now)
            )
    return [Republish(r.id, r.receiver, r.priority, r.envelope) for r in rows]
