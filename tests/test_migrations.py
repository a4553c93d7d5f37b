"""Alembic migrations of the store: from empty, and a store that is behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel

import storage
from messaging import Client, SchemaOutdated, Settings
from storage.migrate import VERSION_TABLE, include_name
from tests.conftest import AGENTPOST, ROOT, new_row


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("pg_database")
    storage.dispose_engines()


def _db(env: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """``agentpost db COMMAND`` as an operator runs it."""
    return subprocess.run(
        [*AGENTPOST, "db", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def test_upgrade_from_empty_reaches_head(database_url: str) -> None:
    engine = storage.engine_for(database_url)
    assert storage.current_revision(engine) is None
    assert storage.upgrade(engine) == storage.head_revision()
    assert {
        "agentpost_messages",
        "agentpost_attempts",
        "agentpost_agents",
        "agentpost_subscriptions",
        "agentpost_alembic_version",
    } <= _tables(engine)
    # The migrated schema is exactly what the models declare: nothing left to generate
    with engine.connect() as conn:
        opts = {"version_table": VERSION_TABLE, "include_name": include_name}
        context = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(context, SQLModel.metadata) == []
    # and on PostgreSQL the tables that grow are partitioned by week, this week's and
    # the next two made, each partition vacuumed before a fifth of it is dead
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            kinds = dict(
                conn.execute(
                    text(
                        "SELECT relname, relkind FROM pg_class WHERE relname IN "
                        "('agentpost_messages', 'agentpost_attempts')"
                    )
                ).all()
            )
            partitions = conn.execute(
                text(
                    "SELECT c.relname, c.reloptions FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent IN (CAST('agentpost_messages' AS regclass), "
                    "CAST('agentpost_attempts' AS regclass))"
                )
            ).all()
        assert kinds == {"agentpost_messages": "p", "agentpost_attempts": "p"}
        assert len(partitions) == 6, partitions
        for name, options in partitions:
            assert "autovacuum_vacuum_scale_factor=0.02" in options, (name, options)


def test_a_store_behind_is_refused_with_the_command_that_fixes_it(
    database_url: str, tmp_path: Path
) -> None:
    # Given a store at an older revision (0001: before the gateway's tables)
    engine = storage.engine_for(database_url)
    assert storage.upgrade(engine, "0001") == "0001" != storage.head_revision()
    settings = Settings(database_url=database_url, home=tmp_path / "home")
    # Then a client refuses it, naming the command
    with pytest.raises(SchemaOutdated, match="run `agentpost db upgrade`"):
        Client(settings)
    # And that command fixes it
    env = {
        **os.environ,
        "AGENTPOST_DATABASE_URL": database_url,
        "AGENTPOST_HOME": str(tmp_path / "home"),
    }
    out = _db(env, "upgrade")
    assert f"store at revision {storage.head_revision()}" in out.stdout
    assert "password" not in out.stdout
    Client(settings).close()
    current = _db(env, "current")
    assert "up to date" in current.stdout


def test_a_store_with_messages_upgrades_in_place_to_partitions_flow_control_and_retention(
    database_url: str,
) -> None:
    # Given a store at 0008 (before flow control, retention and the partial indexes)
    # holding messages: one delivered long ago with its attempt, one waiting, one dead,
    # and a registered agent
    engine = storage.engine_for(database_url)
    storage.upgrade(engine, "0008")
    old, waiting, dead = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    with engine.begin() as conn:
        rows = ((old, "delivered", 1, 1.0), (waiting, "queued", 0, None), (dead, "dead", 1, 5.0))
        for message_id, status, attempts, finished in rows:
            conn.execute(
                text(
                    "INSERT INTO agentpost_messages (id, idempotency_key, correlation_id, "
                    "sender, receiver, priority, status, envelope, attempts, redrives, "
                    "created_at, updated_at, due_at, finished_at) VALUES (:id, :id, :id, "
                    "'a', 'b', 5, :status, '{}', :attempts, 0, 1.0, 1.0, 1.0, :finished)"
                ),
                {"id": message_id, "status": status, "attempts": attempts, "finished": finished},
            )
        conn.execute(
            text(
                "INSERT INTO agentpost_attempts (message_id, number, redrive, ended_at, "
                "outcome) VALUES (:id, 1, 0, 1.0, 'delivered')"
            ),
            {"id": old},
        )
        conn.execute(
            text(
                "INSERT INTO agentpost_agents (name, kind, queue, registered_at, last_seen_at) "
                "VALUES ('b', 'handler', 'agent.b', 1.0, 1.0)"
            )
        )
    # When it is upgraded to the head
    assert storage.upgrade(engine) == storage.head_revision()
    # Then its rows are all there, found through the new indexes (the gauges, the
    # backlog, the dead letters), the agent has no limits and a closed circuit, and
    # the new statements work on them: retention, a rate slot, a limited claim
    assert storage.status_counts(engine) == {"b": {"queued": 1, "dead": 1, "delivered": 1}}
    assert storage.backlog(engine, "b") == 1
    # (the old attempt counted by its receiver, copied onto it by the upgrade)
    assert storage.agent_totals(engine, [1.0])["b"].attempts == {"delivered": 1}
    assert [m.id for m in storage.dead_letters(engine, receiver="b")] == [dead]
    assert [a.name for a in storage.list_agents(engine)] == ["b"]
    row = storage.find_agent(engine, "b")
    assert row is not None and (row.max_concurrency, row.circuit_state) == (None, None)
    assert storage.take_slot(engine, "b", interval_s=1.0, now=10.0) == 10.0
    taken = storage.take_limited(
        engine, waiting, "b", limit=1, worker="w", now=time.time(), lease_s=10
    )
    assert isinstance(taken, storage.Taken) and taken.claim.attempt == 1
    # and each key still answers with its first message (0014 moved the keys to a table
    # of their own; on PostgreSQL the rows to the partition of their week, 1969-12-29)
    [again] = storage.insert_messages(engine, [new_row(waiting)])
    assert again.duplicate and again.message_id == waiting
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            moved = conn.execute(text("SELECT count(*) FROM agentpost_messages_p19691229"))
            assert moved.scalar_one() == 3
    pruned = storage.prune(engine, delivered_before=2.0, dead_before=None, limit=10)
    assert pruned == storage.Pruned(1, 1)
    assert storage.get_message(engine, waiting) is not None


def test_a_store_made_before_migrations_is_stamped_then_upgraded(database_url: str) -> None:
    # Given the tables of the first release, and no migration record at all
    engine = storage.engine_for(database_url)
    storage.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM agentpost_alembic_version")
    assert storage.current_revision(engine) is None
    # When it is upgraded, it is taken as 0001 and brought to the head
    assert storage.upgrade(engine) == storage.head_revision()
    assert "agentpost_api_keys" in _tables(engine)


def test_processes_starting_together_on_an_empty_store_all_come_up(
    database_url: str, tmp_path: Path
) -> None:
    # Given an empty database and six processes that open it at the same instant
    go_at = time.time() + 4  # after every interpreter has started
    code = (
        "import sys, time\n"
        "from messaging import Client, Settings\n"
        f"time.sleep(max(0, {go_at} - time.time()))\n"
        f"Client(Settings(home={str(tmp_path)!r}, database_url={database_url!r}))\n"
        "print('up')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    # Then every one of them came up, and the store is at the newest revision once
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, results, strict=True)] == [
        (0, "up")
    ] * 6, [err[-2000:] for _, err in results]
    engine = storage.engine_for(database_url)
    assert storage.current_revision(engine) == storage.head_revision()
