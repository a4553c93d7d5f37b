"""Wake a reply waiter when its message finishes, instead of polling the store.

On PostgreSQL a trigger (migration 0004) runs ``pg_notify('agentpost_finished', id)``
whenever a message becomes delivered or dead; the notification leaves with the
commit, so a woken waiter always reads the finished row. Each process keeps one
connection of its own LISTENing, in a thread, and wakes the waiters of the ids it
hears. The store stays the source of truth: a waiter reads the row after each
wake-up, and also every ``FALLBACK_POLL_S`` in case a notification was missed.

A notification can be missed only while the listening connection is down (the
database restarted, the network dropped): the listener wakes every waiter when it
connects again, and waiters poll with backoff while it is down. SQLite has no
channel; there ``watch_finished`` gives a watch that only polls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

__all__ = [
    "CHANNEL",
    "FALLBACK_POLL_S",
    "FinishWatcher",
    "Watch",
    "close_watchers",
    "finish_watcher",
    "watch_finished",
]

CHANNEL = "agentpost_finished"
# While listening, a waiter still reads its row this often (a lost notification
# costs at most this much, never the reply).
FALLBACK_POLL_S = 1.0

log = logging.getLogger(__name__)


class Watch:
    """One waiter's interest in one message: ``wait`` returns when it is worth a read."""

    def __init__(self, watcher: FinishWatcher | None) -> None:
        self._watcher = watcher
        self._event = threading.Event()
        self._pause = 0.001

    def wait(self, remaining_s: float) -> bool:
        """Wait for a wake-up (True), at most ``remaining_s``; read the row after each.

        Listening, the fallback is a read every ``FALLBACK_POLL_S``; without a channel
        (SQLite, or the listener reconnecting) a poll backoff from 1 ms to 50 ms.
        """
        if self.listening:
            limit = FALLBACK_POLL_S
        else:
            limit, self._pause = self._pause, min(self._pause * 1.5, 0.05)
        woken = self._event.wait(min(limit, remaining_s))
        self._event.clear()
        return woken

    @property
    def listening(self) -> bool:
        """Whether a notification can wake this watch now."""
        return self._watcher is not None and self._watcher.listening

    def wake(self) -> None:
        self._event.set()


class FinishWatcher:
    """This process's listening connection and the watches it wakes."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._listening = threading.Event()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="agentpost-finish-listener", daemon=True
        )
        self._thread.start()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    @contextmanager
    def watch(self, message_id: str) -> Iterator[Watch]:
        """Watch ``message_id`` while the block runs (entered before the first read)."""
        watch = Watch(self)
        with self._lock:
            self._watches.setdefault(message_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                waiting = self._watches.get(message_id)
                if waiting is not None:
                    waiting.discard(watch)
                    if not waiting:
                        del self._watches[message_id]

    def close(self) -> None:
        """Stop listening (the thread ends at its next wake-up, within half a second)."""
        self._closed = True

    def _wake(self, message_id: str | None) -> None:
        with self._lock:
            if message_id is None:
                woken = [w for ws in self._watches.values() for w in ws]
            else:
                woken = list(self._watches.get(message_id, ()))
        for watch in woken:
            watch.wake()

    def _run(self) -> None:
        # Loaded here: a SQLite user never pays for the PostgreSQL driver.
        import psycopg  # noqa: PLC0415

        pause = 0.1
        while not self._closed:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    pause = 0.1
                    self._wake(None)  # anything that finished while we were not listening
                    while not self._closed:
                        for note in conn.notifies(timeout=0.5):
                            self._wake(note.payload)
            except psycopg.Error as error:
                # The waiters poll meanwhile; never a password in the log (no conninfo).
                if not self._closed:
                    log.warning("reply notifications paused, retrying: %s", type(error).__name__)
            finally:
                self._listening.clear()
                self._wake(None)
            if not self._closed:
                time.sleep(pause)
                pause = min(pause * 2, 5.0)


_watchers: dict[tuple[int, str], FinishWatcher] = {}
_lock = threading.Lock()


def finish_watcher(engine: Engine) -> FinishWatcher | None:
    """This process's watcher for ``engine``'s database; None where it has no channel."""
    if engine.dialect.name != "postgresql":
        return None
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    key = (os.getpid(), conninfo)  # a forked child starts its own thread
    with _lock:
        watcher = _watchers.get(key)
        if watcher is None:
            watcher = _watchers[key] = FinishWatcher(conninfo)
        return watcher


@contextmanager
def watch_finished(engine: Engine, message_id: str) -> Iterator[Watch]:
    """Watch ``message_id`` on ``engine``'s store while the block runs."""
    watcher = finish_watcher(engine)
    if watcher is None:
        yield Watch(None)
        return
    with watcher.watch(message_id) as watch:
        yield watch


def close_watchers() -> None:
    """Stop this process's listeners (with its engines: the store may be going)."""
    pid = os.getpid()
    with _lock:
        for key in [k for k in _watchers if k[0] == pid]:
            _watchers.pop(key).close()
