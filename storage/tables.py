"""SQLModel tables of the store: messages, their attempts, and the agent registry.

Times are stored as epoch seconds (``float``): they compare the same way on SQLite
and PostgreSQL, which keeps the claim and the sweeper queries dialect-free.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Index, Text, text
from sqlalchemy import Table as SATable
from sqlmodel import Field, SQLModel

__all__ = [
    "FINISHED_SQL",
    "WAITING_SQL",
    "Agent",
    "AgentTotal",
    "ApiKey",
    "Attempt",
    "AuditEntry",
    "BrokerEpoch",
    "Message",
    "MessageKey",
    "RateBucket",
    "RevokedSubject",
    "Subscription",
    "SweepJournal",
    "table_of",
]


# The predicates of the partial indexes, as SQL. A query uses such an index only when
# it tests status with the same literals (storage.sql.status_is), not parameters.
WAITING_SQL = "status IN ('queued', 'retrying')"
FINISHED_SQL = "status IN ('delivered', 'dead')"


def _partial(name: str, where: str, *columns: str) -> Index:
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class Message(SQLModel, table=True):
    """One accepted message and where it is on its path."""

    __tablename__ = "agentpost_messages"
    # Partial indexes: a row is in the index of the status it is in, so an update that
    # moves it on touches only the next one, and no read walks finished history.
    __table_args__ = (
        # Claims, mailbox receive and peek: a receiver's waiting rows; sweeps: overdue ones.
        _partial("ix_agentpost_messages_waiting", WAITING_SQL, "receiver", "due_at"),
        _partial("ix_agentpost_messages_due", WAITING_SQL, "due_at"),
        # A claim under max_concurrency counts an agent's running handlers.
        _partial("ix_agentpost_messages_running", "status = 'running'", "receiver"),
        # Retention, the counters and the dead-letter list take finished rows by time.
        _partial("ix_agentpost_messages_finished", FINISHED_SQL, "status", "finished_at"),
        # The dead gauge counts an agent's dead letters from the index alone.
        _partial("ix_agentpost_messages_dead", "status = 'dead'", "receiver"),
    )

    # On PostgreSQL the key is (id, created_at) and the table is partitioned by week of
    # created_at (migration 0014); MessageKey keeps the key and the id unique.
    id: str = Field(primary_key=True, max_length=36)
    idempotency_key: str = Field(max_length=255)
    correlation_id: str = Field(max_length=255, index=True)
    parent_id: str | None = Field(default=None, max_length=36, index=True)
    sender: str = Field(max_length=64)
    receiver: str = Field(max_length=64)
    priority: int = 5
    # queued | running | retrying | delivered | dead
    status: str = Field(max_length=16)
    dead_reason: str | None = Field(default=None, max_length=16)
    # The envelope as the client serialised it: what the sweeper and redrive republish.
    envelope: str = Field(sa_column=Column(Text, nullable=False))
    reply: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = 0
    redrives: int = 0
    created_at: float = Field(index=True)  # the sent counter reads recent ones by it
    updated_at: float
    # When a task for this row should next be runnable; the sweeper republishes rows
    # that are overdue by more than its grace period.
    due_at: float
    expires_at: float | None = None
    lease_until: float | None = None
    claimed_by: str | None = Field(default=None, max_length=255)
    # Set by the claim when it took over a running row whose lease had expired.
    recovered_from: str | None = Field(default=None, max_length=255)
    finished_at: float | None = None
    # The outbox: when the current task of this row was handed to the broker (None:
    # not yet, or the broker lost it), and when the sweeper sent the one spare copy it
    # may send per handing (None: not yet). Together they bound the copies to two.
    handed_at: float | None = None
    spare_at: float | None = None
    # A rate-limited agent's slot this message holds (it waited for it): the delivery at
    # or after it runs without taking another.
    slot_at: float | None = None


class Attempt(SQLModel, table=True):
    """One try of a delivery: numbered from 1 within a redrive round."""

    __tablename__ = "agentpost_attempts"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, index=True)
    # The message's receiver, copied: the counters group recent attempts by agent
    # without a lookup in the messages' key for each.
    receiver: str = Field(max_length=64)
    # The message's created_at, copied: on PostgreSQL the attempts are partitioned by
    # it, so a week's messages and their attempts are dropped together.
    message_created_at: float
    number: int
    redrive: int = 0
    worker: str | None = Field(default=None, max_length=255)
    started_at: float | None = None
    ended_at: float = Field(index=True)  # the attempts' counters read recent ones by it
    # delivered | retry | postponed | dead | lost
    outcome: str = Field(max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    traceback: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class MessageKey(SQLModel, table=True):
    """An accepted message's idempotency key: unique for as long as the message is kept
    (a partitioned table cannot hold a unique key of its own)."""

    __tablename__ = "agentpost_message_keys"
    __table_args__ = (
        Index("ix_agentpost_message_keys_message_id", "message_id", unique=True),
        # Retention deletes a dropped week's keys by it.
        Index("ix_agentpost_message_keys_created_at", "created_at"),
    )

    idempotency_key: str = Field(primary_key=True, max_length=255)
    message_id: str = Field(max_length=36)
    created_at: float


class Agent(SQLModel, table=True):
    """A named receiver known to the system (registered by the workers that serve it)."""

    __tablename__ = "agentpost_agents"

    name: str = Field(primary_key=True, max_length=64)
    kind: str = Field(default="handler", max_length=16)
    queue: str = Field(max_length=255)
    registered_at: float
    last_seen_at: float
    # Retry options of a mailbox agent (handler agents keep theirs in code).
    max_retries: int | None = None
    backoff_s: float | None = None
    backoff_max_s: float | None = None
    # Undelivered messages the agent accepts before sends to it raise InboxFull.
    max_backlog: int | None = None
    # The JSON Schemas of the agent's payload and reply (typed handlers), which every
    # sender checks payloads against; the version counts the changes to them.
    payload_schema: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reply_schema: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    schema_version: int | None = None
    # Deployment-wide limits (storage/flow.py): handlers running at once, deliveries a
    # second (with the next free slot, GCRA's "theoretical arrival time"), and the
    # circuit: consecutive failures that open it and how long it stays open.
    max_concurrency: int | None = None
    rate_per_s: float | None = None
    rate_tat: float | None = None
    circuit_after: int | None = None
    circuit_cooldown_s: float | None = None
    # None (closed) | open | half-open; failures in a row; until when it is open (or
    # the probe's lease, half-open); the failure that opened it.
    circuit_state: str | None = Field(default=None, max_length=16)
    circuit_failures: int | None = None
    circuit_until: float | None = None
    circuit_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AgentTotal(SQLModel, table=True):
    """A counter of one agent's traffic before the watermark (``storage/stats.py``):
    kind "sent", "attempts:<outcome>", "latency:count", "latency:sum" or
    "latency:le:<bound>"; the watermark itself is the row ("", "folded_upto")."""

    __tablename__ = "agentpost_agent_totals"

    agent: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=32)
    value: float = 0.0


class Subscription(SQLModel, table=True):
    """An agent's subscription to topics matching a glob pattern."""

    __tablename__ = "agentpost_subscriptions"

    agent: str = Field(primary_key=True, max_length=64)
    pattern: str = Field(primary_key=True, max_length=255)
    created_at: float


class ApiKey(SQLModel, table=True):
    """A gateway caller's API key: only its HMAC digest is kept, never the key."""

    __tablename__ = "agentpost_api_keys"

    id: str = Field(primary_key=True, max_length=32)
    subject: str = Field(max_length=64, index=True)
    # HMAC-SHA256(server secret, key), hex.
    digest: str = Field(max_length=64)
    # Comma-separated agent names ("*" for all) and operations.
    agents: str = Field(sa_column=Column(Text, nullable=False))
    operations: str = Field(max_length=255)
    created_at: float
    revoked_at: float | None = None


class AuditEntry(SQLModel, table=True):
    """Who did what through the gateway, including refused attempts."""

    __tablename__ = "agentpost_audit"
    __table_args__ = (Index("ix_agentpost_audit_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: float
    subject: str = Field(max_length=64)
    action: str = Field(max_length=32)
    agent: str | None = Field(default=None, max_length=64)
    message_id: str | None = Field(default=None, max_length=36)
    # ok | denied | limited | failed | timeout
    outcome: str = Field(max_length=16)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Refusals are aggregated: how many like this one the window saw (1 for the rest).
    count: int = Field(default=1, sa_column_kwargs={"server_default": "1"})


class RevokedSubject(SQLModel, table=True):
    """A subject whose credentials were revoked: its JWTs issued before then are refused."""

    __tablename__ = "agentpost_revoked_subjects"

    subject: str = Field(primary_key=True, max_length=64)
    revoked_at: float


class RateBucket(SQLModel, table=True):
    """A caller's token bucket, when the limiter keeps it in the store."""

    __tablename__ = "agentpost_rate_buckets"

    subject: str = Field(primary_key=True, max_length=64)
    tokens: float
    updated_at: float


class BrokerEpoch(SQLModel, table=True):
    """The token the sweeper last left in a broker: a broker without it lost its contents."""

    __tablename__ = "agentpost_broker_epochs"

    broker: str = Field(primary_key=True, max_length=255)
    epoch: str = Field(max_length=64)
    updated_at: float


class SweepJournal(SQLModel, table=True):
    """When the last sweep started and whether it finished: the rows a sweep marked
    handed and then died before publishing are found by its start time."""

    __tablename__ = "agentpost_sweep_journal"

    name: str = Field(primary_key=True, max_length=32)  # one row: "sweep"
    started_at: float
    finished_at: float | None = None


def table_of(model: type[SQLModel]) -> SATable:
    """The Core table behind a SQLModel class (for single-statement updates)."""
    table: Any = model.__table__  # type: ignore[attr-defined]
    return table  # type: ignore[no-any-return]
