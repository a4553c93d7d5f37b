"""Celery signal hooks: register served agents, declare the DLX, reset pools after fork,
write pending completions before a pool process exits, keep the event loop's timers lean.

Celery imports this module by name when a worker starts (the app's ``include``); the
hooks are connected for that worker's app only, when it initialises.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

import storage
from messaging.agents import registered_agents
from wire.app import AgentpostCelery
from wire.queues import dead_letter_queue, inbox_name
from worker import completions, logs, timers

__all__ = ["connect", "register_served_agents"]

log = logging.getLogger("agentpost.worker")


def register_served_agents(app: AgentpostCelery, queues: set[str]) -> list[str]:
    """Record in the store every imported agent whose inbox this worker consumes."""
    settings = app.settings
    specs = registered_agents()
    served = [
        (name, inbox_name(name, settings))
        for name in sorted(specs)
        if inbox_name(name, settings) in queues
    ]
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)
    owned = {table.key: table for name, _ in served for table in specs[name].tables}
    if made := storage.create_owned_tables(engine, list(owned.values())):
        log.info("created the agents' own tables: %s", ", ".join(made))
    limits = {name: specs[name].max_backlog for name, _ in served}
    schemas = {name: specs[name].schemas() for name, _ in served}
    flow = {name: specs[name].flow() for name, _ in served}
    storage.register_agents(
        engine,
        served,
        kind="handler",
        now=time.time(),
        max_backlog=limits,
        schemas=schemas,
        flow=flow,
    )
    return [name for name, _ in served]


def connect(app: AgentpostCelery) -> None:
    """Connect this app's hooks (they ignore workers of other apps)."""

    def on_ready(sender: Any = None, **_: Any) -> None:
        if sender is None or sender.app is not app:
            return
        if getattr(sender, "hub", None) is not None:
            timers.keep_compact(sender.hub)
        queues = set(app.amqp.queues.consume_from or app.amqp.queues)
        names = register_served_agents(app, queues)
        with app.connection_for_write() as conn:
            # Declared up front so that broker-side dead-lettering (RabbitMQ's
            # x-dead-letter-exchange) always has somewhere to go.
            dead_letter_queue(app.settings)(conn.default_channel).declare()
        log.info("agentpost worker ready, serving agents: %s", ", ".join(names) or "(none)")

    def on_process_init(**_: Any) -> None:
        # Pool children must not reuse connections opened before the fork.
        storage.dispose_engines()

    def on_process_shutdown(**_: Any) -> None:
        # A prefork child ends with os._exit, without atexit: write what it delivered.
        completions.flush()

    def on_logging(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            logs.configure_handlers(logger, app.settings.log_format)
        if app.settings.log_format == "json":
            logs.json_only()

    signals.after_setup_logger.connect(on_logging, weak=False)
    signals.after_setup_task_logger.connect(on_logging, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)


def _on_worker_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    # Sent before the worker sets up logging and forks its pool: hooks connected now
    # see every one of those signals.
    app = getattr(instance, "app", None)
    if isinstance(app, AgentpostCelery):
        connect(app)


signals.celeryd_init.connect(_on_worker_init, weak=False)
