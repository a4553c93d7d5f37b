"""The gateway's request and response bodies (published in its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from messaging.envelope import AgentName, Priority
from messaging.results import MessageState

__all__ = [
    "AgentInvocationRequest",
    "AgentInvocationResponse",
    "ErrorBody",
    "MessageAccepted",
    "MessageRequest",
]

# The bus key is "<subject>:<key>" (keys are per caller), and the bus allows 255.
_KEY = Field(default=None, min_length=1, max_length=190)
_ID = Field(default=None, min_length=1, max_length=255)


class AgentInvocationRequest(BaseModel):
    """Invoke an agent and wait for its reply."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = _ID
    thread_id: str | None = _ID
    conversation_id: str | None = _ID
    correlation_id: str | None = _ID
    idempotency_key: str | None = _KEY
    source_agent: AgentName | None = Field(
        default=None, description="must be the authenticated caller, if given"
    )
    target_agent: AgentName | None = Field(
        default=None, description="must be the agent in the path, if given"
    )
    payload: JsonValue = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0, le=300)


class AgentInvocationResponse(BaseModel):
    """The agent's reply (``success``) or why there is none."""

    run_id: str | None = None
    success: bool
    output: JsonValue = None
    error: str | None = None
    message_id: str


class MessageRequest(BaseModel):
    """Send a message without waiting (202 and its id)."""

    model_config = ConfigDict(extra="forbid")

    target_agent: AgentName
    source_agent: AgentName | None = None
    payload: JsonValue = None
    correlation_id: str | None = _ID
    idempotency_key: str | None = _KEY
    priority: Priority = "normal"
    ttl_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class MessageAccepted(BaseModel):
    """An accepted message (``duplicate``: the key was seen, this is the first one)."""

    message_id: str
    duplicate: bool
    status: str


class ErrorBody(BaseModel):
    """Every refusal: what is wrong, and the message id when one exists."""

    detail: Any
    message_id: str | None = None


def public_state(state: MessageState) -> MessageState:
    """A message as callers over HTTP see it: without worker tracebacks."""
    attempts = tuple(a.model_copy(update={"traceback": None}) for a in state.attempt_log)
    return state.model_copy(update={"attempt_log": attempts})
