"""Plain-function tests: the envelope, settings, backoff and the public API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import json
import os
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kombu.asynchronous.timer import Timer

import messaging
import storage
import wire
import worker
from messaging import ConfigurationError, Envelope, InvalidEnvelope, Settings, agent
from messaging.context import child_key
from messaging.ids import new_id
from messaging.lifecycle import backoff_delay_s
from messaging.outbox import HandedMarks
from messaging.schemas import PayloadSchemas
from worker.eventloop import HandlerTimedOut, run_coroutine
from worker.timers import drop_canceled


@pytest.mark.parametrize("package", [messaging, worker, wire, storage])
def test_all_lists_every_public_name_sorted(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    # dir(), not vars(): messaging and wire load their names on first use
    public = {
        n
        for n in dir(package)
        if not n.startswith("_")
        and not isinstance(getattr(package, n), type(importlib))
        and n not in ("annotations",)
    }
    assert public == set(names)


def test_envelope_defaults_come_from_its_id() -> None:
    env = Envelope(sender="a", receiver="b", payload={"x": [1, 2]})
    assert env.correlation_id == str(env.id) == env.idempotency_key
    assert env.created_at.tzinfo is not None and env.created_at <= datetime.now(UTC)
    assert (env.attempt, env.priority, env.schema_version) == (0, 5, "1.2")
    assert Envelope.model_validate(env.wire()) == env
    with pytest.raises(Exception, match="frozen"):
        env.sender = "c"  # type: ignore[misc]


def test_message_ids_are_random_v4_uuids_and_a_forked_child_draws_its_own() -> None:
    ids = [new_id() for _ in range(1000)]  # across several refills of the buffer
    assert len(set(ids)) == 1000 and {i.version for i in ids} == {4}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, as text, to the parent
        os.write(write, ",".join(str(new_id()) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [str(new_id()) for _ in range(50)]
    assert len(child) == 50 and not set(child) & set(parent)


def test_the_wire_json_reads_back_as_the_envelope() -> None:
    env = Envelope.build(
        "b", {"t": "h\u00e9llo\n", "f": 1e-7}, sender="a", metadata={"k": "\x01"}, ttl_s=5
    )
    assert Envelope.model_validate_json(env.wire_json()) == env
    assert json.loads(env.wire_json()) == env.wire()


def test_a_coroutine_handed_to_the_shared_loop_returns_raises_and_times_out_as_its_own() -> None:
    seen: contextvars.ContextVar[int] = contextvars.ContextVar("seen")

    async def echo(value: int) -> tuple[int, int]:
        await asyncio.sleep(0.01)
        return value, seen.get()  # the caller's context travels with the coroutine

    def call(i: int) -> tuple[int, int]:
        seen.set(i)
        return run_coroutine(echo(i), timeout_s=5)  # type: ignore[no-any-return]

    async def fails() -> None:
        raise ValueError("bad")

    async def own_timeout() -> None:
        raise TimeoutError("its own")

    cancelled = threading.Event()

    async def sleeps() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    with concurrent.futures.ThreadPoolExecutor(50) as pool:  # handed over in bursts
        results = list(pool.map(call, range(200)))
    assert results == [(i, i) for i in range(200)]
    with pytest.raises(ValueError, match="bad"):
        run_coroutine(fails())
    with pytest.raises(TimeoutError, match="its own"):
        run_coroutine(own_timeout(), timeout_s=5)
    with pytest.raises(HandlerTimedOut, match=r"0\.1 s"):
        run_coroutine(sleeps(), timeout_s=0.1)
    assert cancelled.wait(5)
    with pytest.raises(concurrent.futures.CancelledError):  # an Exception: a failed attempt
        run_coroutine(cancels_itself())


def test_priorities_by_name_or_number() -> None:
    assert Envelope.build("b", sender="a", priority="urgent").priority == 9
    assert Envelope.build("b", sender="a", priority="low").priority == 2
    assert Envelope.build("b", sender="a", priority=0).priority == 0
    with pytest.raises(InvalidEnvelope, match="priority: 10 is not a priority"):
        Envelope.build("b", sender="a", priority=10)


def test_minor_versions_of_a_known_major_are_read() -> None:
    assert Envelope(sender="a", receiver="b", schema_version="1.7").schema_version == "1.7"
    with pytest.raises(InvalidEnvelope, match="unknown major version"):
        Envelope(sender="a", receiver="b", schema_version="2.0")


def test_child_keys_are_stable_and_distinct() -> None:
    assert child_key("k", 1) == child_key("k", 1)
    assert (
        len({child_key("k", 1), child_key("k", 2), child_key("j", 1), child_key("k", 1, "x")}) == 4
    )


def test_backoff_doubles_up_to_the_ceiling_with_jitter_in_range() -> None:
    exact = [backoff_delay_s(n, base_s=1, max_s=5, jitter=False) for n in range(1, 6)]
    assert exact == [1, 2, 4, 5, 5]
    rng = random.Random(7)
    for n in range(1, 6):
        delay = backoff_delay_s(n, base_s=1, max_s=5, jitter=True, rng=rng)
        assert exact[n - 1] / 2 <= delay <= exact[n - 1]


def test_settings_reject_bad_configuration_at_declaration() -> None:
    with pytest.raises(ConfigurationError, match="not supported"):
        Settings(broker_url="kafka://x")
    with pytest.raises(ConfigurationError, match="not supported"):
        Settings(database_url="mysql://root@localhost/x")
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url="ftp://user:s3cret@host")
    assert "s3cret" not in str(info.value)


def test_settings_defaults_are_the_embedded_ones(tmp_path: object) -> None:
    s = Settings(home=tmp_path)  # type: ignore[arg-type]
    assert s.broker.startswith("filesystem://")
    assert s.database == f"sqlite:///{s.home / 'store.db'}"
    assert Settings(database_url="postgresql://u@h/db").database.startswith("postgresql+psycopg://")
    assert Settings(agent_modules="a.b, c").agent_modules == ["a.b", "c"]  # type: ignore[arg-type]


def test_agent_options_are_checked_when_declared() -> None:
    with pytest.raises(ConfigurationError, match="invalid"):
        agent("Bad Name")
    with pytest.raises(ConfigurationError, match="max_retries must be >= 0"):
        agent("fine", max_retries=-1)
    with pytest.raises(ConfigurationError, match="must take"):
        agent("fine")(lambda msg: None)  # type: ignore[arg-type, return-value]


def test_the_key_command_s_help_names_every_gateway_operation() -> None:
    from messaging.cli_gateway import OPERATIONS_HELP  # noqa: PLC0415
    from messaging.gateway.auth import OPERATIONS  # noqa: PLC0415

    assert f"Comma-separated operations: {', '.join(OPERATIONS)}." == OPERATIONS_HELP


def test_an_agent_s_tables_must_be_tables_and_not_the_store_s() -> None:
    with pytest.raises(ConfigurationError, match="tables= takes"):
        agent("u.owner", tables=["invoices"])
    with pytest.raises(ConfigurationError, match="one of the store's own tables"):
        agent("u.owner", tables=[storage.Message])


def test_canceled_timers_leave_the_event_loop_s_heap_and_the_rest_still_fire() -> None:
    # Given kombu's timer, as Celery's prefork pool fills it: a time-limit entry per task,
    # canceled when the task ends (kombu would keep those until they were due)
    fired: list[int] = []
    timer = Timer()
    entries = [timer.call_after(0.01 * (i % 7), fired.append, (i,)) for i in range(1000)]
    for i, entry in enumerate(entries):
        if i % 10:
            entry.cancel()
    # When the canceled ones are dropped
    assert drop_canceled(timer) == 900
    assert len(timer) == 100 and drop_canceled(timer) == 0
    # Then every live entry still fires
    time.sleep(0.07)
    for _, (_wait, entry) in zip(range(200), timer, strict=False):
        if entry is None:
            break
        entry()
    assert sorted(fired) == list(range(0, 1000, 10))
    assert len(timer) == 0


def test_a_payload_schema_names_each_field_and_a_broadcast_can_ask_whether_it_fits() -> None:
    # Given the registry row of an agent typed with a payload model
    schema = '{"type":"object","required":["topic"],"properties":{"topic":{"type":"string"}}}'
    row = storage.Agent(
        name="typed",
        queue="q",
        registered_at=0,
        last_seen_at=0,
        payload_schema=schema,
        schema_version=3,
    )
    schemas = PayloadSchemas()
    schemas.update([row, storage.Agent(name="plain", queue="q", registered_at=0, last_seen_at=0)])
    # Then a fitting payload passes, an untyped agent takes anything
    schemas.check("typed", {"topic": "x"})
    assert schemas.fits("plain", {"shutdown": True}) and not schemas.fits("typed", {})
    # And one that does not fit is refused naming its fields and the schema's version
    with pytest.raises(InvalidEnvelope) as refused:
        schemas.check("typed", {"topic": 5})
    assert str(refused.value) == (
        "invalid envelope: the payload does not fit agent 'typed' (its schema v3): "
        'payload.topic: 5 is not of type "string"'
    )


def test_a_handed_mark_the_store_refused_is_recorded_with_the_next_batch(tmp_path: Path) -> None:
    # Given a store with two messages, and a sender whose first mark finds no store
    # (a database restarting: here one without the schema)
    engine = storage.engine_for(f"sqlite:///{tmp_path / 'store.db'}")
    storage.create_schema(engine)
    rows = [
        storage.NewMessage(
            id=f"m{n}",
            idempotency_key=f"k{n}",
            correlation_id=f"m{n}",
            parent_id=None,
            sender="s",
            receiver="r",
            priority=5,
            envelope="{}",
            created_at=1.0,
            expires_at=None,
        )
        for n in (1, 2)
    ]
    storage.insert_messages(engine, rows)
    refusing = storage.engine_for(f"sqlite:///{tmp_path / 'restarting.db'}")
    engines = iter([refusing, engine])
    marks = HandedMarks(lambda: next(engines))
    # When the first batch is refused and the next one lands
    marks._mark(["m1"])
    assert storage.get_message(engine, "m1").handed_at is None  # type: ignore[union-attr]
    marks._mark(["m2"])
    # Then both are recorded
    for message_id in ("m1", "m2"):
        assert storage.get_message(engine, message_id).handed_at is not None  # type: ignore[union-attr]
