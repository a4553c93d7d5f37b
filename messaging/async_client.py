"""``AsyncClient``: the client's operations for asyncio code.

Each call runs the synchronous client in a worker thread (``asyncio.to_thread``),
so the event loop never blocks on the store or the broker; waits (``request``,
``result``, mailbox ``receive``) poll in that thread too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from messaging.client import Client
from messaging.envelope import Envelope
from messaging.mailbox import Mailbox, ReceivedMessage
from messaging.results import AgentInfo, MessageState, Reply, SendResult
from wire.settings import Settings

__all__ = ["AsyncClient", "AsyncMailbox"]


class AsyncMailbox:
    """A mailbox for asyncio code: ``await receive()``, ``async for msg in mailbox``."""

    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox

    async def receive(
        self, *, timeout_s: float = 0.0, lease_s: float | None = None
    ) -> ReceivedMessage | None:
        """The next message, or ``None`` after ``timeout_s``."""
        return await asyncio.to_thread(self._mailbox.receive, timeout_s=timeout_s, lease_s=lease_s)

    async def peek(self, limit: int = 10) -> list[MessageState]:
        """The next messages, without taking them."""
        return await asyncio.to_thread(self._mailbox.peek, limit)

    async def __aiter__(self) -> AsyncIterator[ReceivedMessage]:
        while True:
            message = await self.receive(timeout_s=1.0)
            if message is not None:
                yield message


class AsyncClient:
    """The same operations as ``Client``, awaitable. Arguments are those of ``Client``."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self.sync = Client(settings, **kwargs)

    async def send(self, *args: Any, **kwargs: Any) -> SendResult:
        """``Client.send``."""
        return await asyncio.to_thread(self.sync.send, *args, **kwargs)

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[SendResult]:
        """``Client.send_many``."""
        return await asyncio.to_thread(self.sync.send_many, envelopes)

    async def request(self, *args: Any, **kwargs: Any) -> Reply:
        """``Client.request``: the reply, or ``RequestTimeout``."""
        return await asyncio.to_thread(self.sync.request, *args, **kwargs)

    async def result(self, message_id: str, *, timeout_s: float = 0.0) -> Reply:
        """``Client.result``."""
        return await asyncio.to_thread(self.sync.result, message_id, timeout_s=timeout_s)

    async def status(self, message_id: str) -> MessageState:
        """``Client.status``."""
        return await asyncio.to_thread(self.sync.status, message_id)

    async def trace(self, correlation_id: str) -> list[MessageState]:
        """``Client.trace``."""
        return await asyncio.to_thread(self.sync.trace, correlation_id)

    async def dead_letters(self, **kwargs: Any) -> list[MessageState]:
        """``Client.dead_letters``."""
        return await asyncio.to_thread(self.sync.dead_letters, **kwargs)

    async def redrive(self, message_id: str) -> SendResult:
        """``Client.redrive``."""
        return await asyncio.to_thread(self.sync.redrive, message_id)

    async def broadcast(self, *args: Any, **kwargs: Any) -> list[SendResult]:
        """``Client.broadcast``."""
        return await asyncio.to_thread(self.sync.broadcast, *args, **kwargs)

    async def publish(self, *args: Any, **kwargs: Any) -> list[SendResult]:
        """``Client.publish``."""
        return await asyncio.to_thread(self.sync.publish, *args, **kwargs)

    async def subscribe(self, agent: str, pattern: str) -> bool:
        """``Client.subscribe``."""
        return await asyncio.to_thread(self.sync.subscribe, agent, pattern)

    async def unsubscribe(self, agent: str, pattern: str) -> bool:
        """``Client.unsubscribe``."""
        return await asyncio.to_thread(self.sync.unsubscribe, agent, pattern)

    async def register(self, name: str, **kwargs: Any) -> AgentInfo:
        """``Client.register``."""
        return await asyncio.to_thread(self.sync.register, name, **kwargs)

    async def agents(self) -> list[AgentInfo]:
        """``Client.agents``."""
        return await asyncio.to_thread(self.sync.agents)

    async def mailbox(self, name: str) -> AsyncMailbox:
        """``Client.mailbox``, for asyncio."""
        return AsyncMailbox(await asyncio.to_thread(self.sync.mailbox, name))

    async def aclose(self) -> None:
        """Release the broker connections."""
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
