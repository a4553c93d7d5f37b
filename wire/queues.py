"""Task names, queues and exchanges: what every process declares the same way.

Every inbox is declared with the same arguments by every process (client, worker,
sweeper): on RabbitMQ a queue re-declared with other arguments fails with
PRECONDITION_FAILED, so Celery's "create missing queue" path is routed through
``inbox_queue`` as well.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.app.amqp import AMQP, Queues
from kombu import Exchange, Queue

from wire.brokers import profile_for
from wire.settings import Settings

__all__ = [
    "DELIVER_TASK",
    "SWEEP_TASK",
    "AgentpostAMQP",
    "dead_letter_exchange",
    "dead_letter_queue",
    "inbox_name",
    "inbox_queue",
    "sweeper_queue",
]

DELIVER_TASK = "agentpost.deliver"
SWEEP_TASK = "agentpost.sweep"


def inbox_name(agent: str, settings: Settings) -> str:
    """The queue of one agent: ``agent.<name>`` (after the namespace prefix)."""
    return f"{settings.namespace}agent.{agent}"


def _exchange(namespace: str) -> Exchange:
    return Exchange(f"{namespace}agentpost", type="direct", durable=True)


def inbox_queue(agent_or_queue: str, settings: Settings) -> Queue:
    """The declared form of an inbox (accepts the agent name or the queue name)."""
    prefix = inbox_name("", settings)
    name = (
        agent_or_queue
        if agent_or_queue.startswith(prefix)
        else inbox_name(agent_or_queue, settings)
    )
    return _inbox_queue(name, settings.namespace, settings.broker)


@functools.lru_cache(maxsize=4096)
def _inbox_queue(name: str, namespace: str, broker: str) -> Queue:
    # Made once per inbox, not once per publish: kombu binds a copy to each channel.
    return Queue(
        name,
        _exchange(namespace),
        routing_key=name,
        durable=True,
        queue_arguments=profile_for(broker).queue_arguments(namespace),
    )


def sweeper_queue(settings: Settings) -> Queue:
    """The queue the sweeper task runs from (every ``agentpost worker`` consumes it)."""
    name = f"{settings.namespace}agentpost.sweeper"
    return Queue(name, _exchange(settings.namespace), routing_key=name, durable=True)


def dead_letter_exchange(settings: Settings) -> Exchange:
    """``agentpost.dlx``: where dead messages are published."""
    return Exchange(f"{settings.namespace}agentpost.dlx", type="direct", durable=True)


def dead_letter_queue(settings: Settings) -> Queue:
    """``agentpost.dead_letter``: bound to the DLX, kept for review."""
    name = f"{settings.namespace}agentpost.dead_letter"
    return Queue(name, dead_letter_exchange(settings), routing_key=name, durable=True)


class _InboxQueues(Queues):
    """Celery's queue map, creating missing ``agent.*`` queues with inbox arguments."""

    agentpost_settings: Settings | None = None

    def new_missing(self, name: str) -> Queue:
        settings = self.agentpost_settings
        if settings is not None and name.startswith(inbox_name("", settings)):
            return inbox_queue(name, settings)
        return super().new_missing(name)


class AgentpostAMQP(AMQP):
    """Celery's AMQP helper with inbox-aware missing queues."""

    queues_cls = _InboxQueues

    def Queues(self, queues: Any, *args: Any, **kwargs: Any) -> _InboxQueues:  # noqa: N802
        result = super().Queues(queues, *args, **kwargs)
        assert isinstance(result, _InboxQueues)
        result.agentpost_settings = getattr(self.app, "settings", None)
        return result
