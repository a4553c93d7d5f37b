"""What the client returns: send results and the recorded state of messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

import storage

__all__ = [
    "AgentInfo",
    "AgentStats",
    "AttemptInfo",
    "MessageState",
    "Reply",
    "SendResult",
    "Status",
]

Status = Literal["queued", "running", "retrying", "delivered", "dead", "sent"]


class SendResult(BaseModel):
    """The outcome of ``send``: the message id that holds the key, and if it was a repeat."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    duplicate: bool
    status: Status


class AttemptInfo(BaseModel):
    """One recorded attempt of a delivery."""

    model_config = ConfigDict(frozen=True)

    number: int
    redrive: int
    worker: str | None
    started_at: datetime | None
    ended_at: datetime
    outcome: Literal["delivered", "retry", "postponed", "dead", "lost"]
    error: str | None
    traceback: str | None

    @classmethod
    def from_row(cls, row: storage.Attempt) -> AttemptInfo:
        return cls(
            number=row.number,
            redrive=row.redrive,
            worker=row.worker,
            started_at=_dt(row.started_at),
            ended_at=_dt(row.ended_at) or datetime.now(UTC),
            outcome=row.outcome,
            error=row.error,
            traceback=row.traceback,
        )


class MessageState(BaseModel):
    """A stored message: where it is, what it returned or why it died, every attempt."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    sender: str
    receiver: str
    correlation_id: str
    parent_id: str | None
    idempotency_key: str
    priority: int
    status: Status
    dead_reason: str | None
    error: str | None
    reply: Any
    attempts: int
    redrives: int
    created_at: datetime
    finished_at: datetime | None
    payload: Any
    attempt_log: tuple[AttemptInfo, ...]

    @classmethod
    def from_row(cls, row: storage.Message, attempts: list[storage.Attempt]) -> MessageState:
        envelope = json.loads(row.envelope)
        return cls(
            message_id=row.id,
            sender=row.sender,
            receiver=row.receiver,
            correlation_id=row.correlation_id,
            parent_id=row.parent_id,
            idempotency_key=row.idempotency_key,
            priority=row.priority,
            status=row.status,
            dead_reason=row.dead_reason,
            error=row.error,
            reply=json.loads(row.reply) if row.reply is not None else None,
            attempts=row.attempts,
            redrives=row.redrives,
            created_at=_dt(row.created_at) or datetime.now(UTC),
            finished_at=_dt(row.finished_at),
            payload=envelope.get("payload"),
            attempt_log=tuple(AttemptInfo.from_row(a) for a in attempts),
        )


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class AgentInfo(BaseModel):
    """A registered agent."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["handler", "mailbox"]
    queue: str
    registered_at: datetime
    last_seen_at: datetime
    max_backlog: int | None = None
    # A typed agent's JSON Schemas (None: untyped) and how often they changed.
    payload_schema: dict[str, Any] | None = None
    reply_schema: dict[str, Any] | None = None
    schema_version: int | None = None
    # Deployment-wide flow control, as declared, and the circuit's state now.
    max_concurrency: int | None = None
    rate_per_s: float | None = None
    circuit_after: int | None = None
    circuit_cooldown_s: float | None = None
    circuit: Literal["closed", "open", "half-open"] = "closed"
    circuit_failures: int = 0
    circuit_until: datetime | None = None
    circuit_error: str | None = None

    @classmethod
    def from_row(cls, row: storage.Agent) -> AgentInfo:
        return cls(
            name=row.name,
            kind=row.kind,
            queue=row.queue,
            registered_at=_dt(row.registered_at) or datetime.now(UTC),
            last_seen_at=_dt(row.last_seen_at) or datetime.now(UTC),
            max_backlog=row.max_backlog,
            payload_schema=json.loads(row.payload_schema) if row.payload_schema else None,
            reply_schema=json.loads(row.reply_schema) if row.reply_schema else None,
            schema_version=row.schema_version,
            max_concurrency=row.max_concurrency,
            rate_per_s=row.rate_per_s,
            circuit_after=row.circuit_after,
            circuit_cooldown_s=row.circuit_cooldown_s,
            circuit=row.circuit_state or "closed",
            circuit_failures=row.circuit_failures or 0,
            circuit_until=_dt(row.circuit_until),
            circuit_error=row.circuit_error,
        )

    def contract(self) -> str:
        """What the agent declared, in a line: its models (version) and limits."""
        parts = []
        if self.payload_schema is not None:
            parts.append(f"payload {self.payload_schema.get('title', '?')}")
        if self.reply_schema is not None:
            parts.append(f"reply {self.reply_schema.get('title', '?')}")
        if parts:
            parts[-1] += f" (v{self.schema_version})"
        if self.max_backlog is not None:
            parts.append(f"max_backlog {self.max_backlog}")
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency {self.max_concurrency}")
        if self.rate_per_s is not None:
            parts.append(f"rate_limit {_rate(self.rate_per_s)}")
        if self.circuit_after is not None:
            state = self.circuit.upper() if self.circuit != "closed" else "closed"
            parts.append(f"circuit {state} (opens after {self.circuit_after} failures)")
        return " · ".join(parts)


def _rate(per_s: float) -> str:
    """A rate in the unit that shows it as a whole number where one does."""
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600)):
        if per_s * seconds >= 1 and float(per_s * seconds).is_integer():
            return f"{per_s * seconds:g}/{unit}"
    return f"{per_s * 3600:.4g}/h"


class Reply(BaseModel):
    """The answer to a request: the handler's return value or a mailbox ``reply``.

    It keeps the request's correlation id and names the request as its parent.
    """

    model_config = ConfigDict(frozen=True)

    payload: Any
    sender: str
    receiver: str
    correlation_id: str
    parent_id: str


class AgentStats(BaseModel):
    """An agent as an operator sees it: backlog, consumers and outcomes."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["handler", "mailbox"]
    queue: str
    last_seen_at: datetime
    queue_depth: int | None
    consumers: int | None
    counts: dict[str, int]
    contract: str = ""  # what the agent declared (``AgentInfo.contract``)
