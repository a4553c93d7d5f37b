"""Aggregates for metrics and ``agents``: per-agent totals and the latency histogram,
read in O(agents + recent rows), not O(history).

The counters (messages sent, attempts by outcome, delivered messages and their latency)
are kept in two parts that never overlap:

- what happened before a watermark, folded into ``agentpost_agent_totals`` by
  ``fold`` (the sweeper's, every sweep; and before any prune), which advances the
  watermark to ``ROLLUP_LAG_S`` ago: a row is stamped when its event happens and
  written within seconds, so nothing is folded before it is there to be counted;
- what happened since, read live, by time, through indexes on ``created_at``,
  the finished rows' ``(status, finished_at)`` and the attempts' ``ended_at``.

A reader reads both in one snapshot, so a fold between its statements can neither
count a row twice nor miss it, and retention deletes only folded rows: the counters
never go down. The gauges (messages queued, running, retrying, dead now) are counted
through the partial indexes of those statuses: as many rows as are on their way or
dead, the dead ones from their index alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, case, func, literal, select, union_all, update

from storage.sql import (
    AGENT_TOTALS,
    ATTEMPTS,
    MESSAGES,
    dialect_insert,
    finished,
    status_is,
    waiting,
)

__all__ = [
    "LATENCY_BOUNDS_S",
    "ROLLUP_LAG_S",
    "AgentTotals",
    "agent_totals",
    "current_counts",
    "fold",
    "folded_upto",
]

# The delivery-latency histogram's upper bounds, seconds (folded totals are counted
# against these).
LATENCY_BOUNDS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# How far behind now the watermark stays, by default (AGENTPOST_ROLLUP_LAG_S): longer
# than any row takes to be written after the moment it records (a batched completion,
# an exactly-once commit, hosts' clocks apart).
ROLLUP_LAG_S = 300.0
_MARK = ("", "folded_upto")  # the watermark's row: (agent, kind)
# The folded kind that counts delivered messages: the latency histogram's count, which
# agent_totals reads with the rest and current_counts reads alone.
_DELIVERED = "latency:count"


@dataclass(slots=True)
class AgentTotals:
    """What the store knows of one agent's traffic."""

    sent: int = 0
    # Messages by status: queued, running, retrying and dead now; delivered ever.
    by_status: dict[str, int] = field(default_factory=dict)
    # Attempts by outcome (delivered, retry, postponed, dead, lost), ever.
    attempts: dict[str, int] = field(default_factory=dict)
    # Delivery latency (created → delivered), cumulative count per upper bound.
    latency_buckets: list[int] = field(default_factory=list)
    latency_sum_s: float = 0.0
    latency_count: int = 0


def agent_totals(engine: Engine, bounds_s: Sequence[float]) -> dict[str, AgentTotals]:
    """Totals per receiving agent; ``bounds_s`` are the histogram's upper bounds (those
    of ``LATENCY_BOUNDS_S`` are the ones folded totals keep)."""
    with _snapshot(engine) as conn:
        upto = _mark(conn)
        totals = _live(conn, bounds_s, upto)
        folded = conn.execute(select(AGENT_TOTALS).where(AGENT_TOTALS.c.agent != "")).all()
        current = _current(conn)

    def of(agent: str) -> AgentTotals:
        return totals.setdefault(agent, AgentTotals(latency_buckets=[0] * len(bounds_s)))

    buckets = {_bucket_kind(bound): n for n, bound in enumerate(bounds_s)}
    for agent, kind, value in folded:
        row = of(agent)
        if kind == "sent":
            row.sent += int(value)
        elif kind.startswith("attempts:"):
            outcome = kind.removeprefix("attempts:")
            row.attempts[outcome] = row.attempts.get(outcome, 0) + int(value)
        elif kind == _DELIVERED:
            row.latency_count += int(value)
        elif kind == "latency:sum":
            row.latency_sum_s += float(value)
        elif kind in buckets:
            row.latency_buckets[buckets[kind]] += int(value)
    for agent, by_status in current.items():
        of(agent).by_status.update(by_status)
    for row in totals.values():
        if row.latency_count:
            row.by_status["delivered"] = row.latency_count
    return totals


def current_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Messages by receiver, then status: queued, running, retrying and dead now, and
    delivered ever (the delivered counter)."""
    # The gauges and one counter: not the other counters and the histogram's buckets,
    # which are most of the folded rows.
    with _snapshot(engine) as conn:
        upto = _mark(conn)
        folded = conn.execute(
            select(AGENT_TOTALS.c.agent, AGENT_TOTALS.c.value).where(
                AGENT_TOTALS.c.kind == _DELIVERED
            )
        ).all()
        recent = conn.execute(
            select(MESSAGES.c.receiver, func.count())
            .where(finished("delivered"), MESSAGES.c.finished_at >= upto)
            .group_by(MESSAGES.c.receiver)
        ).all()
        counts = _current(conn)
    delivered: dict[str, int] = {}
    for agent, value in [*folded, *recent]:
        delivered[agent] = delivered.get(agent, 0) + int(value)
    for agent, value in delivered.items():
        if value:
            counts.setdefault(agent, {})["delivered"] = value
    return counts


def folded_upto(engine: Engine) -> float:
    """The watermark: what happened before it is in the folded totals."""
    with engine.connect() as conn:
        return _mark(conn)


def fold(engine: Engine, *, now: float, lag_s: float = ROLLUP_LAG_S) -> float:
    """Fold what happened between the watermark and ``lag_s`` ago into the totals and
    move the watermark there (one folder at a time: it locks the watermark's row);
    returns the watermark."""
    upto = now - lag_s
    with engine.begin() as conn:
        insert = dialect_insert(conn)(AGENT_TOTALS)
        conn.execute(
            insert.values(agent=_MARK[0], kind=_MARK[1], value=0.0).on_conflict_do_nothing(
                index_elements=["agent", "kind"]
            )
        )
        mark = select(AGENT_TOTALS.c.value).where(
            AGENT_TOTALS.c.agent == _MARK[0], AGENT_TOTALS.c.kind == _MARK[1]
        )
        if conn.dialect.name == "postgresql":
            mark = mark.with_for_update()
        since = float(conn.execute(mark).scalar_one())
        if upto <= since:
            return since
        window = _live(conn, LATENCY_BOUNDS_S, since, upto)
        folded: dict[tuple[str, str], float] = {}
        for agent, row in window.items():
            kinds: dict[str, float] = {"sent": row.sent}
            kinds |= {f"attempts:{outcome}": n for outcome, n in row.attempts.items()}
            if row.latency_count:
                kinds |= {_DELIVERED: row.latency_count, "latency:sum": row.latency_sum_s}
                pairs = zip(LATENCY_BOUNDS_S, row.latency_buckets, strict=True)
                kinds |= {_bucket_kind(bound): n for bound, n in pairs}
            folded |= {(agent, kind): value for kind, value in kinds.items() if value}
        for (agent, kind), value in folded.items():
            stmt = insert.values(agent=agent, kind=kind, value=value)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["agent", "kind"],
                    set_={"value": AGENT_TOTALS.c.value + stmt.excluded.value},
                )
            )
        conn.execute(
            update(AGENT_TOTALS)
            .where(AGENT_TOTALS.c.agent == _MARK[0], AGENT_TOTALS.c.kind == _MARK[1])
            .values(value=upto)
        )
    return upto


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements all read one snapshot."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        # SQLite: the connection's transaction (BEGIN IMMEDIATE) holds off every writer.
        with conn.begin():
            yield conn


def _mark(conn: Connection) -> float:
    value = conn.execute(
        select(AGENT_TOTALS.c.value).where(
            AGENT_TOTALS.c.agent == _MARK[0], AGENT_TOTALS.c.kind == _MARK[1]
        )
    ).scalar()
    return 0.0 if value is None else float(value)


def _bucket_kind(bound: float) -> str:
    return f"latency:le:{float(bound)!r}"


def _live(
    conn: Connection, bounds_s: Sequence[float], since: float, until: float | None = None
) -> dict[str, AgentTotals]:
    """The counters' events at or after ``since`` (and before ``until``), by time."""
    totals: dict[str, AgentTotals] = {}

    def of(agent: str) -> AgentTotals:
        return totals.setdefault(agent, AgentTotals(latency_buckets=[0] * len(bounds_s)))

    def between(column: Any) -> list[Any]:
        return [column >= since] + ([] if until is None else [column < until])

    sent = (
        select(MESSAGES.c.receiver, func.count())
        .where(*between(MESSAGES.c.created_at))
        .group_by(MESSAGES.c.receiver)
    )
    by_outcome = (
        select(ATTEMPTS.c.receiver, ATTEMPTS.c.outcome, func.count())
        .where(*between(ATTEMPTS.c.ended_at))
        .group_by(ATTEMPTS.c.receiver, ATTEMPTS.c.outcome)
    )
    latency = MESSAGES.c.finished_at - MESSAGES.c.created_at
    histogram = (
        select(
            MESSAGES.c.receiver,
            func.count(),
            func.coalesce(func.sum(latency), 0.0),
            *(func.sum(case((latency <= bound, 1), else_=0)) for bound in bounds_s),
        )
        .where(finished("delivered"), *between(MESSAGES.c.finished_at))
        .group_by(MESSAGES.c.receiver)
    )
    for agent, count in conn.execute(sent):
        of(agent).sent = int(count)
    for agent, outcome, count in conn.execute(by_outcome):
        of(agent).attempts[outcome] = int(count)
    for agent, count, total, *buckets in conn.execute(histogram):
        row = of(agent)
        row.latency_count, row.latency_sum_s = int(count), float(total)
        row.latency_buckets = [int(b or 0) for b in buckets]
    return totals


def _current(conn: Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    # One count per partial index (waiting, running, dead): the dead ones are counted
    # from their index alone, and none of it reads a finished row.
    rows = conn.execute(
        union_all(
            select(MESSAGES.c.receiver, MESSAGES.c.status, func.count())
            .where(waiting())
            .group_by(MESSAGES.c.receiver, MESSAGES.c.status),
            *(
                select(MESSAGES.c.receiver, literal(status), func.count())
                .where(status_is(status))
                .group_by(MESSAGES.c.receiver)
                for status in ("running", "dead")
            ),
        )
    )
    for agent, status, count in rows:
        counts.setdefault(agent, {})[status] = int(count)
    return counts
