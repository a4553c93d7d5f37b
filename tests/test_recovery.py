"""Recovery republishes what the broker lost, and only that, on every backend.

The sweeps here run in the test's process (``worker.sweep``, what beat's task calls)
against the real broker and store, so the test can look at the broker between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection

import storage
from tests.conftest import Backend, Worker, lose_queued_messages, wait_final
from wire import create_app, inbox_depths, inbox_queue
from wire.publish import DeliveryTask, publish_deliveries
from worker import sweep, sweeper

pytestmark = pytest.mark.slow


def take_tasks(app: Any, agent: str, n: int) -> None:
    """Take ``n`` tasks from the agent's inbox and acknowledge them: lost, no epoch shows it."""
    with app.connection_for_write() as conn:
        inbox = conn.SimpleQueue(inbox_queue(agent, app.settings))
        for _ in range(n):
            inbox.get(timeout=10).ack()
        inbox.close()


def lose_echo_inbox(backend: Backend) -> None:
    """What the broker holds for echo is lost: Redis FLUSHDB, the embedded folder wiped,
    the RabbitMQ inbox deleted."""
    if backend.name == "amqp":
        with Connection(backend.settings.broker) as conn:
            inbox_queue("echo", backend.settings)(conn.default_channel).delete()
    else:
        lose_queued_messages(backend)


def sweep_twice(app: Any, agent: str) -> tuple[int | None, int | None]:
    """The agent's inbox depth after one sweep, and after the next."""
    sweep(app)
    first = inbox_depths(app, [agent])[agent]
    sweep(app)
    return first, inbox_depths(app, [agent])[agent]


def delivered_once(backend: Backend, client: Any, ids: list[str]) -> bool:
    """Every message delivered, each handled by echo exactly once."""
    for message_id in ids:
        assert wait_final(client, message_id).status == "delivered"
    return sorted(r["id"] for r in backend.runs("echo")) == sorted(ids)


def test_an_old_backlog_gets_spare_copies_only_for_the_tasks_its_broker_lost(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 30 messages waiting far longer than AGENTPOST_REDELIVER_AFTER_S (2 s here)
    start_worker().stop()
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="t").message_id for n in range(30)]
    client.close()  # the handed marks are written
    app = create_app(backend.settings)
    # When the sweeper runs again and again (every 0.3 s for 4 s)
    for _ in range(14):
        sweep(app)
        time.sleep(0.3)
    # Then the broker holds no spare copy: its inbox is short of no task
    assert inbox_depths(app, ["echo"])["echo"] == 30
    # When 10 tasks go missing in a way no epoch shows (taken and acknowledged)
    take_tasks(app, "echo", 10)
    assert inbox_depths(app, ["echo"])["echo"] == 20
    # Then the next sweep makes up the 10, and the ones after add none
    assert sweep_twice(app, "echo") == (30, 30)
    # and each message is delivered once
    start_worker("--agents", "echo")
    assert delivered_once(backend, client, ids)


def marked_by_an_unfinished_sweep(
    backend: Backend, start_worker: Callable[..., Worker]
) -> tuple[Any, Any, list[str], list[storage.Republish]]:
    """10 messages whose tasks were taken and acknowledged (lost, no epoch shows it),
    spare copies 10 minutes away, and a sweep that marked their spare copies in the
    store and never recorded its end: (app, client, ids, the rows it marked)."""
    backend.env["AGENTPOST_REDELIVER_AFTER_S"] = "600"
    start_worker().stop()
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="t").message_id for n in range(10)]
    client.close()
    app = create_app(backend.settings)
    sweep(app)  # the first sweep leaves the broker's epoch token
    take_tasks(app, "echo", 10)
    engine = storage.engine_for(backend.settings.database)
    died_at = time.time()
    assert storage.begin_sweep(engine, now=died_at) is None  # the last one finished
    spared = storage.overdue(engine, now=died_at, grace_s=0, receiver="echo", limit=10)
    return app, client, ids, spared


def test_copies_a_sweep_marked_and_died_before_publishing_go_out_at_the_next_sweep(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 10 messages whose tasks were lost, and a sweep that marked their spare
    # copies in the store and died before publishing
    app, client, ids, spared = marked_by_an_unfinished_sweep(backend, start_worker)
    assert sorted(r.message_id for r in spared) == sorted(ids)
    assert inbox_depths(app, ["echo"])["echo"] == 0
    # Then the next sweep publishes them, once, and the one after adds none
    assert sweep_twice(app, "echo") == (10, 10)
    # and each message is delivered once
    start_worker("--agents", "echo")
    assert delivered_once(backend, client, ids)


def test_copies_a_sweep_published_before_its_store_went_down_go_out_only_once(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 10 messages whose tasks were lost, and a sweep that marked their spare
    # copies and published them, its store gone before it could record its end
    app, client, ids, spared = marked_by_an_unfinished_sweep(backend, start_worker)
    publish_deliveries(app, [DeliveryTask.of(row, now=time.time()) for row in spared])
    assert inbox_depths(app, ["echo"])["echo"] == 10
    # Then the next sweep finds their tasks in the inbox and publishes none again
    assert sweep_twice(app, "echo") == (10, 10)
    start_worker("--agents", "echo")
    assert delivered_once(backend, client, ids)


def test_copies_a_sweep_died_midway_through_publishing_go_out_for_the_rest(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 10 messages whose tasks were lost, and a sweep that marked their spare
    # copies and died after publishing the first 4 (it publishes in order of due time)
    app, client, ids, spared = marked_by_an_unfinished_sweep(backend, start_worker)
    spared.sort(key=lambda row: ids.index(row.message_id))
    publish_deliveries(app, [DeliveryTask.of(row, now=time.time()) for row in spared[:4]])
    # Then the next sweep publishes the other 6, not the first ones again
    assert sweep_twice(app, "echo") == (10, 10)
    start_worker("--agents", "echo")
    assert delivered_once(backend, client, ids)


def test_a_broker_that_lost_its_contents_gets_them_back_at_the_next_sweep(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a deployment whose spare copies would take 10 minutes
    backend.env["AGENTPOST_REDELIVER_AFTER_S"] = "600"
    start_worker().stop()
    app = create_app(backend.settings)
    sweep(app)  # the first sweep leaves the broker's epoch token
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="t").message_id for n in range(10)]
    client.close()
    # When the broker loses them (Redis FLUSHDB, the embedded folder wiped, the
    # RabbitMQ inbox deleted)
    lose_echo_inbox(backend)
    assert inbox_depths(app, ["echo"])["echo"] in (0, None)
    # Then the next sweep sees it and republishes every one of them, once
    report = sweep(app)
    assert (report.lost, inbox_depths(app, ["echo"])["echo"]) == (10, 10)
    assert sweep(app).lost == 0
    start_worker("--agents", "echo")
    for message_id in ids:
        assert wait_final(client, message_id).status == "delivered"
    assert sorted(r["id"] for r in backend.runs("echo")) == sorted(ids)


def test_a_sweep_whose_broker_fails_midway_publishes_nothing_twice(
    backend: Backend, start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 10 messages a broker lost
    backend.env["AGENTPOST_REDELIVER_AFTER_S"] = "600"
    start_worker().stop()
    app = create_app(backend.settings)
    sweep(app)  # the first sweep leaves the broker's epoch token
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="t").message_id for n in range(10)]
    client.close()
    lose_echo_inbox(backend)
    # When the sweep that republishes them finds the broker failing its next publish
    # (the real publish, then a broker restarting under the sweep)
    publish = sweeper.publish_deliveries
    calls: list[int] = []

    def fails_after_the_first(app_: Any, tasks: Any) -> None:
        calls.append(len(tasks))
        if len(calls) > 1:
            raise ConnectionError("the broker is restarting")
        publish(app_, tasks)

    monkeypatch.setattr(sweeper, "publish_deliveries", fails_after_the_first)
    with pytest.raises(Exception, match="the broker is restarting"):
        sweep(app)
    monkeypatch.undo()
    assert calls[0] == 10 and inbox_depths(app, ["echo"])["echo"] == 10
    # Then the sweeps after it publish none of them again (the failed sweep closed its
    # journal: it had taken back what it could not publish)
    assert sweep_twice(app, "echo") == (10, 10)
    start_worker("--agents", "echo")
    assert delivered_once(backend, client, ids)
