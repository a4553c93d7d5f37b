"""The Celery side of agentpost: the deliver algorithm, the sweeper, the worker's hooks.

The tasks themselves (``worker.tasks``) and the signal hooks (``worker.signals``) are
found by name when a worker starts; ``Harness`` runs the same deliver path in-process.
"""

from __future__ import annotations

from worker.deliver import DeliveryOutcome, deliver_envelope
from worker.harness import Harness
from worker.sweeper import SweepReport, sweep

__all__ = ["DeliveryOutcome", "Harness", "SweepReport", "deliver_envelope", "sweep"]
