"""The sender's side of the outbox: publishing stored messages, off the caller's thread.

A message is accepted once its row is committed; the row is the outbox entry. So
``send`` returns after the commit, and a background thread of the sending process
publishes the tasks in batches (one pipeline each) and then records, in batches too,
which rows it handed to the broker. A publish that never happens (the process killed
first, the broker down) is the sweeper's: it publishes rows not handed within
``publish_grace_s``. ``flush`` (called by ``Client.close``, and at interpreter exit)
publishes what is pending before it returns.

Both are per process: a forked child starts with nothing pending (its parent publishes
what it had) and new locks (a lock held at the fork would never be released there).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy import Engine

import storage

__all__ = ["Background", "HandedMarks"]

log = logging.getLogger("agentpost.client")

T = TypeVar("T")

_IDLE_S = 5.0  # a batcher's thread ends after this long with nothing to do
_MAX_REFUSED = 100_000  # handed marks kept for another try while the store is down

# Every live batcher, for the fork and exit hooks.
_LIVE: weakref.WeakSet[Background[object]] = weakref.WeakSet()


class Background(Generic[T]):
    """Items handed to ``run`` in batches from a background thread of this process."""

    def __init__(self, run: Callable[[list[T]], None], *, name: str, linger_s: float) -> None:
        self._run_batch = run
        self._name = name
        self._linger_s = linger_s  # how long a burst may gather before its batch
        self._reset()
        _LIVE.add(self)  # type: ignore[arg-type]  # any item type

    def _reset(self) -> None:
        self._lock = threading.Lock()  # guards _pending and _thread
        self._running = threading.Lock()  # held while a batch runs
        self._wake = threading.Event()
        self._pending: list[T] = []
        self._thread: threading.Thread | None = None

    def add(self, items: Sequence[T]) -> None:
        """Queue ``items`` for the next batch."""
        with self._lock:
            self._pending.extend(items)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
        self._wake.set()

    def flush(self) -> None:
        """Run what is pending now, in this thread, after any batch already running."""
        with self._running:
            with self._lock:
                items, self._pending = self._pending, []
            if items:
                self._run_batch(items)

    def _loop(self) -> None:
        while True:
            if not self._wake.wait(_IDLE_S):
                with self._lock:  # idle: end, unless an add came just now
                    if not self._pending:
                        self._thread = None
                        return
            if self._linger_s:
                time.sleep(self._linger_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the batch's own errors are its to report
                log.exception("%s: a batch failed", self._name)


def _after_fork_in_child() -> None:
    for batcher in list(_LIVE):
        batcher._reset()


def _flush_at_exit() -> None:
    # Twice: a publish's batch adds handed marks to another batcher.
    for batcher in list(_LIVE) * 2:
        try:
            batcher.flush()
        except Exception:
            log.exception("at exit: a batch failed")


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)


class HandedMarks:
    """Records, in batches, which rows' tasks were handed to the broker.

    A mark that never lands (the process died first) costs one spare publish by the
    sweeper after ``publish_grace_s``, never a lost message. A mark the store refused
    (a database restarting) is tried again with the next batch: a sender that goes on
    sending records it once the store is back, before the sweeper would publish a copy
    of every such message (their tasks still in the broker).
    """

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine
        # 50 ms: a burst of sends shares one UPDATE.
        self._marks: Background[str] = Background(
            self._mark, name="agentpost-handed", linger_s=0.05
        )
        # Refused marks, newest last (only _mark touches it: batches run one at a time).
        self._refused: list[str] = []

    def add(self, message_ids: Sequence[str]) -> None:
        self._marks.add(message_ids)

    def flush(self) -> None:
        self._marks.flush()

    def _mark(self, ids: list[str]) -> None:
        ids, self._refused = self._refused + ids, []
        try:
            storage.mark_handed(self._engine(), ids, now=time.time())
        except Exception as exc:
            log.warning(
                "could not record %d handed message(s), tried again with the next: %s",
                len(ids),
                exc,
            )
            # Bounded: past it the oldest are the sweeper's (one spare copy each).
            self._refused = ids[-_MAX_REFUSED:]
