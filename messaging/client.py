"""The client: accept a message into the store, then publish its delivery task.

A message is accepted once its row is committed; the publish that follows can be
lost (broker down, process killed) and the sweeper will republish it. A process
using the client never imports agent code: it publishes ``agentpost.deliver`` by
name and learns the agent names from the store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

import storage
from messaging.envelope import Delivery, Envelope, Priority, dump_json, validate_agent_name
from messaging.errors import (
    InvalidEnvelope,
    MessageNotFound,
    RequestFailed,
    RequestTimeout,
    StoreUnavailable,
    UnknownAgent,
)
from messaging.mailbox import Mailbox
from messaging.results import AgentInfo, MessageState, Reply, SendResult
from messaging.settings import Settings
from messaging.topics import fan_out, match_subscribers, validate_pattern, validate_topic

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.app import AgentpostCelery

__all__ = ["Client"]

log = logging.getLogger("agentpost.client")


class Client:
    """Send messages to agents and inspect what happened to them.

    Args:
        settings: explicit settings; by default read from ``AGENTPOST_*``.
        broker_url: shorthand to override the broker of ``settings``.
        database_url: shorthand to override the database of ``settings``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        database_url: str | None = None,
        app: AgentpostCelery | None = None,
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
        with self._store():
            storage.create_schema(self._engine)

    @property
    def _engine(self) -> Engine:
        return storage.engine_for(self.settings.database)

    @property
    def app(self) -> AgentpostCelery:
        """The Celery app this client publishes with (built lazily)."""
        if self._app is None:
            from worker.app import create_app  # noqa: PLC0415  (worker imports messaging)

            self._app = create_app(self.settings)
        return self._app

    # -- sending -------------------------------------------------------------

    @overload
    def send(self, envelope: Envelope, /) -> SendResult: ...

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
    ) -> SendResult:
        """Send one message; a repeated idempotency key returns the first message.

        ``delivery``: ``at-least-once`` (stored, retried, dead-lettered),
        ``best-effort`` (published without a store row, no retries, no idempotency),
        ``exactly-once`` (the handler's ``ctx.session`` writes commit with the completion).

        Raises:
            InvalidEnvelope: bad names, a payload that is not JSON or too large.
            UnknownAgent: a receiver that no agent has registered.
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
        return self.send_many([envelope])[0]

    def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]:
        """Send several messages in one store transaction (all accepted, or none).

        Every envelope is checked before anything is stored, so one bad message
        refuses the whole batch.
        """
        checked = [self._check(envelope) for envelope in envelopes]
        if any(env.delivery == "best-effort" for env, _ in checked):
            if len(checked) != 1:
                raise InvalidEnvelope("send best-effort messages one at a time, not in a batch")
            return [self._send_best_effort(*checked[0])]
        rows = [
            storage.NewMessage(
                id=str(env.id),
                idempotency_key=env.idempotency_key,
                correlation_id=env.correlation_id,
                parent_id=str(env.parent_id) if env.parent_id else None,
                sender=env.sender,
                receiver=env.receiver,
                priority=env.priority,
                envelope=dump_json(wire),
                created_at=time.time(),
                expires_at=env.expires_at.timestamp() if env.expires_at else None,
            )
            for env, wire in checked
        ]
        with self._store():
            try:
                inserted = storage.insert_messages(self._engine, rows)
            except IntegrityError as exc:
                raise InvalidEnvelope(
                    "a message with one of these ids exists already under another "
                    "idempotency key: build a new Envelope for each message"
                ) from exc
        results = []
        for (env, wire), outcome in zip(checked, inserted, strict=True):
            # Mailbox agents pull from the store: nothing to publish for them.
            if not outcome.duplicate and self._known.get(env.receiver) != "mailbox":
                self._publish(str(env.id), env.receiver, env.priority, wire)
            results.append(
                SendResult(
                    message_id=outcome.message_id,
                    duplicate=outcome.duplicate,
                    status=outcome.status,
                )
            )
        return results

    def _send_best_effort(self, env: Envelope, wire: dict[str, Any]) -> SendResult:
        if self._known.get(env.receiver) == "mailbox":
            raise InvalidEnvelope(
                f"best-effort messages go straight to a worker; {env.receiver!r} is a "
                "mailbox agent: send it at-least-once"
            )
        self._publish(str(env.id), env.receiver, env.priority, wire)
        return SendResult(message_id=str(env.id), duplicate=False, status="sent")

    def _check(self, envelope: Envelope) -> tuple[Envelope, dict[str, Any]]:
        envelope.check_size(self.settings.max_payload_bytes)
        self._require_agent(envelope.receiver)
        return envelope, envelope.wire()

    def _require_agent(self, name: str) -> None:
        if name in self._known:
            return
        self._refresh_agents()
        if name not in self._known:
            known = ", ".join(sorted(self._known)) or "none yet: start a worker first"
            raise UnknownAgent(f"unknown agent {name!r} (registered: {known})")

    def _refresh_agents(self) -> list[storage.Agent]:
        with self._store():
            rows = storage.list_agents(self._engine)
        self._known = {a.name: a.kind for a in rows}
        return rows

    def _publish(self, message_id: str, receiver: str, priority: int, wire: dict[str, Any]) -> None:
        from worker.routing import publish_delivery  # noqa: PLC0415

        try:
            publish_delivery(
                self.app,
                message_id=message_id,
                receiver=receiver,
                priority=priority,
                envelope=wire,
            )
        except Exception as exc:
            # Accepted already: the sweeper republishes once the broker is back.
            log.warning(
                "message %s stored but not published (%s: %s); the sweeper will republish it",
                message_id,
                type(exc).__name__,
                exc,
            )

    # -- inspecting ----------------------------------------------------------

    def status(self, message_id: str) -> MessageState:
        """The stored state of one message with every attempt.

        Raises:
            MessageNotFound: no message has that id.
        """
        with self._store():
            row = storage.get_message(self._engine, message_id)
            if row is None:
                raise MessageNotFound(f"no message {message_id!r}")
            return MessageState.from_row(row, storage.attempts_of(self._engine, [row.id]))

    def trace(self, correlation_id: str) -> list[MessageState]:
        """Every message of a correlation chain (oldest first), each with its attempts."""
        with self._store():
            rows = storage.trace(self._engine, correlation_id)
            return self._states(rows)

    def dead_letters(self, *, receiver: str | None = None, limit: int = 100) -> list[MessageState]:
        """Dead messages, newest first."""
        with self._store():
            return self._states(storage.dead_letters(self._engine, receiver=receiver, limit=limit))

    def redrive(self, message_id: str) -> SendResult:
        """Send a dead message again (same id and key, attempt count reset).

        Raises:
            MessageNotFound: no dead message has that id.
        """
        with self._store():
            row = storage.redrive(self._engine, message_id, now=time.time())
        if row is None:
            raise MessageNotFound(f"no dead message {message_id!r} to redrive")
        from worker.routing import publish_delivery  # noqa: PLC0415

        try:
            publish_delivery(
                self.app,
                message_id=row.message_id,
                receiver=row.receiver,
                priority=row.priority,
                envelope=row.envelope,
            )
        except Exception as exc:
            log.warning("redriven message %s not published (%s); the sweeper will", message_id, exc)
        return SendResult(message_id=message_id, duplicate=False, status="queued")

    def agents(self) -> list[AgentInfo]:
        """Every registered agent (handler agents register when a worker serving them starts)."""
        return [AgentInfo.from_row(row) for row in self._refresh_agents()]

    # -- mailbox agents -----------------------------------------------------

    def register(
        self,
        name: str,
        *,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        backoff_max_s: float | None = None,
    ) -> AgentInfo:
        """Register a mailbox agent: it pulls its messages with ``client.mailbox(name)``."""
        validate_agent_name(name)
        with self._store():
            storage.register_mailbox(
                self._engine,
                name,
                now=time.time(),
                max_retries=max_retries,
                backoff_s=backoff_s,
                backoff_max_s=backoff_max_s,
            )
        return next(a for a in self.agents() if a.name == name)

    def mailbox(self, name: str) -> Mailbox:
        """The pull mailbox of a registered mailbox agent.

        Raises:
            UnknownAgent: ``name`` is not registered as a mailbox agent.
        """
        self._require_agent(name)
        if self._known.get(name) != "mailbox":
            raise UnknownAgent(
                f"agent {name!r} is a handler agent served by workers, not a mailbox: "
                "register a mailbox agent with client.register(name)"
            )
        return Mailbox(self, name)

    def _mailbox_options(self, name: str) -> storage.Agent:
        row = next((a for a in self._refresh_agents() if a.name == name), None)
        if row is None:
            raise UnknownAgent(f"unknown agent {name!r}")
        return row

    # -- request / reply -------------------------------------------------------

    def request(
        self,
        receiver: str,
        payload: Any = None,
        *,
        sender: str,
        timeout_s: float,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = "normal",
        metadata: dict[str, Any] | None = None,
    ) -> Reply:
        """Send a message and wait for its reply.

        Raises:
            RequestTimeout: no reply within ``timeout_s`` (it carries the message id;
                the request is still delivered, fetch the reply with ``result``).
            RequestFailed: the request ended dead.
        """
        sent = self.send(
            receiver,
            payload,
            sender=sender,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            priority=priority,
            metadata=metadata,
        )
        # A poll straight after the send always misses and competes with the worker.
        return self._wait_reply(sent.message_id, timeout_s, first_pause_s=0.001)

    def result(self, message_id: str, *, timeout_s: float = 0.0) -> Reply:
        """The reply of a delivered message, waiting up to ``timeout_s`` for it.

        Raises:
            RequestTimeout: not delivered within ``timeout_s``.
            RequestFailed: the message is dead.
            MessageNotFound: no message has that id.
        """
        return self._wait_reply(message_id, timeout_s, first_pause_s=0.0)

    def _wait_reply(self, message_id: str, timeout_s: float, *, first_pause_s: float) -> Reply:
        deadline = time.monotonic() + timeout_s
        pause = 0.001
        if first_pause_s:
            time.sleep(first_pause_s)
        while True:
            with self._store():
                state = storage.outcome_of(self._engine, message_id)  # one narrow SELECT
            if state is None:
                raise MessageNotFound(f"no message {message_id!r}")
            if state.status == "delivered":
                return Reply(
                    payload=json.loads(state.reply) if state.reply is not None else None,
                    sender=state.receiver,
                    receiver=state.sender,
                    correlation_id=state.correlation_id,
                    parent_id=message_id,
                )
            if state.status == "dead":
                raise RequestFailed(
                    f"request {message_id} is dead ({state.dead_reason}): {state.error}",
                    message_id=message_id,
                    reason=state.dead_reason,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout(
                    f"no reply to {message_id} within {timeout_s} s (status {state.status}); "
                    "it will still be delivered: client.result(message_id, timeout_s=...)",
                    message_id=message_id,
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 1.5, 0.05)

    # -- fan-out ---------------------------------------------------------------

    def broadcast(
        self,
        payload: Any = None,
        *,
        sender: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        priority: Priority = "normal",
        ttl_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[SendResult]:
        """One tracked message to every registered agent except the sender."""
        recipients = sorted(name for name in self._refresh_agents_names() if name != sender)
        return self.send_many(
            fan_out(
                recipients,
                payload,
                sender=sender,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                priority=priority,
                ttl_s=ttl_s,
                metadata=metadata,
            )
        )

    def subscribe(self, agent: str, pattern: str) -> bool:
        """Subscribe a registered agent to topics matching the glob ``pattern``."""
        validate_pattern(pattern)
        self._require_agent(agent)
        with self._store():
            return storage.subscribe(self._engine, agent, pattern, now=time.time())

    def unsubscribe(self, agent: str, pattern: str) -> bool:
        """Remove a subscription; False if there was none."""
        with self._store():
            return storage.unsubscribe(self._engine, agent, pattern)

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        sender: str,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        priority: Priority = "normal",
        ttl_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[SendResult]:
        """One tracked message per agent subscribed to ``topic`` (``[]`` if none)."""
        validate_topic(topic)
        with self._store():
            subs = storage.subscriptions(self._engine)
        recipients = match_subscribers(topic, ((s.agent, s.pattern) for s in subs))
        return self.send_many(
            fan_out(
                recipients,
                payload,
                sender=sender,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                priority=priority,
                ttl_s=ttl_s,
                metadata={**(metadata or {}), "topic": topic},
            )
        )

    def _refresh_agents_names(self) -> list[str]:
        return [a.name for a in self._refresh_agents()]

    def close(self) -> None:
        """Release the broker connections of this client."""
        if self._app is not None:
            self._app.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _states(self, rows: list[storage.Message]) -> list[MessageState]:
        attempts = storage.attempts_of(self._engine, [r.id for r in rows])
        by_message: dict[str, list[storage.Attempt]] = {}
        for attempt in attempts:
            by_message.setdefault(attempt.message_id, []).append(attempt)
        return [MessageState.from_row(r, by_message.get(r.id, [])) for r in rows]

    @contextmanager
    def _store(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise StoreUnavailable(
                f"the store at {_safe_url(self.settings.database)} failed: {exc.__class__.__name__}"
            ) from exc


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(url).render_as_string(hide_password=True)
