"""Retention: finished messages (delivered or dead) and their attempts, deleted once past
their window, oldest first, in bounded batches.

On PostgreSQL whole weeks go first: a week whose every row is past its window is
dropped with its attempts' partition (``storage/partitions.py``). The rest goes in
batches: each is found through the ``(status, finished_at)`` index and deleted in one
transaction with its attempts; active rows (queued, running, retrying) are never read
or locked, so deliveries go on meanwhile. On PostgreSQL the batch skips rows another
transaction holds (a redrive moving one back to ``queued``), and the delete checks the
status again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select

from storage import partitions
from storage.sql import ATTEMPTS, KEYS, MESSAGES, finished
from storage.stats import ROLLUP_LAG_S, fold

__all__ = ["Pruned", "prunable", "prune"]


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune deleted (or, dry, would delete)."""

    messages: int = 0
    attempts: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.messages + other.messages, self.attempts + other.attempts)


def _windows(delivered_before: float | None, dead_before: float | None) -> list[tuple[str, float]]:
    cutoffs = (("delivered", delivered_before), ("dead", dead_before))
    return [(status, before) for status, before in cutoffs if before is not None]


def prune(
    engine: Engine,
    *,
    delivered_before: float | None,
    dead_before: float | None,
    limit: int,
    lag_s: float = ROLLUP_LAG_S,
) -> Pruned:
    """Delete up to ``limit`` delivered messages finished before ``delivered_before``, and
    as many dead ones before ``dead_before`` (None: keep them all), with their attempts.

    Only what the counters have folded goes (``storage/stats.py``): the totals are
    brought up to ``lag_s`` ago first, and nothing younger is deleted.
    """
    folded = fold(engine, now=time.time(), lag_s=lag_s)
    pruned = _drop_weeks(engine, delivered_before, dead_before, folded)
    for status, before in _windows(delivered_before, dead_before):
        batch = (
            select(MESSAGES.c.id)
            .where(
                finished(status),
                MESSAGES.c.finished_at < min(before, folded),
                MESSAGES.c.created_at < folded,  # counted as sent already: folded too
            )
            .order_by(MESSAGES.c.finished_at)
            .limit(limit)
        )
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                batch = batch.with_for_update(skip_locked=True)
            ids = list(conn.execute(batch).scalars())
            if not ids:
                continue
            attempts = conn.execute(delete(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(ids)))
            conn.execute(delete(KEYS).where(KEYS.c.message_id.in_(ids)))
            messages = conn.execute(delete(MESSAGES).where(MESSAGES.c.id.in_(ids)))
        pruned += Pruned(messages.rowcount, attempts.rowcount)
    return pruned


def _drop_weeks(
    engine: Engine, delivered_before: float | None, dead_before: float | None, folded: float
) -> Pruned:
    """Whole weeks past every window, dropped (PostgreSQL's partitions): only weeks that
    ended before the windows and the counters' watermark, and only if no row in them is
    kept (``partitions.drop_week`` checks each)."""
    if not partitions.partitioned(engine) or (delivered_before is None and dead_before is None):
        return Pruned()
    boundary = min(c for c in (delivered_before, dead_before, folded) if c is not None)
    with engine.connect() as conn:
        candidates = [week for week in partitions.weeks(conn) if week.end <= boundary]
    pruned = Pruned()
    for week in candidates:
        dropped = partitions.drop_week(
            engine, week, delivered_before=delivered_before, dead_before=dead_before
        )
        if dropped is not None:
            pruned += Pruned(*dropped)
    return pruned


def prunable(
    engine: Engine, *, delivered_before: float | None, dead_before: float | None
) -> Pruned:
    """What ``prune`` would delete in all, batch after batch (a dry run)."""
    pruned = Pruned()
    with engine.connect() as conn:
        for status, before in _windows(delivered_before, dead_before):
            old = (finished(status), MESSAGES.c.finished_at < before)
            messages = conn.execute(select(func.count()).where(*old)).scalar_one()
            ids = select(MESSAGES.c.id).where(*old)
            attempts = conn.execute(
                select(func.count()).where(ATTEMPTS.c.message_id.in_(ids))
            ).scalar_one()
            pruned += Pruned(int(messages), int(attempts))
    return pruned
