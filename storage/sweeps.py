"""The sweeper's queries and the outbox: which rows' tasks the broker may not hold.

Each row knows when its current task was handed to the broker (``handed_at``) and
whether the sweeper sent its one spare copy for that handing (``spare_at``). The
sweeper publishes (1) rows nobody handed yet (their publisher died, or the broker
refused it), (2) one spare copy of a row overdue long enough that its task may be
lost, never a second, (3) the waiting rows whose tasks a broker lost with its
contents (a broker-epoch change, ``storage/epochs.py``), as many as its inboxes are
short of, and (4) rows whose worker died (lease expired). A handing resets the
spare; so no row has more than two tasks in the broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, update

from storage import postgres
from storage.repository import Republish
from storage.sql import (
    AGENTS,
    ATTEMPTS,
    MESSAGES,
    fenced,
    status_is,
    waiting,
)

__all__ = [
    "due_counts",
    "due_rows",
    "mark_handed",
    "marked_at",
    "overdue",
    "recover_expired",
    "republish_lost",
    "unhand",
    "unpublished",
    "unspare",
]

_REPUBLISH = (
    MESSAGES.c.id,
    MESSAGES.c.receiver,
    MESSAGES.c.priority,
    MESSAGES.c.envelope,
    MESSAGES.c.due_at,
    MESSAGES.c.created_at,
)


def mark_handed(engine: Engine, message_ids: Iterable[str], *, now: float) -> None:
    """Record that the tasks of these rows were handed to the broker."""
    ids = list(message_ids)
    if not ids:
        return
    with engine.begin() as conn:
        conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id.in_(ids), MESSAGES.c.handed_at.is_(None))
            .values(handed_at=now)
        )


def unhand(engine: Engine, message_ids: Iterable[str], *, receiver: str | None = None) -> None:
    """These rows' tasks are gone (taken by a worker that could not run them, or a
    publish that failed): the sweeper publishes them again after ``publish_grace_s``.
    With ``receiver``, only rows of that agent (a task names its receiver)."""
    where = () if receiver is None else (MESSAGES.c.receiver == receiver,)
    _unmark(engine, message_ids, *where, handed_at=None)


def unspare(engine: Engine, message_ids: Iterable[str]) -> None:
    """These rows' spare copies were never published: a later sweep may send them."""
    _unmark(engine, message_ids, spare_at=None)


def _unmark(engine: Engine, message_ids: Iterable[str], *where: Any, **values: None) -> None:
    ids = list(message_ids)
    with engine.begin() as conn:
        _update_ids(conn, ids, values, waiting(), *where)


def recover_expired(engine: Engine, *, now: float) -> list[Republish]:
    """Running rows whose lease expired: retry now, the lost attempt recorded."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                *_REPUBLISH,
                MESSAGES.c.attempts,
                MESSAGES.c.redrives,
                MESSAGES.c.claimed_by,
            ).where(
                status_is("running"),
                MESSAGES.c.lease_until < now,
                _served_by_workers(),
            )
        ).all()
        recovered: list[Republish] = []
        for row in rows:
            changed = conn.execute(
                update(MESSAGES)
                .where(fenced(row.id, row.attempts, row.created_at))
                .values(
                    status="retrying",
                    lease_until=None,
                    due_at=now,
                    updated_at=now,
                    handed_at=now,
                    spare_at=None,
                )
            ).rowcount
            if not changed:
                continue
            conn.execute(
                ATTEMPTS.insert().values(
                    message_id=row.id,
                    receiver=row.receiver,
                    message_created_at=row.created_at,
                    number=row.attempts,
                    redrive=row.redrives,
                    worker=row.claimed_by,
                    ended_at=now,
                    outcome="lost",
                    error=postgres.LOST_ERROR,
                )
            )
            recovered.append(
                Republish(
                    row.id, row.receiver, row.priority, row.envelope, created_at=row.created_at
                )
            )
    return recovered


def unpublished(
    engine: Engine, *, now: float, grace_s: float, limit: int = 1000
) -> list[Republish]:
    """Active rows nobody handed to the broker within ``grace_s`` of their last change.

    They are marked handed (and their spare used: the publisher may yet be alive and
    hand them too), so each comes back once.
    """
    return _take(
        engine,
        MESSAGES.c.handed_at.is_(None),
        MESSAGES.c.updated_at < now - grace_s,
        values={"handed_at": now, "spare_at": now},
        limit=limit,
    )


def marked_at(
    engine: Engine,
    *,
    at: float,
    now: float,
    counted_at: float,
    in_broker: Mapping[str, int | None],
) -> list[Republish]:
    """The waiting rows a sweep that started at ``at`` marked and may never have
    published (``storage/journal.py``), handed anew with their spare used.

    It may have died before its publish or after it (its store gone before it could
    close its journal): ``in_broker``, each receiver's inbox counted at ``counted_at``,
    says which. Of a receiver's marked rows, as many go out as its inbox is short of
    tasks for its waiting rows (all of them where the inbox cannot be counted); the
    tasks that did go out before it died make a second copy at the most, never a third.
    """
    marked = or_(MESSAGES.c.handed_at == at, MESSAGES.c.spare_at == at)
    # A sweep publishes its rows in order of due time, so one that died midway published
    # the first ones: the last ones are taken (a prefix picked would repeat the tasks it
    # sent and leave the rest with none).
    picked = _hand_missing(
        engine,
        counted_at,
        in_broker,
        [marked],
        order_by=[MESSAGES.c.due_at.desc()],
        values={"handed_at": now, "spare_at": now},
    )
    # The marked rows left are taken to have their tasks (the inbox counts them). Their
    # spare, which the dead sweep used, goes back: a count can be fooled by another
    # row's second copy, and a row whose task is missing after all then still gets its
    # one spare copy (step 4 of the sweep) instead of waiting for ever.
    with engine.begin() as conn:
        conn.execute(
            update(MESSAGES)
            .where(waiting(), MESSAGES.c.spare_at == at, MESSAGES.c.handed_at == at)
            .values(spare_at=None)
        )
    return picked


def overdue(
    engine: Engine, *, now: float, grace_s: float, receiver: str, limit: int
) -> list[Republish]:
    """The oldest ``limit`` rows of ``receiver`` still waiting ``grace_s`` after they were
    due and after their last handing: their one spare copy.

    The sweeper asks only for as many as the broker is short of (waiting rows minus
    the inbox's tasks): a lost task's row stays the oldest, so it is among them.
    """
    old = now - grace_s
    return _take(
        engine,
        MESSAGES.c.receiver == receiver,
        MESSAGES.c.spare_at.is_(None),
        MESSAGES.c.due_at < old,
        or_(MESSAGES.c.handed_at.is_(None), MESSAGES.c.handed_at < old),
        values={"spare_at": now},
        limit=limit,
    )


def republish_lost(
    engine: Engine,
    *,
    now: float,
    counted_at: float,
    in_broker: Mapping[str, int | None],
    receiver: str | None = None,
) -> list[Republish]:
    """The waiting rows (of ``receiver``, or all) a broker lost, handed anew.

    ``in_broker`` is each receiver's inbox depth, counted at ``counted_at`` after the
    loss (``None``: not countable). The tasks there were published after the loss, so
    of a receiver's waiting rows, as many as its inbox is short of are lost: the ones
    handed longest ago.
    """
    return _hand_missing(
        engine,
        counted_at,
        in_broker,
        [MESSAGES.c.receiver == receiver] if receiver is not None else [],
        order_by=[func.coalesce(MESSAGES.c.handed_at, 0), MESSAGES.c.due_at],
        values={"handed_at": now, "spare_at": None},
    )


def _hand_missing(
    engine: Engine,
    counted_at: float,
    in_broker: Mapping[str, int | None],
    where: list[Any],
    *,
    order_by: list[Any],
    values: dict[str, Any],
) -> list[Republish]:
    """Of each receiver's waiting rows matching ``where``, the first ``order_by`` as
    many as its inbox is short of (``_missing``), updated with ``values``."""
    with engine.begin() as conn:
        rows: list[Any] = []
        for name, missing in _missing(conn, counted_at, in_broker, *where).items():
            rows += conn.execute(
                select(*_REPUBLISH)
                .where(waiting(), *where, MESSAGES.c.receiver == name)
                .order_by(*order_by)
                .limit(missing)
            ).all()
        _update_ids(conn, [r.id for r in rows], values)
    return _republished(rows)


def _missing(
    conn: Connection, counted_at: float, in_broker: Mapping[str, int | None], *where: Any
) -> dict[str, int]:
    """How many tasks each receiver's inbox (counted at ``counted_at``; ``None``: not
    countable, so none held) is short of its waiting rows, for the receivers that have
    waiting rows matching ``where``.

    Rows claimed since the count took their task out of the inbox and are no longer
    waiting; they are subtracted from the depth, so a race can only hand a row a second
    copy, never leave a lost one without.
    """
    by_receiver = (MESSAGES.c.receiver, func.count())
    concerned = select(MESSAGES.c.receiver).where(waiting(), *where).distinct()
    waiting_rows = conn.execute(
        select(*by_receiver)
        .where(waiting(), _served_by_workers(), MESSAGES.c.receiver.in_(concerned))
        .group_by(MESSAGES.c.receiver)
    ).all()
    claimed_since = conn.execute(
        select(*by_receiver)
        .where(
            # Running or finished since: each through its partial index.
            or_(
                and_(status_is("running"), MESSAGES.c.updated_at >= counted_at),
                and_(status_is("delivered", "dead"), MESSAGES.c.finished_at >= counted_at),
            ),
            MESSAGES.c.receiver.in_(concerned),
        )
        .group_by(MESSAGES.c.receiver)
    ).all()
    moved = {str(name): int(count) for name, count in claimed_since}
    missing: dict[str, int] = {}
    for name, count in waiting_rows:
        held = max(0, (in_broker.get(name) or 0) - moved.get(name, 0))
        if count > held:
            missing[str(name)] = count - held
    return missing


def due_counts(engine: Engine, *, now: float) -> dict[str, int]:
    """Messages each receiver served by workers has due now (queued or retrying)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(MESSAGES.c.receiver, func.count())
            .where(waiting(), MESSAGES.c.due_at <= now, _served_by_workers())
            .group_by(MESSAGES.c.receiver)
        ).all()
    return {receiver: int(count) for receiver, count in rows}


def due_rows(engine: Engine, receiver: str, *, now: float, limit: int) -> list[Republish]:
    """The most urgent, then oldest, due messages of ``receiver`` (nothing changed)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(*_REPUBLISH)
            .where(
                MESSAGES.c.receiver == receiver,
                waiting(),
                MESSAGES.c.due_at <= now,
            )
            .order_by(MESSAGES.c.priority.desc(), MESSAGES.c.created_at, MESSAGES.c.id)
            .limit(limit)
        ).all()
    return [
        Republish(r.id, r.receiver, r.priority, r.envelope, created_at=r.created_at) for r in rows
    ]


def _take(engine: Engine, *where: Any, values: dict[str, Any], limit: int) -> list[Republish]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(*_REPUBLISH)
            .where(waiting(), _served_by_workers(), *where)
            .order_by(MESSAGES.c.due_at)
            .limit(limit)
        ).all()
        _update_ids(conn, [r.id for r in rows], values)
    return _republished(rows)


def _republished(rows: Sequence[Any]) -> list[Republish]:
    return [
        Republish(r.id, r.receiver, r.priority, r.envelope, r.due_at, r.created_at) for r in rows
    ]


def _served_by_workers() -> Any:
    # Mailbox agents pull from the store: their rows are never published to a queue.
    mailboxes = select(AGENTS.c.name).where(AGENTS.c.kind == "mailbox")
    return MESSAGES.c.receiver.not_in(mailboxes)


def _update_ids(conn: Connection, ids: list[str], values: dict[str, Any], *where: Any) -> None:
    """One UPDATE of these rows per 1,000 ids (the parameter lists stay bounded)."""
    for start in range(0, len(ids), 1000):
        conn.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id.in_(ids[start : start + 1000]), *where)
            .values(values)
        )
