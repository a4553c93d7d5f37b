"""What the broker knows of the inboxes: messages waiting and workers consuming."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu.exceptions import ChannelError

from wire.brokers import REDIS, profile_for
from wire.queues import inbox_name, inbox_queue

if TYPE_CHECKING:
    from wire.app import AgentpostCelery

__all__ = ["consumers_by_queue", "inbox_depths"]


def inbox_depths(app: AgentpostCelery, agents: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each agent's inbox (``None`` if the broker would not say)."""
    depths: dict[str, int | None] = {}
    with app.connection_for_read() as conn:
        channel = conn.channel()
        for agent in agents:
            try:
                ok: Any = inbox_queue(agent, app.settings)(channel).queue_declare(passive=True)
                depths[agent] = int(ok.message_count)
            except (ChannelError, NotImplementedError):
                # Not declared yet (nothing ever sent) or a transport that cannot count;
                # AMQP closes the channel on a failed passive declare, so open a new one.
                # (Redis drops an empty list, so a missing queue there is an empty one.)
                # A broker that fails to answer raises: that is no empty inbox.
                depths[agent] = 0 if profile_for(app.settings.broker) is REDIS else None
                channel = conn.channel()
    return depths


def consumers_by_queue(app: AgentpostCelery, timeout_s: float = 1.0) -> dict[str, int]:
    """Workers online per queue, asked over Celery's remote control (broadcast)."""
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    counts: dict[str, int] = {}
    for queues in replies.values():
        for queue in queues:
            counts[queue["name"]] = counts.get(queue["name"], 0) + 1
    return counts


def consumers_of(app: AgentpostCelery, agent: str, by_queue: dict[str, int]) -> int:
    """Workers consuming one agent's inbox."""
    return by_queue.get(inbox_name(agent, app.settings), 0)
