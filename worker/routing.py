"""Queues and exchanges, and publishing a delivery task to an agent's inbox.

Every inbox is declared with the same arguments by every process (client, worker,
sweeper): on RabbitMQ a queue re-declared with other arguments fails with
PRECONDITION_FAILED, so Celery's "create missing queue" path is routed through
``inbox_queue`` as well.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celery.app.amqp import AMQP, Queues
from kombu import Exchange, Queue

from messaging.settings import Settings
from worker.transports import profile_for

if TYPE_CHECKING:
    from worker.app import AgentpostCelery

__all__ = [
    "DELIVER_TASK",
    "SWEEP_TASK",
    "AgentpostAMQP",
    "dead_letter_exchange",
    "dead_letter_queue",
    "inbox_name",
    "inbox_queue",
    "publish_delivery",
    "summary",
    "sweeper_queue",
]

DELIVER_TASK = "agentpost.deliver"
SWEEP_TASK = "agentpost.sweep"


def inbox_name(agent: str, settings: Settings) -> str:
    """The queue of one agent: ``agent.<name>`` (after the namespace prefix)."""
    return f"{settings.namespace}agent.{agent}"


def _exchange(settings: Settings) -> Exchange:
    return Exchange(f"{settings.namespace}agentpost", type="direct", durable=True)


def inbox_queue(agent_or_queue: str, settings: Settings) -> Queue:
    """The declared form of an inbox (accepts the agent name or the queue name)."""
    prefix = inbox_name("", settings)
    name = (
        agent_or_queue
        if agent_or_queue.startswith(prefix)
        else inbox_name(agent_or_queue, settings)
    )
    return Queue(
        name,
        _exchange(settings),
        routing_key=name,
        durable=True,
        queue_arguments=profile_for(settings.broker).queue_arguments(settings),
    )


def sweeper_queue(settings: Settings) -> Queue:
    """The queue the sweeper task runs from (every ``agentpost worker`` consumes it)."""
    name = f"{settings.namespace}agentpost.sweeper"
    return Queue(name, _exchange(settings), routing_key=name, durable=True)


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


def publish_delivery(
    app: AgentpostCelery,
    *,
    message_id: str,
    receiver: str,
    priority: int,
    envelope: dict[str, Any] | str,
) -> None:
    """Publish ``agentpost.deliver`` for one stored message (by task name, no agent code).

    The task id is the message id, so every copy of a message's task (retries,
    sweeper republishes) shows up under one id in Flower and the result backend.
    """
    settings = app.settings
    body = json.loads(envelope) if isinstance(envelope, str) else envelope
    app.send_task(
        DELIVER_TASK,
        args=[body],
        task_id=message_id,
        queue=inbox_queue(receiver, settings),  # type: ignore[arg-type]  # a Queue works too
        priority=profile_for(settings.broker).message_priority(priority),
        argsrepr=summary(body),
    )


def summary(body: dict[str, Any]) -> str:
    """What Flower shows instead of a possibly large payload."""
    payload = json.dumps(body.get("payload"), default=str)
    if len(payload) > 80:
        payload = payload[:77] + "..."
    return (
        f"{body.get('sender')} → {body.get('receiver')} · corr={body.get('correlation_id')} "
        f"· key={body.get('idempotency_key')} · {payload}"
    )
