"""Token buckets kept in the store: the rate limit shared by every gateway process.

One statement per request: refill by the time passed, take a token if there is one.
It runs on SQLite and PostgreSQL alike (``INSERT … ON CONFLICT DO UPDATE … WHERE``).
"""

from __future__ import annotations

from sqlalchemy import Engine, case, literal, select

from storage.sql import RATE_BUCKETS, dialect_insert

__all__ = ["take_token"]


def take_token(
    engine: Engine, subject: str, *, rate_per_s: float, burst: float, now: float
) -> float:
    """Take one token; returns 0 if taken, else the seconds until one is available."""
    # Callers read their clocks before they wait for the row: a take that arrives with
    # an older ``now`` than the row's refills nothing (a negative refill would drain it).
    elapsed = case(
        (literal(now) > RATE_BUCKETS.c.updated_at, literal(now) - RATE_BUCKETS.c.updated_at),
        else_=literal(0.0),
    )
    latest = case(
        (literal(now) > RATE_BUCKETS.c.updated_at, literal(now)),
        else_=RATE_BUCKETS.c.updated_at,
    )
    refilled = RATE_BUCKETS.c.tokens + elapsed * rate_per_s
    capped = case((refilled > burst, literal(burst)), else_=refilled)
    with engine.begin() as conn:
        insert = dialect_insert(conn)(RATE_BUCKETS).values(
            subject=subject, tokens=burst - 1, updated_at=now
        )
        taken = conn.execute(
            insert.on_conflict_do_update(
                index_elements=[RATE_BUCKETS.c.subject],
                set_={"tokens": capped - 1, "updated_at": latest},
                where=capped >= 1,
            ).returning(RATE_BUCKETS.c.tokens)
        ).first()
        if taken is not None:
            return 0.0
        left = conn.execute(select(capped).where(RATE_BUCKETS.c.subject == subject)).scalar_one()
    return max(0.001, (1 - float(left)) / rate_per_s)
