"""Reply waiters woken by the store (PostgreSQL LISTEN/NOTIFY), and polling without it."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Engine, text

import storage
from tests.conftest import stored_row, wait_for


def _listening(watch: storage.Watch) -> None:
    wait_for(lambda: watch.listening, 10, "the listener to connect")
    watch.wait(0.2)  # the wake-up every watch gets when the listener connects


def test_a_watch_wakes_when_its_message_finishes_and_only_after_the_commit(
    pg_engine: Engine,
) -> None:
    message_id, other = stored_row(pg_engine), stored_row(pg_engine)
    claim = storage.claim(pg_engine, message_id, worker="w", now=time.time(), lease_s=30)
    assert claim is not None
    with storage.watch_finished(pg_engine, message_id) as watch:
        _listening(watch)
        # Another message finishing does not wake it
        storage.mark_dead(pg_engine, other, reason="invalid", error="x", now=time.time())
        assert watch.wait(0.5) is False
        # Its own completion, inside a transaction: nothing until the commit
        with pg_engine.connect() as conn:
            completed = storage.complete(
                conn,
                message_id,
                claim_=claim,
                worker="w",
                started_at=time.time(),
                now=time.time(),
                reply='"ok"',
            )
            assert completed
            assert watch.wait(0.5) is False
            conn.commit()
        assert watch.wait(30) is True


def test_a_dead_letter_wakes_its_watch(pg_engine: Engine) -> None:
    message_id = stored_row(pg_engine)
    with storage.watch_finished(pg_engine, message_id) as watch:
        _listening(watch)
        storage.mark_dead(pg_engine, message_id, reason="invalid", error="x", now=time.time())
        assert watch.wait(30) is True


def test_a_lost_listening_connection_wakes_every_watch_and_listens_again(pg_engine: Engine) -> None:
    message_id = stored_row(pg_engine)
    with storage.watch_finished(pg_engine, message_id) as watch:
        _listening(watch)
        # When the server ends the listener's session (a restart, a network drop)
        with pg_engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN agentpost_finished%' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert ended >= 1
        # The watch is woken to read its row (a notification may have been missed)
        assert watch.wait(30) is True
        # And once listening again, a finish still wakes it
        _listening(watch)
        storage.mark_dead(pg_engine, message_id, reason="invalid", error="x", now=time.time())
        assert watch.wait(30) is True


def test_on_sqlite_a_watch_polls(tmp_path: Path) -> None:
    engine = storage.engine_for(f"sqlite:///{tmp_path / 'store.db'}")
    storage.create_schema(engine)
    try:
        with storage.watch_finished(engine, "any") as watch:
            assert not watch.listening
            assert watch.wait(5) is False  # returns after the poll pause, never woken
    finally:
        storage.dispose_engines()
