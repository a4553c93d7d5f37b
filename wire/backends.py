"""Celery's result backends, with a finished task's state kept final.

Celery's ``retry`` publishes the next attempt *before* the trace stores RETRY, so on a
busy worker the next attempt can run, dead-letter and store FAILURE first, and the
late RETRY then writes over it: Flower would list a dead message as retrying. Celery
already ignores writes after a SUCCESS; these classes ignore an unfinished state
written after any finished one (SUCCESS, FAILURE, REVOKED).

The app names them in its backend URL (``wire.app.final_backend_url``: ``module:Class+url``,
which Celery's ``by_url`` splits like ``db+url``), so Flower and ``celery inspect`` load
them too; a process loads this module when it first uses the backend, not before.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.base import BaseBackend
from celery.backends.database import DatabaseBackend
from celery.backends.redis import RedisBackend

__all__ = ["FinalDatabaseBackend", "FinalRedisBackend"]


class _FinishedIsFinal(BaseBackend):
    """Skip storing an unfinished state once a finished one is stored."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # One read, on the rare unfinished write only (a RETRY: results are off).
        if state not in states.READY_STATES and self.get_state(task_id) in states.READY_STATES:
            return result
        # The next class in the MRO: the Celery backend this mixin is put before.
        return super()._store_result(  # type: ignore[misc]  # the stubs omit this hook
            task_id, result, state, traceback=traceback, request=request, **kwargs
        )


class FinalDatabaseBackend(_FinishedIsFinal, DatabaseBackend):
    """Celery's SQLAlchemy backend (``db+``), a finished state kept final."""


class FinalRedisBackend(_FinishedIsFinal, RedisBackend):
    """Celery's Redis backend, a finished state kept final."""
