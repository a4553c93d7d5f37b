"""agentpost's public API: ``from messaging import Client, Envelope, agent``.

The names load on first use (``wire/lazy.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wire.lazy import lazy_attributes

if TYPE_CHECKING:
    from messaging.agents import AgentSpec, agent
    from messaging.async_client import AsyncClient, AsyncMailbox
    from messaging.client import Client
    from messaging.context import Context
    from messaging.envelope import JSON, PRIORITIES, SCHEMA_VERSION, Envelope, Priority
    from messaging.gateway import (
        A2AClient,
        AgentInvocationRequest,
        AgentInvocationResponse,
        AsyncA2AClient,
    )
    from messaging.mailbox import Mailbox, ReceivedMessage
    from messaging.results import AgentInfo, AttemptInfo, MessageState, Reply, SendResult
    from wire.errors import (
        AgentpostError,
        AmbiguousId,
        BrokerUnavailable,
        ConfigurationError,
        DeadLettered,
        DeliveryError,
        GatewayError,
        InboxFull,
        InvalidEnvelope,
        LeaseExpired,
        MessageNotFound,
        PayloadTooLarge,
        PermanentError,
        RequestFailed,
        RequestTimeout,
        Retry,
        SchemaOutdated,
        StoreUnavailable,
        UnknownAgent,
    )
    from wire.settings import Settings

__all__ = [
    "JSON",
    "PRIORITIES",
    "SCHEMA_VERSION",
    "A2AClient",
    "AgentInfo",
    "AgentInvocationRequest",
    "AgentInvocationResponse",
    "AgentSpec",
    "AgentpostError",
    "AmbiguousId",
    "AsyncA2AClient",
    "AsyncClient",
    "AsyncMailbox",
    "AttemptInfo",
    "BrokerUnavailable",
    "Client",
    "ConfigurationError",
    "Context",
    "DeadLettered",
    "DeliveryError",
    "Envelope",
    "GatewayError",
    "InboxFull",
    "InvalidEnvelope",
    "LeaseExpired",
    "Mailbox",
    "MessageNotFound",
    "MessageState",
    "PayloadTooLarge",
    "PermanentError",
    "Priority",
    "ReceivedMessage",
    "Reply",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "SchemaOutdated",
    "SendResult",
    "Settings",
    "StoreUnavailable",
    "UnknownAgent",
    "agent",
]

# Where each public name lives.
_HOME = {
    "A2AClient": "messaging.gateway",
    "agent": "messaging.agents",
    "AgentInfo": "messaging.results",
    "AgentInvocationRequest": "messaging.gateway",
    "AgentInvocationResponse": "messaging.gateway",
    "AgentpostError": "wire.errors",
    "AgentSpec": "messaging.agents",
    "AmbiguousId": "wire.errors",
    "AsyncA2AClient": "messaging.gateway",
    "AsyncClient": "messaging.async_client",
    "AsyncMailbox": "messaging.async_client",
    "AttemptInfo": "messaging.results",
    "BrokerUnavailable": "wire.errors",
    "Client": "messaging.client",
    "ConfigurationError": "wire.errors",
    "Context": "messaging.context",
    "DeadLettered": "wire.errors",
    "DeliveryError": "wire.errors",
    "Envelope": "messaging.envelope",
    "GatewayError": "wire.errors",
    "InboxFull": "wire.errors",
    "InvalidEnvelope": "wire.errors",
    "JSON": "messaging.envelope",
    "LeaseExpired": "wire.errors",
    "Mailbox": "messaging.mailbox",
    "MessageNotFound": "wire.errors",
    "MessageState": "messaging.results",
    "PayloadTooLarge": "wire.errors",
    "PermanentError": "wire.errors",
    "PRIORITIES": "messaging.envelope",
    "Priority": "messaging.envelope",
    "ReceivedMessage": "messaging.mailbox",
    "Reply": "messaging.results",
    "RequestFailed": "wire.errors",
    "RequestTimeout": "wire.errors",
    "Retry": "wire.errors",
    "SCHEMA_VERSION": "messaging.envelope",
    "SchemaOutdated": "wire.errors",
    "SendResult": "messaging.results",
    "Settings": "wire.settings",
    "StoreUnavailable": "wire.errors",
    "UnknownAgent": "wire.errors",
}


__getattr__ = lazy_attributes(__name__, _HOME, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
