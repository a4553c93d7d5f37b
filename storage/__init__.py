"""The store: SQLModel tables and the repository functions that read and change them.

It imports nothing of ``messaging`` or ``worker``: callers pass engines and values.
"""

from __future__ import annotations

from storage.engine import dispose_engines, engine_for
from storage.repository import (
    ACTIVE_STATUSES,
    Claim,
    Inserted,
    NewMessage,
    Outcome,
    Republish,
    Taken,
    attempts_of,
    claim,
    claim_next,
    complete,
    dead_letters,
    get_message,
    insert_messages,
    list_agents,
    mark_dead,
    outcome_of,
    overdue,
    peek,
    recover_expired,
    redrive,
    register_agents,
    register_mailbox,
    schedule_retry,
    subscribe,
    subscriptions,
    trace,
    unsubscribe,
)
from storage.schema import create_schema, drop_schema
from storage.tables import Agent, Attempt, Message, Subscription

__all__ = [
    "ACTIVE_STATUSES",
    "Agent",
    "Attempt",
    "Claim",
    "Inserted",
    "Message",
    "NewMessage",
    "Outcome",
    "Republish",
    "Subscription",
    "Taken",
    "attempts_of",
    "claim",
    "claim_next",
    "complete",
    "create_schema",
    "dead_letters",
    "dispose_engines",
    "drop_schema",
    "engine_for",
    "get_message",
    "insert_messages",
    "list_agents",
    "mark_dead",
    "outcome_of",
    "overdue",
    "peek",
    "recover_expired",
    "redrive",
    "register_agents",
    "register_mailbox",
    "schedule_retry",
    "subscribe",
    "subscriptions",
    "trace",
    "unsubscribe",
]
