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
from typing import TYPE_CHECKING

import storage
from worker.routing import SWEEP_TASK, publish_delivery

if TYPE_CHECKING:
    from worker.app import AgentpostCelery

__all__ = ["SweepReport", "register", "sweep"]

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


def register(app: AgentpostCelery) -> None:
    """Declare ``agentpost.sweep`` on ``app`` (scheduled by beat)."""

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep_task() -> dict[str, int]:
        report = sweep(app)
        return {"recovered": report.recovered, "republished": report.republished}
