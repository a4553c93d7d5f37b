"""Aggregates for metrics: per-agent totals and the delivery-latency histogram.

Everything is read from the store at scrape time, so the figures are the whole
deployment's (every worker, every sender) and survive restarts: three GROUP BY
statements over the rows kept, plus what retention deleted, which it folds into
``agentpost_pruned_totals`` in the transaction that deletes it, so that the counters
(sent, attempts by outcome, the latency histogram) never go down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, case, func, select

from storage.sql import ATTEMPTS, MESSAGES, PRUNED_TOTALS, dialect_insert

__all__ = ["LATENCY_BOUNDS_S", "AgentTotals", "agent_totals", "fold_pruned"]

# The delivery-latency histogram's upper bounds, seconds (what retention keeps of the
# messages it deletes is counted against these).
LATENCY_BOUNDS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class AgentTotals:
    """What the store knows of one agent's traffic."""

    sent: int = 0
    # Current messages by status (queued, running, retrying, delivered, dead).
    by_status: dict[str, int] = field(default_factory=dict)
    # Attempts by outcome (delivered, retry, dead, lost): monotonic until a purge.
    attempts: dict[str, int] = field(default_factory=dict)
    # Delivery latency (created → delivered), cumulative count per upper bound.
    latency_buckets: list[int] = field(default_factory=list)
    latency_sum_s: float = 0.0
    latency_count: int = 0


def agent_totals(engine: Engine, bounds_s: Sequence[float]) -> dict[str, AgentTotals]:
    """Totals per receiving agent; ``bounds_s`` are the histogram's upper bounds."""
    with engine.connect() as conn:
        totals = _totals(conn, bounds_s)
        pruned = conn.execute(select(PRUNED_TOTALS)).all()

    def of(agent: str) -> AgentTotals:
        return totals.setdefault(agent, AgentTotals(latency_buckets=[0] * len(bounds_s)))

    keys = {_bucket_kind(bound): n for n, bound in enumerate(bounds_s)}
    for agent, kind, value in pruned:
        row = of(agent)
        if kind == "sent":
            row.sent += int(value)
        elif kind.startswith("attempts:"):
            outcome = kind.removeprefix("attempts:")
            row.attempts[outcome] = row.attempts.get(outcome, 0) + int(value)
        elif kind == "latency:count":
            row.latency_count += int(value)
        elif kind == "latency:sum":
            row.latency_sum_s += float(value)
        elif kind in keys:
            row.latency_buckets[keys[kind]] += int(value)
    return totals


def fold_pruned(conn: Connection, message_ids: Sequence[str]) -> None:
    """Add what these messages counted to the pruned totals (before they are deleted)."""
    folded: dict[tuple[str, str], float] = {}
    for agent, row in _totals(conn, LATENCY_BOUNDS_S, MESSAGES.c.id.in_(message_ids)).items():
        kinds: dict[str, float] = {"sent": row.sent}
        kinds |= {f"attempts:{outcome}": n for outcome, n in row.attempts.items()}
        if row.latency_count:
            kinds |= {"latency:count": row.latency_count, "latency:sum": row.latency_sum_s}
            buckets = zip(LATENCY_BOUNDS_S, row.latency_buckets, strict=True)
            kinds |= {_bucket_kind(bound): n for bound, n in buckets}
        folded |= {(agent, kind): value for kind, value in kinds.items() if value}
    if not folded:
        return
    insert = dialect_insert(conn)(PRUNED_TOTALS)
    for (agent, kind), value in folded.items():
        stmt = insert.values(agent=agent, kind=kind, value=value)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["agent", "kind"],
                set_={"value": PRUNED_TOTALS.c.value + stmt.excluded.value},
            )
        )


def _bucket_kind(bound: float) -> str:
    return f"latency:le:{float(bound)!r}"


def _totals(conn: Connection, bounds_s: Sequence[float], *where: Any) -> dict[str, AgentTotals]:
    totals: dict[str, AgentTotals] = {}

    def of(agent: str) -> AgentTotals:
        return totals.setdefault(agent, AgentTotals(latency_buckets=[0] * len(bounds_s)))

    by_status = (
        select(MESSAGES.c.receiver, MESSAGES.c.status, func.count())
        .where(*where)
        .group_by(MESSAGES.c.receiver, MESSAGES.c.status)
    )
    by_outcome = (
        select(MESSAGES.c.receiver, ATTEMPTS.c.outcome, func.count())
        .select_from(ATTEMPTS.join(MESSAGES, MESSAGES.c.id == ATTEMPTS.c.message_id))
        .where(*where)
        .group_by(MESSAGES.c.receiver, ATTEMPTS.c.outcome)
    )
    latency = MESSAGES.c.finished_at - MESSAGES.c.created_at
    histogram = (
        select(
            MESSAGES.c.receiver,
            func.count(),
            func.coalesce(func.sum(latency), 0.0),
            *(func.sum(case((latency <= bound, 1), else_=0)) for bound in bounds_s),
        )
        .where(MESSAGES.c.status == "delivered", MESSAGES.c.finished_at.is_not(None), *where)
        .group_by(MESSAGES.c.receiver)
    )
    for agent, status, count in conn.execute(by_status):
        row = of(agent)
        row.by_status[status] = count
        row.sent += count
    for agent, outcome, count in conn.execute(by_outcome):
        of(agent).attempts[outcome] = count
    for agent, count, total, *buckets in conn.execute(histogram):
        row = of(agent)
        row.latency_count, row.latency_sum_s = int(count), float(total)
        row.latency_buckets = [int(b or 0) for b in buckets]
    return totals
