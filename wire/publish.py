"""Publishing a delivery: the ``agentpost.deliver`` task for one stored message, by name.

No agent code is needed to publish: the task goes by name to the receiver's inbox.
The task id is the message id, so every copy of a message's task (retries, sweeper
republishes) shows up under one id in Flower and the result backend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wire.brokers import profile_for
from wire.encoding import dump_json, task_body
from wire.queues import DELIVER_TASK, inbox_queue

if TYPE_CHECKING:
    from wire.app import AgentpostCelery

__all__ = ["publish_delivery", "summary", "summary_of"]


def publish_delivery(
    app: AgentpostCelery,
    *,
    message_id: str,
    receiver: str,
    priority: int,
    envelope: Mapping[str, Any] | str,
    argsrepr: str | None = None,
) -> None:
    """Publish ``agentpost.deliver`` for one message.

    Args:
        envelope: the wire form, as a mapping or already encoded (the stored JSON).
        argsrepr: what Flower shows for the task (default: ``summary`` of the envelope).
    """
    encoded = envelope if isinstance(envelope, str) else dump_json(envelope)
    if argsrepr is None:
        argsrepr = summary(json.loads(encoded) if isinstance(envelope, str) else envelope)
    # Celery's send_task without its argument encoding: the body is built around the
    # encoded envelope; the message headers, routing and task-sent event are Celery's.
    message = app.amqp.create_task_message(
        message_id,
        DELIVER_TASK,
        (),
        {},
        reply_to=app.thread_oid,
        create_sent_event=app.conf.task_send_sent_event,
        argsrepr=argsrepr,
        kwargsrepr="{}",
    )
    with (
        app.producer_or_acquire() as producer,
        producer.connection._reraise_as_library_errors(),
    ):
        app.amqp.send_task_message(
            producer,
            DELIVER_TASK,
            message._replace(body=task_body(encoded)),
            queue=inbox_queue(receiver, app.settings),
            priority=profile_for(app.settings.broker).message_priority(priority),
            content_type="application/json",
            content_encoding="utf-8",
        )


def summary(body: Mapping[str, Any]) -> str:
    """What Flower shows instead of a possibly large payload."""
    return summary_of(
        sender=body.get("sender"),
        receiver=body.get("receiver"),
        correlation_id=body.get("correlation_id"),
        idempotency_key=body.get("idempotency_key"),
        payload_json=json.dumps(
            body.get("payload"), separators=(",", ":"), ensure_ascii=False, default=str
        ),
    )


def summary_of(
    *,
    sender: object,
    receiver: object,
    correlation_id: object,
    idempotency_key: object,
    payload_json: str,
) -> str:
    """``summary`` from the envelope's fields and its encoded payload."""
    payload = payload_json if len(payload_json) <= 80 else payload_json[:77] + "..."
    return f"{sender} → {receiver} · corr={correlation_id} · key={idempotency_key} · {payload}"
