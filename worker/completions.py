"""At-least-once completions, recorded off the delivery's path and in batches.

An at-least-once delivery ends when its handler returns: the task returns at once and
the completion (the row delivered, the attempt recorded) is written by a background
thread of the worker process, many deliveries to a statement when they come faster
than one round trip (a group commit: a batch is what gathered while the last one was
written). The pool process is free for its next task while PostgreSQL commits.

Why that is safe for at-least-once: until its completion commits, the row is
``running`` under the attempt's lease. A completion that never lands (the process
killed, the store down for longer than the retries below) leaves the row to the
sweeper, which hands it out again one lease later, and the handler runs again: what
at-least-once allows after a crash, and what a kill an instant before the return did
already. Exactly-once deliveries never come here: their completion commits in the
handler's own transaction, before the task returns.

A pool process flushes what is pending before it exits (``worker/signals.py``; the
prefork pool's children end without running ``atexit``), other processes at exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from sqlalchemy.exc import InterfaceError, OperationalError

import storage
from messaging.outbox import Background

__all__ = ["complete_later", "flush"]

log = logging.getLogger("agentpost.deliver")

# How long a batch keeps trying a store that does not answer before it leaves its
# messages to the sweeper (their leases run out and they are handed out again).
_RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0)

_lock = threading.Lock()
_writers: dict[str, Background[storage.Delivered]] = {}  # by database URL


def complete_later(database: str, done: storage.Delivered) -> None:
    """Record ``done`` in the next batch of this process's completions for ``database``."""
    with _lock:
        writer = _writers.get(database)
        if writer is None:
            writer = _writers[database] = Background(
                lambda batch: _write(database, batch), name="agentpost-complete", linger_s=0
            )
    writer.add([done])


def flush() -> None:
    """Write every pending completion of this process now (before it exits)."""
    with _lock:
        writers = list(_writers.values())
    for writer in writers:
        writer.flush()


def _write(database: str, batch: Sequence[storage.Delivered]) -> None:
    engine = storage.engine_for(database)
    for delay_s in (*_RETRY_DELAYS_S, None):
        try:
            recorded = storage.complete_many(engine, batch)
        except (OperationalError, InterfaceError) as exc:
            if delay_s is None:
                log.error(
                    "could not record %d delivered message(s), the store did not answer (%s): "
                    "they run again once their leases expire",
                    len(batch),
                    str(exc).splitlines()[0],
                )
                return
            time.sleep(delay_s)
            continue
        if len(recorded) < len(batch):
            lost = sorted({d.message_id for d in batch} - set(recorded))
            # Another attempt took these over after their leases ran out: its outcome counts.
            log.warning("delivered after their leases were taken over: %s", ", ".join(lost))
        return
