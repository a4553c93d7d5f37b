"""The store: SQLModel tables and the repository functions that read and change them.

It imports nothing of ``messaging`` or ``worker``: callers pass engines and values.
"""

from __future__ import annotations

from storage.engine import dispose_engines, engine_for
from storage.migrate import SchemaBehind, current_revision, head_revision, upgrade
from storage.queries import (
    Outcome,
    attempts_of,
    dead_letters,
    get_message,
    outcome_of,
    peek,
    status_counts,
    trace,
)
from storage.registry import (
    list_agents,
    register_agents,
    register_mailbox,
    subscribe,
    subscriptions,
    unsubscribe,
)
from storage.repository import (
    Claim,
    Inserted,
    NewMessage,
    Republish,
    Taken,
    claim,
    claim_next,
    complete,
    insert_messages,
    mark_dead,
    purge,
    redrive,
    schedule_retry,
)
from storage.schema import create_schema, drop_schema
from storage.sql import ACTIVE_STATUSES
from storage.stats import AgentTotals, agent_totals
from storage.sweeps import overdue, recover_expired
from storage.tables import Agent, Attempt, Message, Subscription

__all__ = [
    "ACTIVE_STATUSES",
    "Agent",
    "AgentTotals",
    "Attempt",
    "Claim",
    "Inserted",
    "Message",
    "NewMessage",
    "Outcome",
    "Republish",
    "SchemaBehind",
    "Subscription",
    "Taken",
    "agent_totals",
    "attempts_of",
    "claim",
    "claim_next",
    "complete",
    "create_schema",
    "current_revision",
    "dead_letters",
    "dispose_engines",
    "drop_schema",
    "engine_for",
    "get_message",
    "head_revision",
    "insert_messages",
    "list_agents",
    "mark_dead",
    "outcome_of",
    "overdue",
    "peek",
    "purge",
    "recover_expired",
    "redrive",
    "register_agents",
    "register_mailbox",
    "schedule_retry",
    "status_counts",
    "subscribe",
    "subscriptions",
    "trace",
    "unsubscribe",
    "upgrade",
]
