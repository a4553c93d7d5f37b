"""One event loop per worker process, shared by every async handler.

``asyncio.run`` per delivery made a new loop for each message: nothing was shared
(no connection pool of an async client lives past one message) and nothing ran
concurrently. Here the loop runs in a thread of its own; a delivery hands it the
handler's coroutine and waits for the result. With the threads pool each of its
threads waits on one coroutine, so ``-P threads -c 200`` keeps 200 handlers in
flight on one loop; with prefork each child has its own loop.

The coroutine runs in a copy of the caller's context, so the delivery's log fields
and its tracing span are the handler's too.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["HandlerTimedOut", "run_coroutine"]


class HandlerTimedOut(Exception):
    """A handler ran past its agent's ``time_limit_s`` and was stopped."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"timed-out: the handler ran past its time_limit_s ({limit_s:g} s)")
        self.limit_s = limit_s


_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
# Coroutines handed over and not yet started, and whether a start is already queued
# on the loop: a burst of deliveries wakes the loop once, not once a delivery.
_pending: collections.deque[_Call] = collections.deque()
_start_queued = False


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid, _pending, _start_queued
    with _lock:
        # A forked pool child inherits the variable but not the thread: start its own.
        if _loop is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="agentpost-event-loop", daemon=True
            ).start()
            _loop, _loop_pid = loop, os.getpid()
            _pending, _start_queued = collections.deque(), False
        return _loop


class _Call:
    """One coroutine handed to the loop, and its outcome for the waiting thread."""

    __slots__ = ("context", "coroutine", "error", "result", "task", "waiter")

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine
        # A copy of the caller's context: the delivery's log fields and span.
        self.context = contextvars.copy_context()
        # Held until the coroutine ends: a bare lock is the cheapest wait (a Future
        # costs a condition and its waiter list).
        self.waiter = threading.Lock()
        self.waiter.acquire()
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.error: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.coroutine, context=self.context)
        self.task.add_done_callback(self._finished)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.error = concurrent.futures.CancelledError()
        elif (error := task.exception()) is not None:
            self.error = error
        else:
            self.result = task.result()
        self.waiter.release()


def _start_pending() -> None:
    """On the loop: start every coroutine handed over since the last start."""
    global _start_queued
    with _lock:
        _start_queued = False  # one handed over from now on queues another start
    loop = asyncio.get_running_loop()
    while _pending:
        _pending.popleft().start(loop)


def run_coroutine(coroutine: Coroutine[Any, Any, Any], *, timeout_s: float | None = None) -> Any:
    """Run ``coroutine`` on this process's shared loop; its result, or its exception.

    Raises:
        HandlerTimedOut: it ran past ``timeout_s`` (it is cancelled).
    """
    global _start_queued
    loop = _shared_loop()
    call = _Call(coroutine)
    with _lock:
        _pending.append(call)
        wake, _start_queued = not _start_queued, True
    if wake:
        loop.call_soon_threadsafe(_start_pending)
    limit_s = -1.0 if timeout_s is None else timeout_s  # -1: no limit
    try:
        ended = call.waiter.acquire(timeout=limit_s)
    except BaseException:
        # Interrupted while waiting (the soft time limit): the coroutine stops too, rather
        # than running on with nobody to record it (a no-op if it had ended). The cancel
        # is queued after the start that takes this call: the loop runs them in order.
        loop.call_soon_threadsafe(call.cancel)
        raise
    if not ended:
        loop.call_soon_threadsafe(call.cancel)
        raise HandlerTimedOut(limit_s)  # only a limit ends a wait unfinished
    if call.error is not None:
        raise call.error  # its own exception (its own TimeoutError included)
    return call.result
