"""Broker-specific choices, in one place: transport options, queue arguments, priorities.

The rest of the code asks ``profile_for(url)`` instead of testing URL prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.settings import Settings

__all__ = ["AMQP", "FILESYSTEM", "REDIS", "TransportProfile", "profile_for"]


@dataclass(frozen=True, slots=True)
class TransportProfile:
    """What differs between brokers."""

    name: str
    has_priorities: bool
    # A kombu transport class of ours replacing the URL scheme's own (Celery's
    # ``broker_transport``); None: kombu's.
    transport_class: str | None = None

    def transport_options(self, settings: Settings) -> dict[str, Any]:
        """kombu ``broker_transport_options`` for this broker."""
        if self.name == "filesystem":
            root = settings.home / "broker"
            folders = {"queue": root / "queue", "control": root / "control"}
            for folder in (settings.home, root, *folders.values()):  # each owner-only
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return {
                "data_folder_in": str(folders["queue"]),
                "data_folder_out": str(folders["queue"]),
                "control_folder": str(folders["control"]),
                "polling_interval": settings.filesystem_polling_s,
            }
        if self.name == "redis":
            return {
                # No unacked hash in Redis: kombu's ack emulation writes each delivered
                # message to it and deletes it at the ack (two MULTI/EXEC round trips a
                # delivery, blocking the worker's consumer), so that another worker can
                # restore it after the visibility timeout. The store already knows what
                # a worker took and did not finish (its lease) and what the broker lost
                # (the sweeper), so the hash bought only a second, slower recovery and
                # the re-run of a retry waiting past the timeout. Unacked messages are
                # held in the worker's memory and put back when it stops.
                "ack_emulation": False,
                "queue_order_strategy": "priority",
                "priority_steps": list(range(10)),
                # redis-py 8 times out blocking reads after 5 s unless told otherwise.
                "socket_timeout": 30,
                "socket_connect_timeout": 10,
            }
        return {"confirm_publish": True}

    def queue_arguments(self, namespace: str) -> dict[str, Any] | None:
        """Declaration arguments of an inbox queue (fixed at first declaration on AMQP)."""
        if self.name != "amqp":
            return None
        return {
            "x-max-priority": 9,
            "x-dead-letter-exchange": f"{namespace}agentpost.dlx",
            "x-dead-letter-routing-key": f"{namespace}agentpost.dead_letter",
        }

    def message_priority(self, priority: int) -> int | None:
        """Our 0-9 (9 most urgent) in the broker's own scheme."""
        if self.name == "redis":
            return 9 - priority  # kombu's Redis transport serves 0 first
        if self.name == "amqp":
            return priority
        return None


FILESYSTEM = TransportProfile(
    "filesystem",
    has_priorities=False,
    transport_class="wire.filesystem:Transport",
)
REDIS = TransportProfile(
    "redis", has_priorities=True, transport_class="wire.redistransport:Transport"
)
AMQP = TransportProfile("amqp", has_priorities=True)


def profile_for(broker_url: str) -> TransportProfile:
    """The profile of a broker URL (``Settings`` has already refused unknown schemes)."""
    scheme = broker_url.split("://", 1)[0]
    if scheme in ("redis", "rediss"):
        return REDIS
    if scheme in ("amqp", "pyamqp", "amqps"):
        return AMQP
    return FILESYSTEM
