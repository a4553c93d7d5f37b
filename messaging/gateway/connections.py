"""Connections that are slow on purpose are closed: a request must arrive in time.

uvicorn closes a connection idle between requests after its keep-alive timeout, but a
client that opens a socket and sends nothing, or dribbles its headers or body a byte a
second, is held for as long as it likes (and each such socket is one more the server
keeps). This protocol gives every request a deadline from the moment the server waits
for it (the connection opened, or the previous response sent) to its last body byte:
``AGENTPOST_GATEWAY_READ_TIMEOUT_S``. Past it the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from wire.settings import Settings

__all__ = ["DeadlineProtocol"]

log = logging.getLogger("agentpost.gateway")


@cache
def _read_timeout_s() -> float:
    return Settings().gateway_read_timeout_s


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.more_body:
            self._disarm()  # the whole request is in: the deadline is met

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(_read_timeout_s(), self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is not None and not self.cycle.more_body:
            return  # read in full meanwhile
        log.info("closed a connection from %s: no whole request in time", self.client)
        self.transport.close()
