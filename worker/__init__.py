"""The Celery side of agentpost: the app, the ``deliver`` task, routing, DLX, the sweeper."""

from __future__ import annotations

from worker.app import AgentpostCelery, create_app
from worker.deadletter import DeadLetter
from worker.deliver import Outcome, backoff_delay_s, deliver_envelope
from worker.routing import (
    DELIVER_TASK,
    SWEEP_TASK,
    dead_letter_queue,
    inbox_name,
    inbox_queue,
    publish_delivery,
)
from worker.sweeper import SweepReport, sweep
from worker.transports import TransportProfile, profile_for

__all__ = [
    "DELIVER_TASK",
    "SWEEP_TASK",
    "AgentpostCelery",
    "DeadLetter",
    "Outcome",
    "SweepReport",
    "TransportProfile",
    "backoff_delay_s",
    "create_app",
    "dead_letter_queue",
    "deliver_envelope",
    "inbox_name",
    "inbox_queue",
    "profile_for",
    "publish_delivery",
    "sweep",
]
