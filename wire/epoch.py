"""The broker epoch marker: a token the sweeper leaves in the broker, to see it lost.

The store remembers the token (``storage/epochs.py``); a sweep that does not find it
in the broker knows the broker lost its contents and republishes every waiting
message, whatever its age. Where the token lives is the broker's own business:

- Redis: a key ``<namespace>agentpost.epoch`` (a restart without persistence or a
  FLUSHDB/FLUSHALL takes it with the queues; Redis must not evict keys, which Celery
  needs anyway);
- the embedded broker: a file beside the messages in its queue folder (wiping the
  folder takes it);
- RabbitMQ: a durable, unused queue ``<namespace>agentpost.epoch.<token>`` (a broker
  reset takes it). A deleted inbox is seen on its own: ``restore_missing_inboxes``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kombu import Queue

from wire.brokers import profile_for
from wire.filesystem import write_atomically
from wire.queues import inbox_queue
from wire.settings import Settings, redact

if TYPE_CHECKING:
    from wire.app import AgentpostCelery

__all__ = ["epoch_key", "new_epoch", "read_marker", "restore_missing_inboxes", "write_marker"]


def epoch_key(settings: Settings) -> str:
    """Which broker a stored epoch is for: its URL (no password) and the namespace."""
    return f"{settings.namespace}|{redact(settings.broker)}"[:255]


def new_epoch() -> str:
    """A fresh token."""
    return secrets.token_hex(16)


def read_marker(app: AgentpostCelery, expected: str | None) -> str | None:
    """The token the broker holds (on RabbitMQ: ``expected`` if its queue exists)."""
    settings = app.settings
    kind = profile_for(settings.broker).name
    if kind == "filesystem":
        try:
            return _marker_file(settings).read_text().strip() or None
        except FileNotFoundError:
            return None
    with app.connection_for_write() as conn:
        if kind == "redis":
            redis_channel: Any = conn.default_channel
            value = redis_channel.client.get(_redis_key(settings))
            return value.decode() if isinstance(value, bytes) else value
        if expected is None:
            return None
        return expected if _exists(conn, _amqp_marker(settings, expected)) else None


def write_marker(app: AgentpostCelery, token: str, previous: str | None) -> None:
    """Leave ``token`` in the broker (replacing ``previous``)."""
    settings = app.settings
    kind = profile_for(settings.broker).name
    if kind == "filesystem":
        write_atomically(_marker_file(settings), token.encode())
        return
    with app.connection_for_write() as conn:
        if kind == "redis":
            redis_channel: Any = conn.default_channel
            redis_channel.client.set(_redis_key(settings), token)
            return
        channel = conn.channel()
        Queue(_amqp_marker(settings, token), durable=True)(channel).declare()
        if previous is not None and previous != token:
            Queue(_amqp_marker(settings, previous), durable=True)(channel).delete()


def restore_missing_inboxes(app: AgentpostCelery, agents: list[str]) -> list[str]:
    """Declare again the inboxes the broker no longer has; the agents whose inbox was
    gone (RabbitMQ; elsewhere none). Declared here, not on the next publish: kombu
    remembers a queue it declared once on a connection and would publish into the void."""
    if profile_for(app.settings.broker).name != "amqp" or not agents:
        return []
    with app.connection_for_write() as conn:
        gone = [a for a in agents if not _exists(conn, inbox_queue(a, app.settings).name)]
        channel = conn.channel()
        for agent in gone:
            inbox_queue(agent, app.settings)(channel).declare()
        return gone


def _exists(conn: Any, queue: str) -> bool:
    # A passive declare that fails closes its channel: one channel per question.
    channel = conn.channel()
    try:
        channel.queue_declare(queue=queue, passive=True)
    except conn.channel_errors:
        return False
    finally:
        try:
            channel.close()
        except conn.connection_errors + conn.channel_errors:
            pass
    return True


def _marker_file(settings: Settings) -> Path:
    return settings.home / "broker" / "queue" / f"{settings.namespace}agentpost-epoch"


def _redis_key(settings: Settings) -> str:
    return f"{settings.namespace}agentpost.epoch"


def _amqp_marker(settings: Settings, token: str) -> str:
    return f"{settings.namespace}agentpost.epoch.{token}"
