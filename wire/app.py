"""The Celery application of agentpost and its configuration.

One function builds it from ``Settings``; a sending process uses it to publish (by
task name) and a worker to consume. The task and signal modules are named here, not
imported: Celery imports them when a worker starts (``include``), so a process that
only sends never loads them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from wire.brokers import profile_for
from wire.errors import ConfigurationError
from wire.queues import SWEEP_TASK, AgentpostAMQP, sweeper_queue
from wire.settings import Settings

__all__ = [
    "SOFT_TIME_LIMIT_SHARE",
    "WORKER_MODULES",
    "AgentpostCelery",
    "create_app",
    "final_backend_url",
]

# Imported by Celery in worker processes only (the deliver and sweep tasks, the hooks).
WORKER_MODULES = ("worker.tasks", "worker.signals")

# Celery's backends with a finished state kept final (``wire.backends``), named not
# imported: Celery loads the class when the backend is first used.
_FINAL_BACKENDS = {
    "db+": "wire.backends:FinalDatabaseBackend+",
    "redis": "wire.backends:FinalRedisBackend+",
}


def final_backend_url(url: str) -> str:
    """``url`` naming its backend's final-state class (``module:Class+url``); others unchanged."""
    if url.startswith("db+"):
        return _FINAL_BACKENDS["db+"] + url.removeprefix("db+")
    if url.startswith(("redis://", "rediss://")):
        return _FINAL_BACKENDS["redis"] + url
    return url


class AgentpostCelery(Celery):
    """A Celery app that carries the agentpost settings it was built from."""

    settings: Settings

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__("agentpost", amqp=AgentpostAMQP, include=list(WORKER_MODULES), **kwargs)


# Of the lease: a handler still running then has timed out. The rest of the lease is
# the time to record that before a sweeper would take the attempt for a lost worker.
SOFT_TIME_LIMIT_SHARE = 0.8


def create_app(settings: Settings | None = None) -> AgentpostCelery:
    """Build the Celery app for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    try:
        # The beat schedule, the embedded broker: the owner's only.
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"AGENTPOST_HOME {settings.home} cannot be created ({exc.strerror}): "
            "point it at a folder this process can write"
        ) from exc
    profile = profile_for(settings.broker)
    app = AgentpostCelery(settings)
    app.conf.update(
        broker_url=settings.broker,
        broker_transport=profile.transport_class,
        broker_transport_options=profile.transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_backend=final_backend_url(settings.results),
        # JSON only: a pickled body is refused by the worker, never deserialised.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Results live in the store; the backend keeps only failures (Flower, inspection).
        task_ignore_result=True,
        task_store_errors_even_if_ignored=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Where the transport has no event loop (the embedded broker), an ETA timer
        # thread sleeps up to this long before it sees a sooner entry: Celery's 1 s made
        # held and retried deliveries start up to 1 s late, then together.
        worker_timer_precision=0.05,
        # Off by default, as in Celery: events are three publishes a delivery and one a
        # send. A running Flower turns the workers' task events on every 5 s.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        task_default_queue=f"{settings.namespace}agentpost.default",
        task_queues=(sweeper_queue(settings),),
        # A handler must not outlive its lease, or a sweeper could start a second copy:
        # at 80 % of it the handler is interrupted (its attempt recorded timed-out and
        # retried), at the lease its process is killed (prefork; threads have neither).
        task_soft_time_limit=settings.lease_s * SOFT_TIME_LIMIT_SHARE,
        task_time_limit=settings.lease_s,
        timezone="UTC",
        enable_utc=True,
        imports=list(settings.agent_modules),
        beat_schedule={
            "agentpost-sweep": {
                "task": SWEEP_TASK,
                "schedule": timedelta(seconds=settings.sweep_interval_s),
                "options": {
                    "queue": sweeper_queue(settings),
                    "expires": settings.sweep_interval_s,
                },
            }
        },
        beat_schedule_filename=str(settings.home / "beat-schedule"),
        beat_max_loop_interval=max(1.0, min(settings.sweep_interval_s, 30.0)),
    )
    return app
