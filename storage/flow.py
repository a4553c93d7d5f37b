"""Flow control kept in the store: what every worker of a deployment shares about an agent.

- **Concurrency**: a claim of a limited agent counts its running handlers (live
  leases) and claims only below the limit, both in one transaction that first locks
  the agent's registry row (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already takes the
  one write lock), so two workers cannot both see the last free place.
- **Rate**: GCRA (the generic cell rate algorithm): the agent's row keeps the time of
  its next free slot; one UPDATE takes the slot and moves it on by the interval. A
  delivery whose slot is later keeps it on its row (``slot_at``) and runs then
  without taking another: waiting deliveries never compete for the same slot.
- **Circuit**: consecutive failures per agent; at the threshold the circuit opens
  until a cool-down ends, then one delivery takes the probe (a conditional UPDATE,
  with a lease in case its worker dies) and its outcome closes or reopens it.
- **Holding** a delivery moves its row's ``due_at`` to when it may run (no attempt
  counted, nothing claimed), and marks it handed: its task comes back then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, case, func, literal, select, update

from storage import postgres
from storage.claims import Taken, claim_next_on, claim_of, claim_row_on
from storage.sql import AGENTS, MESSAGES, claimable, status_is, waiting

__all__ = [
    "Busy",
    "Circuit",
    "FlowLimits",
    "Later",
    "circuit_failed",
    "circuit_of",
    "circuit_ok",
    "hold",
    "rate_slot",
    "release_probe",
    "take_limited",
    "take_probe",
    "take_rated",
    "take_slot",
    "use_slot",
]

# A slot this close ahead counts as now: Celery runs a countdown's task a few ms early
# or late, and waiting that long again would only cost a round trip through the broker.
SLOT_EARLY_S = 0.02


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """What an agent declared about its flow, as registered (None: no such limit)."""

    max_concurrency: int | None = None
    rate_per_s: float | None = None
    circuit_after: int | None = None
    circuit_cooldown_s: float | None = None


@dataclass(frozen=True, slots=True)
class Busy:
    """A claim refused: the agent already runs ``running`` handlers, its limit."""

    running: int


@dataclass(frozen=True, slots=True)
class Circuit:
    """An agent's circuit: ``state`` None (closed), ``open`` or ``half-open``."""

    state: str | None
    failures: int
    until: float | None
    error: str | None


def take_limited(
    engine: Engine,
    message_id: str | None,
    receiver: str,
    *,
    limit: int,
    worker: str,
    now: float,
    lease_s: float,
) -> Taken | Busy | None:
    """Claim the message (``None``: the receiver's next due one) if fewer than ``limit``
    handlers of ``receiver`` run now; ``Busy`` if not, ``None`` if it is not claimable."""
    if message_id is not None and engine.dialect.name == "postgresql":
        got = postgres.claim_limited(
            engine,
            message_id,
            receiver=receiver,
            limit=limit,
            worker=worker,
            now=now,
            lease_s=lease_s,
        )
        if got.attempts is None:
            return Busy(int(got.running)) if got.running >= limit else None
        claim = claim_of(got)
        return Taken(message_id, claim, got.envelope, got.expires_at)
    with _begin(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Claims of this agent queue here; the count below then sees every one
            # committed before (each statement reads a fresh snapshot under READ
            # COMMITTED).
            conn.execute(select(AGENTS.c.name).where(AGENTS.c.name == receiver).with_for_update())
        running = conn.execute(
            select(func.count()).where(
                MESSAGES.c.receiver == receiver,
                status_is("running"),
                MESSAGES.c.lease_until >= now,
            )
        ).scalar_one()
        if running >= limit:
            return Busy(int(running))
        if message_id is None:
            return claim_next_on(conn, receiver, worker=worker, now=now, lease_s=lease_s)
        row = claim_row_on(conn, message_id, receiver, worker=worker, now=now, lease_s=lease_s)
    if row is None:
        return None
    claim = claim_of(row)
    return Taken(message_id, claim, row.envelope, row.expires_at)


def rate_slot(
    engine: Engine, message_id: str | None, receiver: str, *, interval_s: float, now: float
) -> float | None:
    """None if the message (``None``: any of the receiver's waiting ones) holds a due slot,
    given back to run on; else the agent's next slot, taken for it."""
    if use_slot(engine, message_id, receiver, now=now):
        return None
    return take_slot(engine, receiver, interval_s=interval_s, now=now)


@dataclass(frozen=True, slots=True)
class Later:
    """A claim refused: the message's slot (taken for it) is ``at``, not yet."""

    at: float


def take_rated(
    engine: Engine,
    message_id: str | None,
    receiver: str,
    *,
    interval_s: float,
    worker: str,
    now: float,
    lease_s: float,
) -> Taken | Later | None:
    """Claim a rate-limited agent's message (``None``: its next due one) on the slot it
    holds or on the agent's next one; ``Later`` if that slot is not yet, ``None`` if the
    message is not claimable."""
    soon = now + SLOT_EARLY_S
    if message_id is not None and engine.dialect.name == "postgresql":
        got = postgres.claim_rated(
            engine,
            message_id,
            receiver=receiver,
            interval_s=interval_s,
            worker=worker,
            now=now,
            soon=soon,
            lease_s=lease_s,
        )
        if got.attempts is not None:
            claim = claim_of(got)
            return Taken(message_id, claim, got.envelope, got.expires_at)
        return Later(got.slot) if got.slot is not None and got.slot > soon else None
    slot = rate_slot(engine, message_id, receiver, interval_s=interval_s, now=now)
    if slot is not None and slot > soon:
        return Later(slot)
    with _begin(engine) as conn:
        if message_id is None:
            return claim_next_on(conn, receiver, worker=worker, now=now, lease_s=lease_s)
        row = claim_row_on(conn, message_id, receiver, worker=worker, now=now, lease_s=lease_s)
    if row is None:
        return None
    claim = claim_of(row)
    return Taken(message_id, claim, row.envelope, row.expires_at)


def take_slot(engine: Engine, agent: str, *, interval_s: float, now: float) -> float:
    """Take the agent's next delivery slot: when this delivery may run (``now`` or later)."""
    start = case(
        (func.coalesce(AGENTS.c.rate_tat, 0.0) > now, AGENTS.c.rate_tat), else_=literal(now)
    )
    with _begin(engine) as conn:
        tat = conn.execute(
            update(AGENTS)
            .where(AGENTS.c.name == agent)
            .values(rate_tat=start + interval_s)
            .returning(AGENTS.c.rate_tat)
        ).scalar()
    return now if tat is None else float(tat) - interval_s


def use_slot(engine: Engine, message_id: str | None, receiver: str, *, now: float) -> bool:
    """Give back the due slot the message (``None``: any of the receiver's waiting ones)
    holds, to run on it; False if it holds none that is due."""
    where = [
        MESSAGES.c.receiver == receiver,
        waiting(),
        MESSAGES.c.slot_at <= now + SLOT_EARLY_S,
    ]
    if message_id is None:
        one = select(MESSAGES.c.id).where(*where).limit(1).scalar_subquery()
        where.append(MESSAGES.c.id == one)
    else:
        where.append(MESSAGES.c.id == message_id)
    with _begin(engine) as conn:
        return bool(conn.execute(update(MESSAGES).where(*where).values(slot_at=None)).rowcount)


def hold(
    engine: Engine,
    message_id: str | None,
    receiver: str,
    *,
    until: float,
    now: float,
    slot: float | None = None,
) -> bool:
    """Hold a waiting message (``None``: the receiver's next due one) until ``until``,
    keeping ``slot`` if it took one; False if there is no such waiting message."""
    values: dict[str, Any] = {
        "due_at": until,
        "handed_at": now,  # its task is on its way back (the caller publishes it)
        "spare_at": None,
        "updated_at": now,
    }
    if slot is not None:
        values["slot_at"] = slot
    where = [MESSAGES.c.receiver == receiver, waiting()]
    if message_id is None:
        next_due = (
            select(MESSAGES.c.id)
            .where(MESSAGES.c.receiver == receiver, claimable(now))
            .order_by(MESSAGES.c.priority.desc(), MESSAGES.c.created_at, MESSAGES.c.id)
            .limit(1)
            .scalar_subquery()
        )
        where.append(MESSAGES.c.id == next_due)
    else:
        where.append(MESSAGES.c.id == message_id)
    with _begin(engine) as conn:
        return bool(conn.execute(update(MESSAGES).where(*where).values(values)).rowcount)


def circuit_of(engine: Engine, agent: str) -> Circuit | None:
    """The agent's circuit, or None if the agent is not registered."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                AGENTS.c.circuit_state,
                AGENTS.c.circuit_failures,
                AGENTS.c.circuit_until,
                AGENTS.c.circuit_error,
            ).where(AGENTS.c.name == agent)
        ).one_or_none()
    if row is None:
        return None
    failures = row.circuit_failures or 0
    return Circuit(row.circuit_state, failures, row.circuit_until, row.circuit_error)


def take_probe(engine: Engine, agent: str, *, now: float, lease_s: float) -> bool:
    """Become the probe of an open circuit whose cool-down ended (or whose last probe's
    lease did): one delivery wins, the rest keep waiting."""
    with _begin(engine) as conn:
        won = conn.execute(
            update(AGENTS)
            .where(
                AGENTS.c.name == agent,
                AGENTS.c.circuit_state.in_(("open", "half-open")),
                AGENTS.c.circuit_until <= now,
            )
            .values(circuit_state="half-open", circuit_until=now + lease_s)
        ).rowcount
    return bool(won)


def release_probe(engine: Engine, agent: str, *, now: float) -> None:
    """The probe never ran (its message was not claimable): the next delivery probes."""
    with _begin(engine) as conn:
        conn.execute(
            update(AGENTS)
            .where(AGENTS.c.name == agent, AGENTS.c.circuit_state == "half-open")
            .values(circuit_state="open", circuit_until=now)
        )


def circuit_failed(
    engine: Engine, agent: str, *, after: int, cooldown_s: float, now: float, error: str
) -> int | None:
    """Count a failed attempt; the failures in a row if it opened the circuit (the
    threshold reached, or the probe failed), else None."""
    with _begin(engine) as conn:
        row = _locked(conn, agent)
        if row is None:
            return None
        failures = (row.circuit_failures or 0) + 1
        opens = row.circuit_state == "half-open" or (
            row.circuit_state is None and failures >= after
        )
        values: dict[str, Any] = {"circuit_failures": failures}
        if opens:
            values |= {
                "circuit_state": "open",
                "circuit_until": now + cooldown_s,
                "circuit_error": error,
            }
        conn.execute(update(AGENTS).where(AGENTS.c.name == agent).values(values))
    return failures if opens else None


def circuit_ok(engine: Engine, agent: str) -> bool:
    """A delivery succeeded: no failures in a row, the circuit closed. True if it was
    open or half-open (this was the probe)."""
    with _begin(engine) as conn:
        row = _locked(conn, agent)
        if row is None or (row.circuit_state is None and not row.circuit_failures):
            return False
        conn.execute(
            update(AGENTS)
            .where(AGENTS.c.name == agent)
            .values(circuit_state=None, circuit_failures=0, circuit_until=None)
        )
    return row.circuit_state is not None


@contextmanager
def _begin(engine: Engine) -> Iterator[Connection]:
    """A transaction whose commit does not wait for its WAL flush (on PostgreSQL).

    These commits are most of what flow control costs a delivery (a flush each, waited
    for while the agent's row is locked). What a crash of the database can lose is the
    last moment of flow state (a slot, a failure counted, a hold), never a message; and
    a claim made here is written to the WAL before any completion of it, whose own
    flush then makes it durable too.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        yield conn


def _locked(conn: Connection, agent: str) -> Any:
    query = select(AGENTS.c.circuit_state, AGENTS.c.circuit_failures).where(AGENTS.c.name == agent)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one_or_none()
