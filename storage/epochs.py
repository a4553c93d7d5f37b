"""Broker epochs: the token the sweeper keeps in each broker, and its copy in the store.

A broker that no longer holds the token the store remembers has lost its contents
(Redis restarted empty or flushed, the embedded broker's folders wiped). Swapping
the token is a compare-and-set, so of two sweepers that notice the same loss only
one republishes.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from storage.sql import BROKER_EPOCHS

__all__ = ["broker_epoch", "swap_broker_epoch"]


def broker_epoch(engine: Engine, broker: str) -> str | None:
    """The token last left in ``broker``, or ``None`` if none was."""
    with engine.connect() as conn:
        return conn.execute(
            select(BROKER_EPOCHS.c.epoch).where(BROKER_EPOCHS.c.broker == broker)
        ).scalar()


def swap_broker_epoch(
    engine: Engine, broker: str, *, expected: str | None, new: str, now: float
) -> bool:
    """Replace ``expected`` by ``new``; False if another sweeper changed it first."""
    with engine.begin() as conn:
        if expected is None:
            exists = conn.execute(
                select(BROKER_EPOCHS.c.broker).where(BROKER_EPOCHS.c.broker == broker)
            ).first()
            if exists is not None:
                return False
            conn.execute(insert(BROKER_EPOCHS).values(broker=broker, epoch=new, updated_at=now))
            return True
        changed = conn.execute(
            update(BROKER_EPOCHS)
            .where(BROKER_EPOCHS.c.broker == broker, BROKER_EPOCHS.c.epoch == expected)
            .values(epoch=new, updated_at=now)
        ).rowcount
        return bool(changed)
