"""The HTTP gateway (FastAPI) and its Python client.

``create_gateway`` is imported on first use, so ``import messaging`` does not load
FastAPI into every worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from messaging.gateway.client import A2AClient, AsyncA2AClient
from messaging.gateway.models import (
    AgentInvocationRequest,
    AgentInvocationResponse,
    MessageAccepted,
    MessageRequest,
)

if TYPE_CHECKING:
    from messaging.gateway.app import create_gateway

__all__ = [
    "A2AClient",
    "AgentInvocationRequest",
    "AgentInvocationResponse",
    "AsyncA2AClient",
    "MessageAccepted",
    "MessageRequest",
    "create_gateway",
]


def __getattr__(name: str) -> Any:
    if name == "create_gateway":
        from messaging.gateway.app import create_gateway  # noqa: PLC0415  (lazy: FastAPI)

        return create_gateway
    raise AttributeError(name)
