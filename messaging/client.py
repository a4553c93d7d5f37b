"""The client: send messages to agents and inspect what happened to them.

``Sender`` (``messaging/sending.py``) accepts and publishes; this adds inspection,
mailbox agents, request/reply, broadcast and topics on top.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import storage
from messaging.envelope import Delivery, Envelope, Priority, validate_agent_name
from messaging.mailbox import Mailbox
from messaging.results import AgentInfo, AgentStats, MessageState, Reply, SendResult
from messaging.sending import Sender
from messaging.topics import fan_out, match_subscribers, validate_pattern, validate_topic
from wire.boundary import broker_errors
from wire.errors import (
    AmbiguousId,
    ConfigurationError,
    MessageNotFound,
    RequestFailed,
    RequestTimeout,
    UnknownAgent,
)

__all__ = ["Client"]


class Client(Sender):
    """Send messages to agents and inspect what happened to them.

    Args:
        settings: explicit settings; by default read from ``AGENTPOST_*``.
        broker_url: shorthand to override the broker of ``settings``.
        database_url: shorthand to override the database of ``settings``.
        create_store: bring an empty database to the newest schema (the default); with
            False an empty or foreign database raises ``ConfigurationError`` and is
            left as it is (the CLI's read-only commands).
    """

    def status(self, message_id: str) -> MessageState:
        """The stored state of one message with every attempt.

        Raises:
            MessageNotFound: no message has that id.
        """
        with self._store():
            row = storage.get_message(self.engine, message_id)
            if row is None:
                raise MessageNotFound(f"no message {message_id!r}")
            return MessageState.from_row(row, storage.attempts_of(self.engine, [row.id]))

    def complete_id(self, prefix: str, *, correlation: bool = False) -> str:
        """The whole message id (or correlation id) that ``prefix`` starts, as the CLI
        shows them shortened; a whole id is returned as it is.

        Raises:
            MessageNotFound: no id starts with it.
            AmbiguousId: more than one does (``candidates`` lists a few).
        """
        with self._store():
            found = storage.ids_starting(self.engine, prefix, correlation=correlation)
        if prefix in found:
            return prefix
        if len(found) == 1:
            return found[0]
        what = "correlation id" if correlation else "message"
        if not found:
            raise MessageNotFound(f"no {what} {prefix!r}")
        shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
        raise AmbiguousId(
            f"{prefix!r} starts more than one {what} id ({shown}): give more characters",
            candidates=found,
        )

    def trace(self, correlation_id: str) -> list[MessageState]:
        """Every message of a correlation chain (oldest first), each with its attempts."""
        with self._store():
            rows = storage.trace(self.engine, correlation_id)
            return self._states(rows)

    def dead_letters(
        self,
        *,
        receiver: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        correlation_id: str | None = None,
        limit: int = 100,
    ) -> list[MessageState]:
        """Dead messages, newest first (``since``: epoch seconds)."""
        with self._store():
            rows = storage.dead_letters(
                self.engine,
                receiver=receiver,
                reason=reason,
                since=since,
                correlation_id=correlation_id,
                limit=limit,
            )
            return self._states(rows)

    def purge(self, message_ids: Sequence[str]) -> int:
        """Delete dead messages (and their attempts) for good; returns how many."""
        with self._store():
            return storage.purge(self.engine, message_ids)

    def agent_stats(self) -> list[AgentStats]:
        """Every agent with its inbox depth, consumers online and message counts.

        Raises:
            BrokerUnavailable: the broker did not answer about the inboxes.
        """
        rows = self._refresh_agents()
        with self._store():
            counts = storage.status_counts(self.engine)
        handlers = [a.name for a in rows if a.kind == "handler"]
        # Celery's AMQP layer only for this question (not for status, send, result).
        from wire.inbox import consumers_by_queue, consumers_of, inbox_depths  # noqa: PLC0415

        with broker_errors(self.settings.broker):
            depths = inbox_depths(self.app, handlers) if handlers else {}
            by_queue = consumers_by_queue(self.app) if handlers else {}
        return [
            AgentStats(
                name=a.name,
                kind=a.kind,
                queue=a.queue,
                last_seen_at=AgentInfo.from_row(a).last_seen_at,
                queue_depth=depths.get(a.name)
                if a.kind == "handler"
                else counts.get(a.name, {}).get("queued", 0),
                consumers=consumers_of(self.app, a.name, by_queue) if a.kind == "handler" else None,
                counts=counts.get(a.name, {}),
                contract=AgentInfo.from_row(a).contract(),
            )
            for a in rows
        ]

    def redrive(self, message_id: str) -> SendResult:
        """Send a dead message again (same id and key, attempt count reset).

        Raises:
            MessageNotFound: no dead message has that id.
        """
        with self._store():
            row = storage.redrive(self.engine, message_id, now=time.time())
        if row is None:
            raise MessageNotFound(f"no dead message {message_id!r} to redrive")
        from wire.publish import DeliveryTask  # noqa: PLC0415  (kombu only to publish)

        self._publish([DeliveryTask.of(row, now=time.time())])
        return SendResult(message_id=message_id, duplicate=False, status="queued")

    def agents(self) -> list[AgentInfo]:
        """Every registered agent (handler agents register when a worker serving them starts)."""
        return [AgentInfo.from_row(row) for row in self._refresh_agents()]

    def register(
        self,
        name: str,
        *,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        backoff_max_s: float | None = None,
        max_backlog: int | None = None,
        max_concurrency: int | None = None,
        replace: bool = False,
    ) -> AgentInfo:
        """Register a mailbox agent: it pulls its messages with ``client.mailbox(name)``.

        ``max_backlog`` bounds its undelivered messages (a send past it raises
        ``InboxFull``, as for a handler agent); ``max_concurrency`` the messages its
        receivers hold at once, all processes together (``receive`` returns nothing
        more until one is acked, nacked or its lease ends).

        Raises:
            ConfigurationError: workers serve an agent of that name (its messages go to
                their queue, and a mailbox would never see them); ``replace=True``
                turns it into a mailbox all the same, once no worker serves it.
        """
        validate_agent_name(name)
        for option, value in (("max_backlog", max_backlog), ("max_concurrency", max_concurrency)):
            if value is not None and value < 1:
                raise ConfigurationError(f"agent {name!r}: {option} must be >= 1, got {value}")
        with self._store():
            held_by = storage.register_mailbox(
                self.engine,
                name,
                now=time.time(),
                max_retries=max_retries,
                backoff_s=backoff_s,
                backoff_max_s=backoff_max_s,
                max_backlog=max_backlog,
                max_concurrency=max_concurrency,
                replace=replace,
            )
        if held_by is not None:
            raise ConfigurationError(
                f"{name!r} is a {held_by} agent served by workers, not a mailbox: pick "
                "another name, or register(..., replace=True) once no worker serves it"
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
        # Straight after the send the row is queued: a read then always misses.
        return self._wait_reply(sent.message_id, timeout_s, read_first=sent.duplicate)

    def result(self, message_id: str, *, timeout_s: float = 0.0) -> Reply:
        """The reply of a delivered message, waiting up to ``timeout_s`` for it.

        Raises:
            RequestTimeout: not delivered within ``timeout_s``.
            RequestFailed: the message is dead.
            MessageNotFound: no message has that id.
        """
        return self._wait_reply(message_id, timeout_s, read_first=True)

    def _wait_reply(self, message_id: str, timeout_s: float, *, read_first: bool) -> Reply:
        deadline = time.monotonic() + timeout_s
        # Watched before the first read: a finish between the two still wakes us.
        with storage.watch_finished(self.engine, message_id) as watch:
            if not read_first:
                watch.wait(timeout_s)
            while True:
                with self._store():
                    state = storage.reply_state(self.engine, message_id)  # one narrow SELECT
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
                        f"no reply to {message_id} within {timeout_s} s "
                        f"(status {state.status}); it will still be delivered",
                        message_id=message_id,
                    )
                watch.wait(remaining)

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
        delivery: Delivery = "at-least-once",
    ) -> list[SendResult]:
        """One message to every registered agent except the sender, and except the typed
        agents whose payload model ``payload`` does not fit (they could never take it)."""
        rows = self._refresh_agents()
        recipients = sorted(
            a.name for a in rows if a.name != sender and self._schemas.fits(a.name, payload)
        )
        return self._send_fanned(
            fan_out(
                recipients,
                payload,
                sender=sender,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                priority=priority,
                ttl_s=ttl_s,
                metadata=metadata,
                delivery=delivery,
            )
        )

    def subscribe(self, agent: str, pattern: str) -> bool:
        """Subscribe a registered agent to topics matching the glob ``pattern``."""
        validate_pattern(pattern)
        self._require_agent(agent)
        with self._store():
            return storage.subscribe(self.engine, agent, pattern, now=time.time())

    def unsubscribe(self, agent: str, pattern: str) -> bool:
        """Remove a subscription; False if there was none."""
        with self._store():
            return storage.unsubscribe(self.engine, agent, pattern)

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
        delivery: Delivery = "at-least-once",
    ) -> list[SendResult]:
        """One message per agent subscribed to ``topic`` (``[]`` if none)."""
        validate_topic(topic)
        with self._store():
            subs = storage.subscriptions(self.engine)
        recipients = match_subscribers(topic, ((s.agent, s.pattern) for s in subs))
        return self._send_fanned(
            fan_out(
                recipients,
                payload,
                sender=sender,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                priority=priority,
                ttl_s=ttl_s,
                metadata={**(metadata or {}), "topic": topic},
                delivery=delivery,
            )
        )

    def _send_fanned(self, envelopes: list[Envelope]) -> list[SendResult]:
        # Best-effort messages have no rows, so no transaction to share: each goes alone.
        if envelopes and envelopes[0].delivery == "best-effort":
            return [self.send(envelope) for envelope in envelopes]
        return self.send_many(envelopes)

    def _states(self, rows: list[storage.Message]) -> list[MessageState]:
        attempts = storage.attempts_of(self.engine, [r.id for r in rows])
        by_message: dict[str, list[storage.Attempt]] = {}
        for attempt in attempts:
            by_message.setdefault(attempt.message_id, []).append(attempt)
        return [MessageState.from_row(r, by_message.get(r.id, [])) for r in rows]
