"""agentpost's public API: ``from messaging import Client, Envelope, agent``."""

from __future__ import annotations

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
    InvalidEnvelope,
    LeaseExpired,
    MessageNotFound,
    PayloadTooLarge,
    PermanentError,
    RequestFailed,
    RequestTimeout,
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
    "SchemaOutdated",
    "SendResult",
    "Settings",
    "StoreUnavailable",
    "UnknownAgent",
    "agent",
]
