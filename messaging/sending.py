"""Sending: accept a message into the store, then publish its delivery task.

A message is accepted once its row is committed; ``send`` returns then, and the
publish follows from a background thread (``messaging/outbox.py``; ``close`` waits
for it). That publish can be lost (broker down, process killed) and the sweeper will
publish it. A process
using the client never imports agent code: it publishes ``agentpost.deliver`` by
name and learns the agent names from the store.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, overload

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

import storage
from messaging.envelope import Delivery, Envelope, Priority
from messaging.outbox import Background, HandedMarks
from messaging.results import SendResult
from messaging.schemas import PayloadSchemas
from messaging.tracing import current_context
from wire.boundary import broker_errors, require_store, store_errors
from wire.errors import BrokerUnavailable, InboxFull, InvalidEnvelope, UnknownAgent
from wire.settings import Settings

if TYPE_CHECKING:
    from wire.app import AgentpostCelery
    from wire.publish import DeliveryTask

# wire.app and wire.publish (Celery, kombu) are imported where they are used: a process
# that only reads the store (the CLI's inspecting commands) never loads them.

__all__ = ["Sender"]

log = logging.getLogger("agentpost.client")

# How long a sender trusts its copy of the registry: a worker that starts with a new
# max_backlog for an agent is seen by every sender within this.
_REGISTRY_TTL_S = 5.0


class Sender:
    """Accepts messages into the store and publishes their delivery tasks.

    The sending core: ``Client`` adds inspection, mailboxes and request/reply on top,
    and a handler's ``ctx.send`` is backed by the worker's ``Sender``. It holds the
    process's handles on the deployment: the settings, the store's engine and the
    Celery app it publishes with.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        database_url: str | None = None,
        app: AgentpostCelery | None = None,
        create_store: bool = True,
    ) -> None:
        overrides = {
            key: value
            for key, value in (("broker_url", broker_url), ("database_url", database_url))
            if value is not None
        }
        base = settings or (app.settings if app is not None else None)
        if base is None:
            base = Settings(**overrides)
        elif overrides:
            base = Settings(**{**base.model_dump(), **overrides})
        self.settings = base
        self._app = app
        self._known: dict[str, str] = {}  # agent name -> kind
        self._max_backlog: dict[str, int] = {}  # agent name -> its limit, where it has one
        self._schemas = PayloadSchemas()  # typed agents' payload schemas, from the store
        self._known_at = float("-inf")
        self._handed = HandedMarks(lambda: self.engine)
        # The publishes of committed rows, off the caller's thread (messaging/outbox.py).
        self._outbox: Background[DeliveryTask] = Background(
            self._publish, name="agentpost-publish", linger_s=0
        )
        with self._store():
            if create_store:
                storage.create_schema(self.engine)
            else:
                require_store(self.settings.database)

    @property
    def engine(self) -> Engine:
        """The store's engine (one per process and database)."""
        return storage.engine_for(self.settings.database)

    @property
    def app(self) -> AgentpostCelery:
        """The Celery app this client publishes with (built lazily)."""
        if self._app is None:
            from wire.app import create_app  # noqa: PLC0415  (see the imports)

            self._app = create_app(self.settings)
        return self._app

    @overload
    def send(self, envelope: Envelope, /, *, wait_s: float | None = None) -> SendResult: ...

    @overload
    def send(
        self,
        receiver: str,
        payload: Any = None,
        /,
        *,
        sender: str,
        correlation_id: str | None = None,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = "normal",
        ttl_s: float | None = None,
        expires_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        delivery: Delivery = "at-least-once",
        wait_s: float | None = None,
    ) -> SendResult: ...

    def send(
        self,
        receiver: str | Envelope,
        payload: Any = None,
        /,
        *,
        sender: str | None = None,
        correlation_id: str | None = None,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = "normal",
        ttl_s: float | None = None,
        expires_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        delivery: Delivery = "at-least-once",
        wait_s: float | None = None,
    ) -> SendResult:
        """Send one message; a repeated idempotency key returns the first message.

        ``delivery``: ``at-least-once`` (stored, retried, dead-lettered),
        ``best-effort`` (published without a store row, no retries, no idempotency),
        ``exactly-once`` (the handler's ``ctx.session`` writes commit with the completion).

        Raises:
            InvalidEnvelope: bad names, a payload that is not JSON or too large.
            UnknownAgent: a receiver that no agent has registered.
            InboxFull: the receiver's backlog is at its ``max_backlog`` (and stayed
                there for ``wait_s``).
            StoreUnavailable: the database did not accept the message.
        """
        if isinstance(receiver, Envelope):
            envelope = receiver
        else:
            if sender is None:
                raise InvalidEnvelope("sender is required: send(receiver, payload, sender=...)")
            envelope = Envelope.build(
                receiver,
                payload,
                sender=sender,
                correlation_id=correlation_id,
                parent_id=parent_id,
                idempotency_key=idempotency_key,
                priority=priority,
                ttl_s=ttl_s,
                expires_at=expires_at,
                metadata=metadata,
                delivery=delivery,
            )
        return self.send_many([envelope], wait_s=wait_s)[0]

    def send_many(
        self, envelopes: Sequence[Envelope], *, wait_s: float | None = None
    ) -> list[SendResult]:
        """Send several messages in one store transaction (all accepted, or none).

        Every envelope is checked before anything is stored, so one bad message
        refuses the whole batch; so does a receiver without room for its share
        (``InboxFull``, after waiting up to ``wait_s`` for room).
        """
        context = current_context()  # one caller, one moment: the same for the batch
        checked = [self._check(envelope, context) for envelope in envelopes]
        self._make_room(checked, wait_s)
        if any(env.delivery == "best-effort" for env, _ in checked):
            if len(checked) != 1:
                raise InvalidEnvelope("send best-effort messages one at a time, not in a batch")
            return [self._send_best_effort(*checked[0])]
        now = time.time()  # one transaction: one moment for the batch
        rows = [
            storage.NewMessage(
                id=str(env.id),
                idempotency_key=env.idempotency_key,
                correlation_id=env.correlation_id,
                parent_id=str(env.parent_id) if env.parent_id else None,
                sender=env.sender,
                receiver=env.receiver,
                priority=env.priority,
                envelope=wire,
                created_at=now,
                expires_at=env.expires_at.timestamp() if env.expires_at else None,
            )
            for env, wire in checked
        ]
        with self._store():
            try:
                inserted = storage.insert_messages(self.engine, rows)
            except IntegrityError as exc:
                raise InvalidEnvelope(
                    "a message with one of these ids exists already under another "
                    "idempotency key: build a new Envelope for each message"
                ) from exc
        from wire.publish import DeliveryTask  # noqa: PLC0415  (see the imports)

        # Mailbox agents pull from the store: nothing to publish for them.
        tasks = [
            DeliveryTask(row.id, env.receiver, env.priority, wire, _summary(env), created_at=now)
            for (env, wire), row, outcome in zip(checked, rows, inserted, strict=True)
            if not outcome.duplicate and self._known.get(env.receiver) != "mailbox"
        ]
        if tasks:
            self._outbox.add(tasks)
        return [
            SendResult(message_id=r.message_id, duplicate=r.duplicate, status=r.status)
            for r in inserted
        ]

    def _send_best_effort(self, env: Envelope, wire: str) -> SendResult:
        """Published without a row: if the broker does not take it, the caller must know.

        Raises:
            BrokerUnavailable: the broker did not accept the message (nothing has it).
        """
        if self._known.get(env.receiver) == "mailbox":
            raise InvalidEnvelope(
                f"best-effort messages go straight to a worker; {env.receiver!r} is a "
                "mailbox agent: send it at-least-once"
            )
        from wire.publish import DeliveryTask, publish_deliveries  # noqa: PLC0415

        task = DeliveryTask(str(env.id), env.receiver, env.priority, wire, _summary(env))
        with broker_errors(self.settings.broker):
            publish_deliveries(self.app, [task])
        return SendResult(message_id=str(env.id), duplicate=False, status="sent")

    def _check(self, envelope: Envelope, context: dict[str, str]) -> tuple[Envelope, str]:
        """The envelope as it will be sent (with the caller's trace ``context`` unless it
        carries one), and its wire JSON (made once, here)."""
        envelope.check_size(self.settings.max_payload_bytes)
        self._require_agent(envelope.receiver)
        self._schemas.check(envelope.receiver, envelope.payload)
        if context and not envelope.trace:
            envelope = envelope.model_copy(update={"trace": context})
        return envelope, envelope.wire_json()

    def _make_room(self, checked: Sequence[tuple[Envelope, str]], wait_s: float | None) -> None:
        """Raise ``InboxFull`` unless each limited receiver has room for its messages.

        The check reads the backlog before the insert: senders racing each other can
        pass a limit by as many messages as they send at once.
        """
        wanted = Counter(env.receiver for env, _ in checked if env.receiver in self._max_backlog)
        deadline = time.monotonic() + (wait_s or 0.0)
        for receiver, count in wanted.items():
            limit = self._max_backlog[receiver]
            while True:
                with self._store():
                    backlog = storage.backlog(self.engine, receiver)
                if backlog + count <= limit:
                    break
                if time.monotonic() >= deadline:
                    raise InboxFull(receiver, backlog=backlog, limit=limit)
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _require_agent(self, name: str) -> None:
        if name in self._known and time.monotonic() - self._known_at < _REGISTRY_TTL_S:
            return
        self._refresh_agents()
        if name not in self._known:
            known = ", ".join(sorted(self._known)) or "none yet: start a worker first"
            raise UnknownAgent(f"unknown agent {name!r} (registered: {known})")

    def _refresh_agents(self) -> list[storage.Agent]:
        with self._store():
            rows = storage.list_agents(self.engine)
        self._known = {a.name: a.kind for a in rows}
        self._max_backlog = {a.name: a.max_backlog for a in rows if a.max_backlog is not None}
        self._schemas.update(rows)
        self._known_at = time.monotonic()
        return rows

    def _publish(self, tasks: Sequence[DeliveryTask]) -> None:
        """Publish the tasks of stored messages; a failure is logged, never raised."""
        from wire.publish import publish_deliveries  # noqa: PLC0415  (see the imports)

        try:
            with broker_errors(self.settings.broker):
                publish_deliveries(self.app, tasks)
            self._handed.add([t.message_id for t in tasks])
        except Exception as exc:
            # Accepted already: the sweeper republishes once the broker is back.
            reason = exc if isinstance(exc, BrokerUnavailable) else f"{type(exc).__name__}: {exc}"
            shown = ", ".join(t.message_id for t in tasks[:3]) + (" …" if len(tasks) > 3 else "")
            log.warning(
                "%d message(s) stored but not published (%s); the sweeper will republish: %s",
                len(tasks),
                reason,
                shown,
            )

    def flush(self) -> None:
        """Publish the tasks of the messages sent so far, and record them handed."""
        self._outbox.flush()
        self._handed.flush()

    def close(self) -> None:
        """Publish what is pending, record it handed; release the broker connections."""
        self.flush()
        if self._app is not None:
            self._app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store(self) -> AbstractContextManager[None]:
        """The store boundary: its failures raised as ``StoreUnavailable``/``SchemaOutdated``."""
        return store_errors(self.settings.database)


def _summary(env: Envelope) -> str:
    from wire.publish import summary_of  # noqa: PLC0415  (see the imports)

    # What Flower shows for the task, from the payload's JSON already made.
    return summary_of(
        sender=env.sender,
        receiver=env.receiver,
        correlation_id=env.correlation_id,
        idempotency_key=env.idempotency_key,
        payload_json=env.payload_json(),
    )
