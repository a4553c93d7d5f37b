"""Publishing a delivery: the ``agentpost.deliver`` task for one stored message, by name.

No agent code is needed to publish: the task goes by name to the receiver's inbox.
The task id is the message id, so every copy of a message's task (retries, sweeper
republishes) shows up under one id in Flower and the result backend.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from celery.utils.nodenames import anon_nodename
from kombu import Queue

import storage
from wire.brokers import profile_for
from wire.encoding import dump_json, task_body, task_kwargs
from wire.queues import DELIVER_TASK, inbox_queue

if TYPE_CHECKING:
    from wire.app import AgentpostCelery

__all__ = ["DeliveryTask", "publish_deliveries", "publish_delivery", "summary", "summary_of"]


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    """One message's task to publish: its id, inbox, priority and encoded envelope."""

    message_id: str
    receiver: str
    priority: int
    envelope: str  # the stored JSON
    argsrepr: str | None = None  # what Flower shows; None: ``summary`` of the envelope
    countdown_s: float = 0.0  # a retry waiting for its time
    created_at: float | None = None  # the row's: its claim reads its week's partition alone

    @classmethod
    def of(cls, row: storage.Republish, *, now: float) -> DeliveryTask:
        """The task of a stored row; a retry due later keeps its remaining countdown."""
        countdown = max(0.0, row.due_at - now) if row.due_at is not None else 0.0
        return cls(
            row.message_id,
            row.receiver,
            row.priority,
            row.envelope,
            countdown_s=countdown,
            created_at=row.created_at,
        )


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
    if argsrepr is None and not isinstance(envelope, str):
        argsrepr = summary(envelope)
    encoded = envelope if isinstance(envelope, str) else dump_json(envelope)
    publish_deliveries(app, [DeliveryTask(message_id, receiver, priority, encoded, argsrepr)])


def publish_deliveries(app: AgentpostCelery, tasks: Sequence[DeliveryTask]) -> None:
    """Publish the tasks of messages; several are batched where the transport can
    (kombu's ``Producer.batch``: one Redis pipeline per 1,000 commands)."""
    if not tasks:
        return
    with (
        app.producer_or_acquire() as producer,
        producer.connection._reraise_as_library_errors(),
    ):
        if len(tasks) == 1:  # the common single send: no batch to set up
            _send(app, producer, tasks[0], declare=[_bound(producer, tasks[0].receiver, app)])
            return
        # On Redis a batch is one pipeline, sent when it ends: a publish in it cannot
        # fail, so kombu's per-message retry wrapper only costs (~8 % of a send_many).
        # Where batches are not supported each publish is immediate and keeps it.
        pipelined = profile_for(app.settings.broker).name == "redis"
        with producer.batch():
            # Each inbox declared once per batch.
            for receiver in sorted({task.receiver for task in tasks}):
                producer.maybe_declare(_bound(producer, receiver, app))
            for task in tasks:
                _send(app, producer, task, declare=[], retry=False if pipelined else None)


def _send(
    app: AgentpostCelery,
    producer: Any,
    task: DeliveryTask,
    declare: list[Any] | None = None,
    *,
    retry: bool | None = None,
) -> None:
    # Celery's send_task without its argument encoding: the body is built around the
    # encoded envelope; the message headers, routing and task-sent event are Celery's.
    message = app.amqp.create_task_message(
        task.message_id,
        DELIVER_TASK,
        (),
        {},
        countdown=task.countdown_s or None,
        reply_to=app.thread_oid,
        origin=_origin(os.getpid()),
        create_sent_event=app.conf.task_send_sent_event,
        argsrepr=task.argsrepr or summary(json.loads(task.envelope)),
        kwargsrepr=task_kwargs(task.created_at),
        # None, as send_task by name sends it: the worker applies the task's own
        # ignore_result (False here would store every duplicate's SUCCESS over a FAILURE).
        ignore_result=None,
    )
    app.amqp.send_task_message(
        producer,
        DELIVER_TASK,
        message._replace(body=task_body(task.envelope, task.created_at)),
        queue=inbox_queue(task.receiver, app.settings),
        priority=profile_for(app.settings.broker).message_priority(task.priority),
        content_type="application/json",
        content_encoding="utf-8",
        declare=declare,  # None: the inbox, as Celery declares a task's queue
        retry=retry,
    )


# Each inbox bound once to each channel. kombu binds a copy of an unbound queue on every
# declaration, before its cache of declared queues says there is nothing to do (12 % of
# a single publish). A bound one it declares the same way: again after a reconnect
# (the cache is cleared), and revived onto the new channel when a publish is retried.
_BOUND: weakref.WeakKeyDictionary[Any, dict[str, Queue]] = weakref.WeakKeyDictionary()


def _bound(producer: Any, receiver: str, app: AgentpostCelery) -> Queue:
    channel = producer.channel
    queues = _BOUND.setdefault(channel, {})
    queue = queues.get(receiver)
    if queue is None:
        queue = queues[receiver] = inbox_queue(receiver, app.settings).bind(channel)
    return queue


@cache
def _origin(pid: int) -> str:
    # Celery's default origin (``gen<pid>@<host>``), made once a process: Celery asks
    # the system for the host name on every message (8 % of a batch's publish).
    return anon_nodename()


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
