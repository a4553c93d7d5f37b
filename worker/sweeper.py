"""The sweeper: republish what the broker lost, and only that.

Every sweep, in this order:

0. a sweep that died: a sweeper marks rows handed in the store before it publishes
   their tasks; if the last sweep never finished (``storage/journal.py``), the rows it
   marked are published again now, a sweep interval later, not left looking handed:
   as many as the inboxes, counted now, lack (it may have died after its publish, its
   store gone before it could record its end), the last marked first (it published in
   order of due time); the ones left get their spare back;
1. broker loss: the broker no longer holds the epoch token the store remembers
   (Redis restarted empty or flushed, the embedded broker's folders wiped), or a
   RabbitMQ inbox was deleted: the waiting messages whose tasks went with it are
   republished, retries with their remaining countdown, within two sweep intervals
   of the loss. Which ones: each inbox, counted after the loss, holds only tasks
   published since, so as many rows as it is short of, those handed longest ago
   (the first sweep of a deployment only leaves the first token);
2. dead workers: running rows whose lease expired are retried now, the lost attempt
   recorded (a worker killed mid-handler: the message runs again one lease later);
3. the outbox: messages nobody handed to the broker within ``publish_grace_s`` (their
   sender died between the commit and the publish, or the broker refused it);
4. one spare copy, never a second, of a message still waiting ``redeliver_after_s``
   after it was due and after its last handing, for as many such messages as the
   receiver's inbox is short of tasks (a task dropped some other way: a purge, a
   worker that died holding a retry; a long backlog alone gets none);
5. on the embedded broker, whose tasks are tokens for any due message of their
   receiver: as many tokens as the receiver has messages due for ``publish_grace_s``,
   counting those waiting;
6. the counters' fold (``storage/stats.py``), then retention: at most ``prune_batch``
   delivered messages finished more than ``retain_delivered_s`` ago, and as many dead
   ones past ``retain_dead_s``, deleted with their attempts (``storage/retention.py``;
   on PostgreSQL a week whose every row is past its window goes first, whole);
7. on PostgreSQL, the partitions of the weeks up to ``storage.AHEAD_S`` ahead
   (``storage/partitions.py``), so a send never waits to make one.

A sweep the broker fails under (a restart, a time-out) publishes nothing twice: a
failed publish takes back its rows' marks and closes the journal, and a failed count
leaves what needed it to the next sweep (a failed count is never an empty inbox).

One sweep runs at a time (``storage.sweep_lock``): two that overlap would judge the
same rows from a state the other is changing. No message ever has more than two
tasks in the broker, however old the backlog and
whatever the sweep settings: republishing is safe because ``deliver`` claims before
it runs, and bounded because a row records each handing and its one spare.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

import storage
from wire.app import AgentpostCelery
from wire.brokers import profile_for
from wire.epoch import epoch_key, new_epoch, read_marker, restore_missing_inboxes, write_marker
from wire.inbox import inbox_depths
from wire.publish import DeliveryTask, publish_deliveries

__all__ = ["SweepReport", "sweep"]

log = logging.getLogger("agentpost.sweeper")


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep republished, by cause."""

    recovered: int  # running rows of dead workers
    republished: int  # unpublished rows and spare copies
    lost: int = 0  # waiting rows of a broker that lost its contents


def sweep(app: AgentpostCelery) -> SweepReport:
    """Run one sweep now (or none, if another sweep holds the store's sweep lock)."""
    engine = storage.engine_for(app.settings.database)
    with storage.sweep_lock(engine) as held:
        if not held:
            log.info("sweeper: another sweep is running; this one is skipped")
            return SweepReport(0, 0, 0)
        return _sweep(app, engine)


class _TakenBack(Exception):
    """A publish failed and the marks of its rows were taken back: no row is left
    looking handed without its task."""


def _sweep(app: AgentpostCelery, engine: Engine) -> SweepReport:
    now = time.time()
    unfinished = storage.begin_sweep(engine, now=now)
    try:
        return _steps(app, engine, now, unfinished)
    except _TakenBack:
        # What this sweep published before the failure went out: left unfinished, the
        # journal would have the next sweep publish every row of it again.
        storage.end_sweep(engine, started_at=now, now=time.time())
        raise


def _steps(
    app: AgentpostCelery, engine: Engine, now: float, unfinished: float | None
) -> SweepReport:
    settings = app.settings
    if unfinished is not None:
        # Published before the inboxes are counted below, so they count as held.
        redone = _redo(app, engine, unfinished, now)
        _publish(app, engine, redone, now, release=storage.unhand)
        log.warning(
            "sweeper: the last sweep did not finish; %d of its task(s) published again",
            len(redone),
        )
    lost = _broker_losses(app, engine, now)
    recovered = storage.recover_expired(engine, now=now)
    unpublished = storage.unpublished(engine, now=now, grace_s=settings.publish_grace_s)
    rows = [*lost, *recovered, *unpublished]
    _publish(app, engine, rows, now, release=storage.unhand)
    spares = _spares(app, engine, now)
    _publish(app, engine, spares, now, release=storage.unspare)
    tokens = (
        0
        if profile_for(settings.broker).has_priorities
        else _top_up_tokens(app, engine, now - settings.publish_grace_s)
    )
    storage.end_sweep(engine, started_at=now, now=time.time())
    _prune(app, engine, now)
    _partitions_ahead(engine, now)
    if rows or spares or tokens:
        log.warning(
            "sweeper: %d message(s) of a broker that lost them, %d lost attempt(s), "
            "%d unpublished, %d spare cop(ies), %d token(s) republished",
            len(lost),
            len(recovered),
            len(unpublished),
            len(spares),
            tokens,
        )
    return SweepReport(len(recovered), len(unpublished) + len(spares) + tokens, len(lost))


def _redo(
    app: AgentpostCelery, engine: Engine, unfinished: float, now: float
) -> list[storage.Republish]:
    """The rows the unfinished sweep marked whose tasks the inboxes lack: it may have
    died before its publish, or after it with the store gone (a crashed database)
    before it could close its journal. Uncountable inboxes lack them all."""
    counted_at = time.time()
    depths = _count(app, _handlers(engine)) or {}
    return storage.marked_at(
        engine, at=unfinished, now=now, counted_at=counted_at, in_broker=depths
    )


def _prune(app: AgentpostCelery, engine: Engine, now: float) -> None:
    """The counters' fold, then retention: one bounded batch of each finished status
    past its window."""
    settings = app.settings
    storage.fold(engine, now=now, lag_s=settings.rollup_lag_s)
    delivered, dead = settings.retain_delivered_s, settings.retain_dead_s
    if not (delivered or dead):
        return
    pruned = storage.prune(
        engine,
        delivered_before=now - delivered if delivered else None,
        dead_before=now - dead if dead else None,
        limit=settings.prune_batch,
        lag_s=settings.rollup_lag_s,
    )
    if pruned.messages:
        log.info(
            "sweeper: retention deleted %d finished message(s) and %d attempt(s)",
            pruned.messages,
            pruned.attempts,
        )


def _partitions_ahead(engine: Engine, now: float) -> None:
    try:
        made = storage.ensure_partitions(engine, now, now + storage.AHEAD_S)
    except OperationalError as exc:  # its lock was busy: the next sweep makes them
        log.warning("sweeper: partitions ahead not made this time: %s", exc.orig)
        return
    if made:
        log.info("sweeper: made %d partition(s) for the weeks ahead", made)


def _publish(
    app: AgentpostCelery,
    engine: Engine,
    rows: list[storage.Republish],
    now: float,
    *,
    release: Callable[[Engine, Iterable[str]], None],
) -> None:
    """Publish the rows' tasks; if the broker fails midway, take back their marks.

    The rows were marked handed (or spared) before the publish: left so, a failed
    publish (a broker restarting under the sweep) would leave them waiting for a
    handing that never happened. Taken back, a later sweep publishes them again; the
    tasks that did go out before the failure make a second copy at the most.
    """
    try:
        publish_deliveries(app, [DeliveryTask.of(row, now=now) for row in rows])
    except Exception as failed:
        log.warning("sweeper: publishing %d task(s) failed; a later sweep retries", len(rows))
        try:
            release(engine, [row.message_id for row in rows])
        except Exception as exc:  # the store down too: the journal has the marks redone
            log.warning("sweeper: could not take back the marks of %d row(s): %s", len(rows), exc)
            raise
        raise _TakenBack(f"publishing {len(rows)} task(s) failed: {failed}") from failed


def _spares(app: AgentpostCelery, engine: Engine, now: float) -> list[storage.Republish]:
    """One spare copy for the rows whose tasks the broker is short of.

    A row still waiting ``redeliver_after_s`` after it was due may have lost its task
    (a purge, a worker that died holding a retry) or only sit in a long backlog. The
    inbox says which: a receiver whose inbox holds at least as many tasks as it has
    such rows is not short of any, and gets no copies; one that is short gets copies
    of its oldest rows (a lost task's row stays the oldest). A broker that cannot
    count gets a copy of each, once per handing.
    """
    grace_s = app.settings.redeliver_after_s
    waiting = storage.due_counts(engine, now=now - grace_s)
    depths = _count(app, sorted(waiting)) if waiting else None
    if depths is None:
        return []
    spares: list[storage.Republish] = []
    for receiver, count in sorted(waiting.items()):
        depth = depths.get(receiver)
        short = count if depth is None else count - depth
        if short > 0:
            spares += storage.overdue(
                engine, now=now, grace_s=grace_s, receiver=receiver, limit=short
            )
    return spares


def _top_up_tokens(app: AgentpostCelery, engine: Engine, due_by: float) -> int:
    """On a broker that cannot order (the embedded one), a task is a token for the
    receiver's most urgent due message, and any token serves any message: what must
    hold is tokens >= due messages. A token can be spent finding nothing (a killed
    worker's task requeued while its row's lease still runs), so count and top up.

    Only messages due since ``due_by`` count: a token a worker has fetched but not yet
    run (a retry's countdown just ended, a busy pool) is out of the folder while its
    message is due, and topping that up would only make a duplicate."""
    now = time.time()
    due = storage.due_counts(engine, now=due_by)
    waiting = _count(app, sorted(due)) if due else None
    if waiting is None:
        return 0
    rows = [
        row
        for receiver, count in sorted(due.items())
        if (missing := count - (waiting.get(receiver) or 0)) > 0
        for row in storage.due_rows(engine, receiver, now=due_by, limit=missing)
    ]
    try:
        publish_deliveries(app, [DeliveryTask.of(row, now=now) for row in rows])
    except Exception as exc:  # nothing was marked for them: the next sweep counts again
        log.warning("sweeper: publishing %d token(s) failed: %s", len(rows), exc)
        return 0
    return len(rows)


def _broker_losses(app: AgentpostCelery, engine: Engine, now: float) -> list[storage.Republish]:
    """The waiting rows the broker lost (and the epoch marker renewed), if it lost any."""
    settings = app.settings
    key = epoch_key(settings)
    expected = storage.broker_epoch(engine, key)
    if expected is not None and read_marker(app, expected) == expected:
        lost: list[storage.Republish] = []
        for agent in restore_missing_inboxes(app, _handlers(engine)):
            log.warning("sweeper: the inbox of %r is gone from the broker", agent)
            lost += _lost(app, engine, now, [agent], receiver=agent) or []
        return lost
    # No marker (or another one): whatever the broker held is gone. The first sweep of
    # a deployment only leaves the first marker: what a broker lost before it is left to
    # the spare copies (redeliver_after_s), rather than duplicating every waiting
    # message each time a deployment starts.
    token = new_epoch()
    if expected is None:
        if storage.swap_broker_epoch(engine, key, expected=None, new=token, now=now):
            write_marker(app, token, expected)
        return []
    log.warning("sweeper: the broker lost its contents (epoch marker gone)")
    # The lost rows are marked handed *before* the new epoch is recorded: a sweeper
    # killed in between leaves the loss for the next sweep to see again. (The other
    # order forgot it: the next sweep found the new marker and republished nothing.)
    found = _lost(app, engine, now, _handlers(engine))
    if found is None:
        return []  # the old epoch stays: the next sweep sees the loss again
    if storage.swap_broker_epoch(engine, key, expected=expected, new=token, now=now):
        write_marker(app, token, expected)
    return found


def _handlers(engine: Engine) -> list[str]:
    return [a.name for a in storage.list_agents(engine) if a.kind == "handler"]


def _lost(
    app: AgentpostCelery,
    engine: Engine,
    now: float,
    agents: list[str],
    *,
    receiver: str | None = None,
) -> list[storage.Republish] | None:
    """The rows whose tasks went with the broker: what the inboxes, counted now, lack
    (tasks published since the loss stay the only copy of their rows); ``None`` if the
    broker would not be counted."""
    counted_at = time.time()
    depths = _count(app, agents)
    if depths is None:
        return None
    return storage.republish_lost(
        engine, now=now, counted_at=counted_at, in_broker=depths, receiver=receiver
    )


def _count(app: AgentpostCelery, agents: list[str]) -> dict[str, int | None] | None:
    """The inboxes' depths, or ``None`` if the broker failed to say (a restart, a time-out).

    A failed count is never taken for empty inboxes (that would copy every waiting row),
    and never aborts the sweep after it published (that would leave the journal open, and
    the next sweep would publish all of it again): what needed the count waits a sweep.
    """
    try:
        return inbox_depths(app, agents)
    except Exception as exc:
        log.warning("sweeper: could not count the inboxes (%s); the next sweep will", exc)
        return None
