"""The store's race-deciding statements, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

import storage
from messaging import Settings
from tests.conftest import AGENTPOST, ROOT, new_row, stored_row
from wire import create_app
from worker import sweep


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine = storage.engine_for(url)
    storage.create_schema(engine)
    yield engine
    storage.dispose_engines()


def test_a_claimed_row_cannot_be_claimed_again_until_its_lease_expires(engine: Engine) -> None:
    message_id = stored_row(engine)
    now = time.time()
    first = storage.claim(engine, message_id, worker="w1", now=now, lease_s=10)
    assert first == storage.Claim(attempt=1, redrive=0, recovered_from=None)
    assert storage.claim(engine, message_id, worker="w2", now=now + 5, lease_s=10) is None
    # After the lease, another worker takes over and the lost attempt is recorded
    second = storage.claim(engine, message_id, worker="w2", now=now + 11, lease_s=10)
    assert second == storage.Claim(attempt=2, redrive=0, recovered_from="w1")
    [lost] = storage.attempts_of(engine, [message_id])
    assert (lost.number, lost.outcome, lost.worker) == (1, "lost", "w1")
    # The first worker's late completion is fenced off; the second one's counts
    assert not storage.complete(
        engine, message_id, claim_=first, worker="w1", started_at=now, now=now + 12, reply='"late"'
    )
    assert storage.complete(
        engine,
        message_id,
        claim_=second,
        worker="w2",
        started_at=now + 11,
        now=now + 12,
        reply='"ok"',
    )
    row = storage.get_message(engine, message_id)
    assert row is not None
    assert (row.status, row.reply, row.attempts) == ("delivered", '"ok"', 2)
    outcomes = [(a.number, a.outcome) for a in storage.attempts_of(engine, [message_id])]
    assert outcomes == [(1, "lost"), (2, "delivered")]
    assert storage.claim(engine, message_id, worker="w3", now=now + 100, lease_s=10) is None


def test_a_repeated_idempotency_key_returns_the_first_message(engine: Engine) -> None:
    first = stored_row(engine, key="k-1")
    again = storage.insert_messages(engine, [new_row("k-1")])
    assert again == [storage.Inserted(first, True, "queued")]


def test_a_batch_is_stored_whole_with_its_repeated_keys_resolved(engine: Engine) -> None:
    # Given a key stored already, and a batch over several INSERT statements that
    # repeats that key and, twice within itself, another one
    stored = stored_row(engine, key="old")
    fresh = [new_row() for _ in range(2500)]
    twice = new_row("twice")
    batch = [*fresh[:1200], twice, new_row("old"), *fresh[1200:], new_row("twice")]
    # When it is inserted
    results = storage.insert_messages(engine, batch)
    # Then every row answers in order: new, or the id that holds its key
    assert [r.message_id for r in results[:1200]] == [r.id for r in fresh[:1200]]
    assert results[1200] == storage.Inserted(twice.id, False, "queued")
    assert results[1201] == storage.Inserted(stored, True, "queued")
    assert [r.message_id for r in results[1202:-1]] == [r.id for r in fresh[1200:]]
    assert results[-1] == storage.Inserted(twice.id, True, "queued")
    assert not any(r.duplicate for r in results[:1200] + results[1202:-1])
    assert len(storage.status_counts(engine)["b"]) == 1
    assert storage.status_counts(engine)["b"]["queued"] == 1 + 2500 + 1


def test_sweeper_queries_find_expired_leases_and_overdue_rows(engine: Engine) -> None:
    running, waiting = stored_row(engine), stored_row(engine)
    now = time.time()
    storage.claim(engine, running, worker="w1", now=now, lease_s=1)
    assert storage.recover_expired(engine, now=now + 0.5) == []
    [recovered] = storage.recover_expired(engine, now=now + 2)
    assert recovered.message_id == running
    assert [a.outcome for a in storage.attempts_of(engine, [running])] == ["lost"]
    overdue = storage.overdue(engine, now=now + 3, grace_s=2, receiver="b", limit=10)
    assert [r.message_id for r in overdue] == [waiting]
    # One spare copy per handing, not one on every sweep
    assert storage.overdue(engine, now=now + 3.5, grace_s=2, receiver="b", limit=10) == []


def test_a_batch_of_completions_records_each_one_fenced_on_its_own_claim(
    engine: Engine,
) -> None:
    # Given three claimed messages, the second taken over by another worker meanwhile
    ids = [stored_row(engine) for _ in range(3)]
    now = time.time()
    claims = [storage.claim(engine, i, worker="w1", now=now, lease_s=10) for i in ids]
    assert all(claims)
    storage.claim(engine, ids[1], worker="w2", now=now + 11, lease_s=10)
    # When w1 records all three delivered in one batch
    done = [
        storage.Delivered(i, c, "w1", now, now + 1, f'"r{n}"')
        for n, (i, c) in enumerate(zip(ids, claims, strict=True))
        if c is not None
    ]
    recorded = storage.complete_many(engine, done)
    # Then the first and the third are delivered with their replies, the second is not
    assert sorted(recorded) == sorted([ids[0], ids[2]])
    rows = [storage.get_message(engine, i) for i in ids]
    assert [(r.status, r.reply) for r in rows if r is not None] == [
        ("delivered", '"r0"'),
        ("running", None),
        ("delivered", '"r2"'),
    ]
    outcomes = {i: [a.outcome for a in storage.attempts_of(engine, [i])] for i in ids}
    assert outcomes == {ids[0]: ["delivered"], ids[1]: ["lost"], ids[2]: ["delivered"]}


def test_one_sweep_at_a_time_and_a_killed_sweeper_never_holds_the_lock(engine: Engine) -> None:
    with storage.sweep_lock(engine) as first:
        assert first
        with storage.sweep_lock(engine) as second:
            assert not second  # another connection (PostgreSQL) or file handle (SQLite)
    with storage.sweep_lock(engine) as again:
        assert again
    # A process killed while it holds the lock takes the lock with it
    code = (
        "import sys, time, storage\n"
        "with storage.sweep_lock(storage.engine_for(sys.argv[1])) as held:\n"
        "    print(held, flush=True)\n"
        "    time.sleep(60)\n"
    )
    url = engine.url.render_as_string(hide_password=False)
    with subprocess.Popen(
        [sys.executable, "-c", code, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "True"
            with storage.sweep_lock(engine) as taken:
                assert not taken
        finally:
            holder.kill()
    # PostgreSQL ends the killed client's session (and its lock) when it reads the
    # closed socket: a moment after the process is gone, not at once
    deadline = time.monotonic() + 5
    while True:
        with storage.sweep_lock(engine) as taken:
            if taken or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert taken


def test_a_lost_broker_gets_back_only_the_rows_its_inbox_lacks(engine: Engine) -> None:
    # Five waiting rows handed one after another; the broker, restarted empty, holds
    # the tasks of the last two (published after the loss)
    ids = [stored_row(engine) for _ in range(5)]
    now = time.time()
    for offset, message_id in enumerate(ids):
        storage.mark_handed(engine, [message_id], now=now + offset)
    counted_at = now + 10
    lost = storage.republish_lost(engine, now=now + 11, counted_at=counted_at, in_broker={"b": 2})
    assert [r.message_id for r in lost] == ids[:3]  # the ones handed longest ago
    # A row claimed after the count took its task out of the counted inbox: the depth
    # counts one task fewer for the rows still waiting, and a row gets a second copy
    # rather than a lost one none (the oldest handing is now the fourth row's)
    storage.claim(engine, ids[4], worker="w1", now=counted_at + 1, lease_s=10)
    again = storage.republish_lost(engine, now=now + 12, counted_at=counted_at, in_broker={"b": 2})
    assert [r.message_id for r in again] == [ids[3], ids[0], ids[1]]
    # A receiver whose inbox cannot be counted gets every waiting row back
    every = storage.republish_lost(engine, now=now + 13, counted_at=now + 13, in_broker={})
    assert sorted(r.message_id for r in every) == sorted(ids[:4])


def test_a_limited_claim_that_takes_over_an_expired_lease_records_the_lost_attempt(
    engine: Engine,
) -> None:
    # Given a message of an agent with a concurrency limit, claimed by a worker that died
    storage.register_agents(engine, [("b", "agent.b")], kind="handler", now=time.time())
    message_id = stored_row(engine)
    assert storage.claim(engine, message_id, worker="w1", now=time.time() - 60, lease_s=10)
    # When another worker's limited claim takes it over
    taken = storage.take_limited(
        engine, message_id, "b", limit=1, worker="w2", now=time.time(), lease_s=10
    )
    # Then it owns the second attempt, and the first is recorded lost, under its receiver
    assert isinstance(taken, storage.Taken) and taken.claim.attempt == 2
    [lost] = storage.attempts_of(engine, [message_id])
    assert (lost.number, lost.outcome, lost.worker) == (1, "lost", "w1")
    assert storage.agent_totals(engine, [1.0])["b"].attempts == {"lost": 1}


DAY = 86400.0


def _finish(engine: Engine, key: str, *, at: float, dead: bool = False) -> str:
    """A message sent a second before ``at``, claimed and finished (delivered, or dead)
    then, with one attempt."""
    [inserted] = storage.insert_messages(engine, [replace(new_row(key), created_at=at - 1)])
    message_id = inserted.message_id
    claim = storage.claim(engine, message_id, worker="w", now=at, lease_s=10)
    assert claim is not None
    if dead:
        storage.mark_dead(
            engine, message_id, reason="exhausted", error="boom", now=at, claim_=claim, worker="w"
        )
    else:
        storage.complete(
            engine, message_id, claim_=claim, worker="w", started_at=at, now=at, reply=None
        )
    return message_id


def test_retention_deletes_finished_messages_past_their_window_with_their_attempts(
    engine: Engine,
) -> None:
    # Given messages delivered 8 and 2 days ago, dead 40 and 8 days ago, and two that
    # have waited and run for 60 days without finishing
    now = time.time()
    old = _finish(engine, "old", at=now - 8 * DAY)
    recent = _finish(engine, "recent", at=now - 2 * DAY)
    # (and one sent and delivered a moment ago: younger than the counters' watermark)
    just_now = _finish(engine, "just-now", at=now - 1)
    long_dead = _finish(engine, "long-dead", at=now - 40 * DAY, dead=True)
    dead = _finish(engine, "dead", at=now - 8 * DAY, dead=True)
    waiting = stored_row(engine, "waiting")
    running = stored_row(engine, "running")
    storage.claim(engine, running, worker="w", now=now - 60 * DAY, lease_s=10)
    windows = {"delivered_before": now - 7 * DAY, "dead_before": now - 30 * DAY}
    before = storage.agent_totals(engine, storage.LATENCY_BOUNDS_S)["b"]
    # When a dry run counts, then the prune runs in batches of one
    assert storage.prunable(engine, **windows) == storage.Pruned(2, 2)
    assert storage.prune(engine, limit=1, **windows) == storage.Pruned(2, 2)
    assert storage.prune(engine, limit=1, **windows) == storage.Pruned(0, 0)
    # Then what finished past its window is gone, its attempts with it; the rest stays
    assert storage.get_message(engine, old) is None
    assert storage.get_message(engine, long_dead) is None
    assert storage.attempts_of(engine, [old, long_dead]) == []
    for kept in (recent, dead, waiting, running, just_now):
        assert storage.get_message(engine, kept) is not None
    assert len(storage.attempts_of(engine, [recent, dead])) == 2
    # And the metrics' counters did not go down: what went is kept in the pruned totals
    after = storage.agent_totals(engine, storage.LATENCY_BOUNDS_S)["b"]
    assert (after.sent, after.attempts, after.latency_count) == (7, {"delivered": 3, "dead": 2}, 3)
    assert (after.sent, after.attempts, after.latency_buckets) == (
        before.sent,
        before.attempts,
        before.latency_buckets,
    )
    # (delivered: ever, a counter; the other statuses: now)
    assert after.by_status == {"delivered": 3, "dead": 1, "queued": 1, "running": 1}
    # And a pruned message's key is free again (the dedup window is the retention),
    # while a kept one's still answers with the first message
    [again] = storage.insert_messages(engine, [new_row("old")])
    assert not again.duplicate and again.message_id != old
    assert storage.insert_messages(engine, [new_row("recent")])[0].message_id == recent


def test_db_prune_deletes_what_an_operator_names(engine: Engine, tmp_path: Path) -> None:
    now = time.time()
    old = _finish(engine, "old", at=now - 8 * DAY)
    dead = _finish(engine, "dead", at=now - 8 * DAY, dead=True)
    recent = _finish(engine, "recent", at=now - 3600)
    url = engine.url.render_as_string(hide_password=False)
    env = {"PATH": "/usr/bin:/bin", "AGENTPOST_DATABASE_URL": url, "AGENTPOST_HOME": str(tmp_path)}

    def prune(*args: str) -> str:
        cmd = [*AGENTPOST, "db", "prune", *args]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert prune("--older-than", "7d", "--dry-run").startswith(
        "would delete 2 message(s) and 2 attempt(s) finished before "
    )
    assert storage.get_message(engine, old) is not None
    assert prune("--older-than", "7d", "--status", "dead").startswith("deleted 1 message(s)")
    assert storage.get_message(engine, dead) is None
    assert prune("--older-than", "7d").startswith("deleted 1 message(s) and 1 attempt(s)")
    assert storage.get_message(engine, old) is None
    assert storage.get_message(engine, recent) is not None


def _partitions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = CAST('agentpost_messages' AS regclass)"
                )
            ).scalars()
        )


def _week(at: float) -> str:
    monday = datetime.fromtimestamp(at, UTC).date()
    monday -= timedelta(days=monday.weekday())
    return f"agentpost_messages_p{monday:%Y%m%d}"


def test_postgres_keeps_a_partition_a_week_and_retention_drops_the_weeks_past_every_window(
    pg_engine: Engine,
) -> None:
    engine = pg_engine
    now = time.time()
    # Given a week 10 weeks ago with only delivered and dead messages past their
    # windows, one 20 weeks ago that also holds a message still waiting, and one 30
    # weeks ago whose dead message is inside a longer dead window
    gone = [
        _finish(engine, "gone-1", at=now - 70 * DAY),
        _finish(engine, "gone-2", at=now - 70 * DAY, dead=True),
    ]
    waiting_row = replace(new_row("waiting"), created_at=now - 140 * DAY)
    [waiting] = storage.insert_messages(engine, [waiting_row])
    _finish(engine, "done-beside-waiting", at=now - 140 * DAY)
    kept_dead = _finish(engine, "kept-dead", at=now - 210 * DAY, dead=True)
    # (each send made its week's partition when it found none)
    weeks = {_week(now - 70 * DAY), _week(now - 140 * DAY), _week(now - 210 * DAY)}
    assert weeks <= _partitions(engine)
    # When retention runs with a week's window for delivered messages, 60 days for
    # dead ones, and a dead message 210 days old kept by its own later death
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE agentpost_messages SET finished_at = :at WHERE id = :id"),
            {"at": now - DAY, "id": kept_dead},
        )
    pruned = storage.prune(
        engine, delivered_before=now - 7 * DAY, dead_before=now - 60 * DAY, limit=1000
    )
    # Then the week with nothing to keep is dropped whole, attempts and keys with it
    assert pruned == storage.Pruned(
        3, 3
    )  # the week's 2, and the delivered one beside the waiting one
    assert _week(now - 70 * DAY) not in _partitions(engine)
    assert all(storage.get_message(engine, m) is None for m in gone)
    [again] = storage.insert_messages(engine, [new_row("gone-1")])
    assert not again.duplicate
    # And the weeks holding a waiting message or a dead one inside its window stay
    assert {_week(now - 140 * DAY), _week(now - 210 * DAY)} <= _partitions(engine)
    assert storage.get_message(engine, waiting.message_id) is not None
    assert storage.get_message(engine, kept_dead) is not None
    assert storage.insert_messages(engine, [new_row("waiting")])[0].duplicate


def test_postgres_keys_and_ids_stay_unique_across_weeks(pg_engine: Engine) -> None:
    engine = pg_engine
    now = time.time()
    # Given a message sent 5 weeks ago
    first = replace(new_row("k"), created_at=now - 35 * DAY)
    [stored] = storage.insert_messages(engine, [first])
    # When its key comes again now, alone and in a batch: the first message answers
    assert storage.insert_messages(engine, [new_row("k")])[0].message_id == stored.message_id
    batch = storage.insert_messages(engine, [new_row("k"), new_row("other")])
    assert [r.duplicate for r in batch] == [True, False]
    assert batch[0].message_id == stored.message_id
    # And its id under another key, in another week, is refused
    with pytest.raises(IntegrityError):
        storage.insert_messages(engine, [replace(first, idempotency_key="k2", created_at=now)])


def test_the_partitions_of_the_weeks_ahead_are_made_once(pg_engine: Engine) -> None:
    engine = pg_engine
    far = time.time() + 10 * 7 * DAY
    assert _week(far) not in _partitions(engine)
    assert storage.ensure_partitions(engine, far, far + storage.AHEAD_S) == 6
    assert storage.ensure_partitions(engine, far, far + storage.AHEAD_S) == 0
    assert _week(far) in _partitions(engine)


def test_a_sweep_makes_the_partitions_of_the_weeks_ahead(pg_engine: Engine, tmp_path: Path) -> None:
    # Given a PostgreSQL store whose partitions for the week two weeks ahead are gone
    ahead = time.time() + storage.AHEAD_S
    attempts = _week(ahead).replace("messages", "attempts")
    with pg_engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {_week(ahead)}, {attempts}"))
    assert _week(ahead) not in _partitions(pg_engine)
    # When a sweep runs (on the embedded broker)
    url = pg_engine.url.render_as_string(hide_password=False)
    sweep(create_app(Settings(database_url=url, home=tmp_path / "home")))
    # Then that week has its partitions again
    assert _week(ahead) in _partitions(pg_engine)
