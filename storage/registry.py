"""The agent registry and topic subscriptions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from sqlalchemy import Engine, case, func, or_, select

from storage.flow import FlowLimits
from storage.sql import (
    AGENTS,
    MESSAGES,
    SUBSCRIPTIONS,
    dialect_insert,
    status_is,
    waiting,
)
from storage.tables import Agent, Subscription

__all__ = [
    "backlog",
    "find_agent",
    "list_agents",
    "register_agents",
    "register_mailbox",
    "subscribe",
    "subscriptions",
    "unsubscribe",
]


def register_agents(
    engine: Engine,
    agents: Iterable[tuple[str, str]],
    *,
    kind: str,
    now: float,
    max_backlog: Mapping[str, int | None] | None = None,
    schemas: Mapping[str, tuple[str | None, str | None]] | None = None,
    flow: Mapping[str, FlowLimits] | None = None,
) -> None:
    """Upsert (name, queue) pairs into the registry, refreshing ``last_seen_at``, with
    each agent's ``max_backlog``, its (payload, reply) JSON Schemas and its flow limits:
    the last worker to start decides them, and a change of schema counts a new
    ``schema_version``. The circuit's and the rate's state are kept."""
    limits = max_backlog or {}
    declared_schemas = schemas or {}
    declared_flow = flow or {}
    with engine.begin() as conn:
        insert = dialect_insert(conn)
        for name, queue in agents:
            payload, reply = declared_schemas.get(name, (None, None))
            declared = {
                "kind": kind,
                "queue": queue,
                "max_backlog": limits.get(name),
                "payload_schema": payload,
                "reply_schema": reply,
                **asdict(declared_flow.get(name, FlowLimits())),
            }
            first = None if payload is None and reply is None else 1
            stmt = insert(AGENTS).values(
                name=name, registered_at=now, last_seen_at=now, schema_version=first, **declared
            )
            changed = or_(
                AGENTS.c.payload_schema.is_distinct_from(stmt.excluded.payload_schema),
                AGENTS.c.reply_schema.is_distinct_from(stmt.excluded.reply_schema),
            )
            version = case(
                (changed, func.coalesce(AGENTS.c.schema_version, 0) + 1),
                else_=AGENTS.c.schema_version,
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"],
                    set_={**declared, "last_seen_at": now, "schema_version": version},
                )
            )


def backlog(engine: Engine, receiver: str) -> int:
    """The receiver's undelivered messages (queued, running or retrying)."""

    # Two counts, each from its partial index: no index holds all three statuses.
    def count(status: Any) -> Any:
        return select(func.count()).where(MESSAGES.c.receiver == receiver, status).scalar_subquery()

    query = select(count(waiting()) + count(status_is("running")))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def find_agent(engine: Engine, name: str) -> Agent | None:
    """One registered agent, or ``None``."""
    with engine.connect() as conn:
        row = conn.execute(select(AGENTS).where(AGENTS.c.name == name)).one_or_none()
    return None if row is None else Agent.model_validate(row._mapping)


def list_agents(engine: Engine) -> list[Agent]:
    """Every registered agent, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(AGENTS).order_by(AGENTS.c.name)).all()
    return [Agent.model_validate(r._mapping) for r in rows]


def register_mailbox(
    engine: Engine,
    name: str,
    *,
    now: float,
    max_retries: int | None,
    backoff_s: float | None,
    backoff_max_s: float | None,
    max_backlog: int | None = None,
    max_concurrency: int | None = None,
    replace: bool = False,
) -> str | None:
    """Upsert a mailbox agent with its retry options and limits.

    Returns the kind of agent that holds the name instead (``"handler"``: workers
    serve it), leaving it as it is, unless ``replace``; ``None`` once registered.
    """
    options = {
        "max_retries": max_retries,
        "backoff_s": backoff_s,
        "backoff_max_s": backoff_max_s,
        "max_backlog": max_backlog,
        "max_concurrency": max_concurrency,
    }
    with engine.begin() as conn:
        kind = conn.execute(select(AGENTS.c.kind).where(AGENTS.c.name == name)).scalar()
        if kind is not None and kind != "mailbox" and not replace:
            return str(kind)
        stmt = dialect_insert(conn)(AGENTS).values(
            name=name,
            kind="mailbox",
            queue="store",
            registered_at=now,
            last_seen_at=now,
            **options,
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"kind": "mailbox", "queue": "store", "last_seen_at": now, **options},
            )
        )
    return None


def subscribe(engine: Engine, agent: str, pattern: str, *, now: float) -> bool:
    """Add a subscription; False if it existed."""
    with engine.begin() as conn:
        created = conn.execute(
            dialect_insert(conn)(SUBSCRIPTIONS)
            .values(agent=agent, pattern=pattern, created_at=now)
            .on_conflict_do_nothing(index_elements=["agent", "pattern"])
            .returning(SUBSCRIPTIONS.c.agent)
        ).scalar()
    return created is not None


def unsubscribe(engine: Engine, agent: str, pattern: str) -> bool:
    """Remove a subscription; False if there was none."""
    with engine.begin() as conn:
        removed = conn.execute(
            SUBSCRIPTIONS.delete().where(
                SUBSCRIPTIONS.c.agent == agent, SUBSCRIPTIONS.c.pattern == pattern
            )
        ).rowcount
    return bool(removed)


def subscriptions(engine: Engine) -> list[Subscription]:
    """Every subscription."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(SUBSCRIPTIONS).order_by(SUBSCRIPTIONS.c.agent, SUBSCRIPTIONS.c.pattern)
        ).all()
    return [Subscription.model_validate(r._mapping) for r in rows]
