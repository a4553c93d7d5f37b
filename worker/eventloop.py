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


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        # A forked pool child inherits the variable but not the thread: start its own.
        if _loop is None or _loop_pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="agentpost-event-loop", daemon=True
            ).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def run_coroutine(coroutine: Coroutine[Any, Any, Any], *, timeout_s: float | None = None) -> Any:
    """Run ``coroutine`` on this process's shared loop; its result, or its exception.

    Raises:
        HandlerTimedOut: it ran past ``timeout_s`` (it is cancelled).
    """
    loop = _shared_loop()
    context = contextvars.copy_context()
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def finished(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            done.cancel()
        elif (error := task.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(task.result())

    started: list[asyncio.Task[Any]] = []

    def start() -> None:
        task = loop.create_task(coroutine, context=context)
        task.add_done_callback(finished)
        started.append(task)

    def cancel() -> None:
        for task in started:
            task.cancel()

    loop.call_soon_threadsafe(start)
    try:
        return done.result(timeout=timeout_s)
    except TimeoutError:
        own = done.done()  # read before the cancel below ends the future too
        loop.call_soon_threadsafe(cancel)
        if own or timeout_s is None:
            raise  # the coroutine's own TimeoutError
        raise HandlerTimedOut(timeout_s) from None
    except BaseException:
        # Interrupted while waiting (the soft time limit): the coroutine stops too, rather
        # than running on with nobody to record it (a no-op if it had ended).
        loop.call_soon_threadsafe(cancel)
        raise
