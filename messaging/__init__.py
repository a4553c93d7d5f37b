"""agentpost's public API: ``from messaging import Client, Envelope, agent``."""

from __future__ import annotations

from messaging.agents import AgentSpec, agent
from messaging.client import Client
from messaging.context import Context
from messaging.envelope import JSON, PRIORITIES, SCHEMA_VERSION, Envelope, Priority
from messaging.errors import (
    AgentpostError,
    BrokerUnavailable,
    ConfigurationError,
    DeadLettered,
    DeliveryError,
    InvalidEnvelope,
    MessageNotFound,
    PayloadTooLarge,
    PermanentError,
    StoreUnavailable,
    UnknownAgent,
)
from messaging.results import AttemptInfo, MessageState, SendResult
from messaging.settings import Settings

__all__ = [
    "JSON",
    "PRIORITIES",
    "SCHEMA_VERSION",
    "AgentSpec",
    "AgentpostError",
    "AttemptInfo",
    "BrokerUnavailable",
    "Client",
    "ConfigurationError",
    "Context",
    "DeadLettered",
    "DeliveryError",
    "Envelope",
    "InvalidEnvelope",
    "MessageNotFound",
    "MessageState",
    "PayloadTooLarge",
    "PermanentError",
    "Priority",
    "SendResult",
    "Settings",
    "StoreUnavailable",
    "UnknownAgent",
    "agent",
]
