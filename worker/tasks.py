"""The Celery tasks, thin: take the task's arguments, call the plain function, answer.

Celery imports this module by name in worker processes only (``wire.app.WORKER_MODULES``
is the app's ``include``): a process that only sends never loads it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from messaging.sending import Sender
from wire.app import AgentpostCelery
from wire.errors import DeadLettered
from wire.publish import summary
from wire.queues import DELIVER_TASK, SWEEP_TASK
from worker.deliver import run_delivery
from worker.sweeper import sweep

__all__ = ["DeliverTask", "deliver", "sweep_task"]


def _agentpost_app(task: Task[Any, Any]) -> AgentpostCelery:
    app = task.app
    if not isinstance(app, AgentpostCelery):
        raise TypeError(f"{task.name} runs on an agentpost app, not {type(app).__name__}")
    return app


class DeliverTask(Task[Any, Any]):
    """``agentpost.deliver``'s class: it holds the process's sending core for ``ctx.send``.

    Celery keeps one instance of a task per app and process (its documented place for
    per-process state); the core is made on first use, in the process that runs it.
    """

    _core: Sender | None = None
    _core_pid: int | None = None
    # Every message is checked before Celery's own strategy sees it (worker/strategy.py).
    Strategy = "worker.strategy:guarded"

    @property
    def core(self) -> Sender:
        """The sending core of this worker process."""
        if self._core is None or self._core_pid != os.getpid():
            app = _agentpost_app(self)
            self._core, self._core_pid = Sender(app.settings, app=app), os.getpid()
        return self._core


class _Retrying(Exception):
    """The handler error, as Celery shows it on a RETRY."""


# The store unreachable (or a pooled connection found dead) is not the handler's
# fault: Celery retries the whole delivery with backoff, nothing counts an attempt.
@shared_task(
    name=DELIVER_TASK,
    bind=True,
    base=DeliverTask,
    max_retries=None,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
)
def deliver(self: DeliverTask, envelope: Any, created_at: float | None = None) -> dict[str, Any]:
    """Deliver one envelope; a retry is Celery's, a dead letter ends in FAILURE.

    ``created_at``: the row's, which tasks published since migration 0014 carry.
    """
    outcome = run_delivery(self.core, envelope, created_at)
    if outcome.kind == "retry":
        raise self.retry(  # type: ignore[call-arg]  # celery-types omits **options
            countdown=outcome.countdown_s,
            max_retries=None,
            exc=_Retrying(outcome.error),
            # Flower shows the retry's arguments: keep the summary, not the payload.
            argsrepr=summary(envelope) if isinstance(envelope, dict) else None,
        )
    if outcome.kind == "dead":
        raise DeadLettered(
            f"message {outcome.message_id} dead ({outcome.reason}) after "
            f"{outcome.attempt} attempt(s): {outcome.error}"
        )
    return {"status": outcome.kind, "message_id": outcome.message_id, "attempt": outcome.attempt}


@shared_task(name=SWEEP_TASK, bind=True, ignore_result=True)
def sweep_task(self: Task[Any, Any]) -> dict[str, int]:
    """One sweep (scheduled by beat)."""
    report = sweep(_agentpost_app(self))
    return {"recovered": report.recovered, "republished": report.republished, "lost": report.lost}
