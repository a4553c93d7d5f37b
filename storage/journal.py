"""The sweep journal: the marks of a sweep that died before it published.

A sweep marks rows handed (or spared) in the store, committed, and then publishes
their tasks: the other order would leave a published task unmarked and copy it
again. A sweeper killed between the two leaves rows that look handed but have no
task, and every later sweep would take the broker for holding them. So each sweep
records when it started and, once everything it marked is published, that it
finished. The next sweep that finds the last one unfinished publishes again the rows
marked at that start time (every mark a sweep makes carries its one ``now``).
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from storage.sql import SWEEP_JOURNAL

__all__ = ["begin_sweep", "end_sweep"]

_NAME = "sweep"  # one sweep at a time per store (storage.sweep_lock): one row


def begin_sweep(engine: Engine, *, now: float) -> float | None:
    """Record a sweep starting at ``now``; the start of the last one if it never finished.

    Call it holding the sweep lock.
    """
    with engine.begin() as conn:
        last = conn.execute(
            select(SWEEP_JOURNAL.c.started_at, SWEEP_JOURNAL.c.finished_at).where(
                SWEEP_JOURNAL.c.name == _NAME
            )
        ).first()
        values = {"started_at": now, "finished_at": None}
        if last is None:
            conn.execute(insert(SWEEP_JOURNAL).values(name=_NAME, **values))
            return None
        conn.execute(update(SWEEP_JOURNAL).where(SWEEP_JOURNAL.c.name == _NAME).values(values))
        return None if last.finished_at is not None else float(last.started_at)


def end_sweep(engine: Engine, *, started_at: float, now: float) -> None:
    """Record that the sweep started at ``started_at`` published everything it marked."""
    with engine.begin() as conn:
        conn.execute(
            update(SWEEP_JOURNAL)
            .where(SWEEP_JOURNAL.c.name == _NAME, SWEEP_JOURNAL.c.started_at == started_at)
            .values(finished_at=now)
        )
