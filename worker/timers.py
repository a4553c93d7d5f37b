"""Canceled timers leave the worker's event loop within seconds, not at their deadline.

Celery's prefork pool arms a soft time-limit timer on the consumer's event loop for
every task and cancels it when the task ends; kombu's timer only marks the entry
canceled and keeps it in its heap until the moment it was due (celery#1129, #5200).
agentpost's limit is 80 % of ``AGENTPOST_LEASE_S`` (240 s by default), so a worker
delivering 900 messages a second held some 200,000 dead entries: its main process grew
by about 50 MB per 100,000 messages before the first ones expired. Every
``COMPACT_EVERY_S`` the canceled entries are dropped and the heap rebuilt.
"""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["COMPACT_EVERY_S", "drop_canceled", "keep_compact"]

COMPACT_EVERY_S = 10.0


def drop_canceled(timer: Any) -> int:
    """Remove ``timer``'s canceled entries (a kombu ``Timer``); how many went."""
    # kombu keeps the heap in ``_queue``: (eta, priority, entry) tuples, and exposes no
    # way to drop an entry. Rebuilt in place: the timer's iterator holds this list.
    queue: list[Any] = timer._queue
    kept = [scheduled for scheduled in queue if not scheduled[2].canceled]
    dropped = len(queue) - len(kept)
    if dropped:
        heapq.heapify(kept)
        queue[:] = kept
    return dropped


def keep_compact(hub: Any) -> None:
    """Drop the canceled entries of ``hub``'s timer every ``COMPACT_EVERY_S``."""
    hub.call_repeatedly(COMPACT_EVERY_S, drop_canceled, hub.timer)
