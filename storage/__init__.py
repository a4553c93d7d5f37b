"""The store: SQLModel tables and the repository functions that read and change them.

It imports nothing of ``messaging`` or ``worker``: callers pass engines and values.
"""

from __future__ import annotations

from storage.audit import audit_entries, count_audited, record_audit
from storage.buckets import take_token
from storage.claims import Claim, Taken, claim, claim_next, take
from storage.completion import Delivered, complete, complete_many, mark_dead, schedule_retry
from storage.credentials import add_key, find_key, list_keys, revoke_keys, subject_revoked_at
from storage.engine import dispose_engines, engine_for
from storage.epochs import broker_epoch, swap_broker_epoch
from storage.flow import (
    SLOT_EARLY_S,
    Busy,
    Circuit,
    FlowLimits,
    Later,
    circuit_failed,
    circuit_of,
    circuit_ok,
    hold,
    rate_slot,
    release_probe,
    take_limited,
    take_probe,
    take_rated,
    take_slot,
    use_slot,
)
from storage.journal import begin_sweep, end_sweep
from storage.locks import sweep_lock
from storage.migrate import SchemaBehind, current_revision, has_store, head_revision, upgrade
from storage.notify import Watch, watch_finished
from storage.owned import create_owned_tables
from storage.queries import (
    ReplyState,
    attempts_of,
    chain_starter,
    dead_letters,
    get_message,
    ids_starting,
    peek,
    reply_state,
    status_counts,
    trace,
)
from storage.registry import (
    backlog,
    find_agent,
    list_agents,
    register_agents,
    register_mailbox,
    subscribe,
    subscriptions,
    unsubscribe,
)
from storage.repository import Inserted, NewMessage, Republish, insert_messages, purge, redrive
from storage.retention import Pruned, prunable, prune
from storage.schema import create_schema
from storage.sql import ACTIVE_STATUSES
from storage.stats import LATENCY_BOUNDS_S, AgentTotals, agent_totals
from storage.sweeps import (
    due_counts,
    due_rows,
    mark_handed,
    marked_at,
    overdue,
    recover_expired,
    republish_lost,
    unhand,
    unpublished,
    unspare,
)
from storage.tables import (
    Agent,
    ApiKey,
    Attempt,
    AuditEntry,
    BrokerEpoch,
    Message,
    RateBucket,
    Subscription,
)

__all__ = [
    "ACTIVE_STATUSES",
    "LATENCY_BOUNDS_S",
    "SLOT_EARLY_S",
    "Agent",
    "AgentTotals",
    "ApiKey",
    "Attempt",
    "AuditEntry",
    "BrokerEpoch",
    "Busy",
    "Circuit",
    "Claim",
    "Delivered",
    "FlowLimits",
    "Inserted",
    "Later",
    "Message",
    "NewMessage",
    "Pruned",
    "RateBucket",
    "ReplyState",
    "Republish",
    "SchemaBehind",
    "Subscription",
    "Taken",
    "Watch",
    "add_key",
    "agent_totals",
    "attempts_of",
    "audit_entries",
    "backlog",
    "begin_sweep",
    "broker_epoch",
    "chain_starter",
    "circuit_failed",
    "circuit_of",
    "circuit_ok",
    "claim",
    "claim_next",
    "complete",
    "complete_many",
    "count_audited",
    "create_owned_tables",
    "create_schema",
    "current_revision",
    "dead_letters",
    "dispose_engines",
    "due_counts",
    "due_rows",
    "end_sweep",
    "engine_for",
    "find_agent",
    "find_key",
    "get_message",
    "has_store",
    "head_revision",
    "hold",
    "ids_starting",
    "insert_messages",
    "list_agents",
    "list_keys",
    "mark_dead",
    "mark_handed",
    "marked_at",
    "overdue",
    "peek",
    "prunable",
    "prune",
    "purge",
    "rate_slot",
    "record_audit",
    "recover_expired",
    "redrive",
    "register_agents",
    "register_mailbox",
    "release_probe",
    "reply_state",
    "republish_lost",
    "revoke_keys",
    "schedule_retry",
    "status_counts",
    "subject_revoked_at",
    "subscribe",
    "subscriptions",
    "swap_broker_epoch",
    "sweep_lock",
    "take",
    "take_limited",
    "take_probe",
    "take_rated",
    "take_slot",
    "take_token",
    "trace",
    "unhand",
    "unpublished",
    "unspare",
    "unsubscribe",
    "upgrade",
    "use_slot",
    "watch_finished",
]
