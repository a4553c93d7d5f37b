"""The sweeper: republish what the broker lost, so the store's promise holds on any broker.

It finds (1) running rows whose lease expired (their worker died) and (2) queued or
retrying rows whose task is overdue (a publish that never happened, a Redis that
lost its data, a filesystem message eaten by a crash). Republishing is safe
because ``deliver`` claims before it runs: a duplicate task acks and does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import storage
from wire.app import AgentpostCelery
from wire.publish import publish_delivery

__all__ = ["SweepReport", "sweep"]

log = logging.getLogger("agentpost.sweeper")


@dataclass(frozen=True, slots=True)
class SweepReport:
    """How many messages one sweep recovered from dead workers and republished."""

    recovered: int
    republished: int


def sweep(app: AgentpostCelery) -> SweepReport:
    """Run one sweep now."""
    settings = app.settings
    engine = storage.engine_for(settings.database)
    now = time.time()
    recovered = storage.recover_expired(engine, now=now, grace_s=settings.redeliver_after_s)
    overdue = storage.overdue(engine, now=now, grace_s=settings.redeliver_after_s)
    for row in [*recovered, *overdue]:
        publish_delivery(
            app,
            message_id=row.message_id,
            receiver=row.receiver,
            priority=row.priority,
            envelope=row.envelope,
        )
    if recovered or overdue:
        log.warning(
            "sweeper: %d lost attempt(s) recovered, %d overdue message(s) republished",
            len(recovered),
            len(overdue),
        )
    return SweepReport(len(recovered), len(overdue))
