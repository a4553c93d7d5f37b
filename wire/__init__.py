"""The wire layer: what every agentpost process shares to put a message on the broker.

Below both the public API (``messaging``) and the worker (``worker``), above the store:
the settings and the error tree, task and queue names and declarations, broker
profiles and the embedded transport, the configured Celery app, publishing a
delivery, dead-letter publishing, inbox inspection, and the one boundary where store
and broker errors become agentpost's.

The names load on first use (``wire/lazy.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wire.lazy import lazy_attributes

if TYPE_CHECKING:
    from wire.app import WORKER_MODULES, AgentpostCelery, create_app
    from wire.boundary import broker_errors, store_errors
    from wire.brokers import TransportProfile, profile_for
    from wire.deadletter import DeadLetter, dead_letter
    from wire.encoding import dump_json
    from wire.inbox import consumers_by_queue, inbox_depths
    from wire.publish import publish_delivery
    from wire.queues import (
        DELIVER_TASK,
        SWEEP_TASK,
        dead_letter_exchange,
        dead_letter_queue,
        inbox_name,
        inbox_queue,
        sweeper_queue,
    )
    from wire.settings import Settings

__all__ = [
    "DELIVER_TASK",
    "SWEEP_TASK",
    "WORKER_MODULES",
    "AgentpostCelery",
    "DeadLetter",
    "Settings",
    "TransportProfile",
    "broker_errors",
    "consumers_by_queue",
    "create_app",
    "dead_letter",
    "dead_letter_exchange",
    "dead_letter_queue",
    "dump_json",
    "inbox_depths",
    "inbox_name",
    "inbox_queue",
    "profile_for",
    "publish_delivery",
    "store_errors",
    "sweeper_queue",
]

# Where each public name lives.
_HOME = {
    "AgentpostCelery": "wire.app",
    "broker_errors": "wire.boundary",
    "consumers_by_queue": "wire.inbox",
    "create_app": "wire.app",
    "dead_letter": "wire.deadletter",
    "dead_letter_exchange": "wire.queues",
    "dead_letter_queue": "wire.queues",
    "DeadLetter": "wire.deadletter",
    "DELIVER_TASK": "wire.queues",
    "dump_json": "wire.encoding",
    "inbox_depths": "wire.inbox",
    "inbox_name": "wire.queues",
    "inbox_queue": "wire.queues",
    "profile_for": "wire.brokers",
    "publish_delivery": "wire.publish",
    "Settings": "wire.settings",
    "store_errors": "wire.boundary",
    "SWEEP_TASK": "wire.queues",
    "sweeper_queue": "wire.queues",
    "TransportProfile": "wire.brokers",
    "WORKER_MODULES": "wire.app",
}


__getattr__ = lazy_attributes(__name__, _HOME, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
