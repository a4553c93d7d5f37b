"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, ack and event it
sends outside a pipeline (``conn_or_acquire`` → ``_create_client``), and redis-py fills
a case-insensitive dict of some 170 response callbacks in each: about 0.2 ms a client
here, twice a send (the task and its task-sent event) and more a delivery. The client
is only a handle on the channel's connection pool, safe to share, so the channel keeps
one for as long as its pool lives (kombu replaces the pool after a fork or a
disconnect; a new client follows it).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses its synchronous client."""

    _agentpost_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own (BRPOP) client: kombu keeps that one
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # untyped
        pool = self.pool
        client = self._agentpost_client
        if client is None or client.connection_pool is not pool:
            client = self._agentpost_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel``."""

    Channel = Channel
