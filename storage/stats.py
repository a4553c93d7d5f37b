"""Aggregates for metrics: per-agent totals and the delivery-latency histogram.

Everything is read from the store at scrape time, so the figures are the whole
deployment's (every worker, every sender) and survive restarts. Each scrape is three
GROUP BY statements over the rows kept; ``agentpost dlq purge`` and retention keep it cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, case, func, select

from storage.sql import ATTEMPTS, MESSAGES

__all__ = ["AgentTotals", "agent_totals"]


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
    totals: dict[str, AgentTotals] = {}

    def of(agent: str) -> AgentTotals:
        return totals.setdefault(agent, AgentTotals(latency_buckets=[0] * len(bounds_s)))

    by_status = select(MESSAGES.c.receiver, MESSAGES.c.status, func.count()).group_by(
        MESSAGES.c.receiver, MESSAGES.c.status
    )
    by_outcome = (
        select(MESSAGES.c.receiver, ATTEMPTS.c.outcome, func.count())
        .select_from(ATTEMPTS.join(MESSAGES, MESSAGES.c.id == ATTEMPTS.c.message_id))
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
        .where(MESSAGES.c.status == "delivered", MESSAGES.c.finished_at.is_not(None))
        .group_by(MESSAGES.c.receiver)
    )
    with engine.connect() as conn:
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
