"""Messaging semantics on every backend: mailboxes, broadcast, topics, request/reply, expiry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text

import storage
from messaging import (
    AsyncClient,
    ConfigurationError,
    Context,
    DeliveryError,
    Envelope,
    LeaseExpired,
    MessageNotFound,
    Reply,
    RequestTimeout,
    UnknownAgent,
)
from tests.conftest import ROOT, Backend, Worker, wait_final, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_a_mailbox_cannot_take_the_name_of_an_agent_workers_serve(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given workers serving echo
    start_worker("--agents", "echo")
    client = backend.client()
    # When a process registers a mailbox of that name, it is refused, saying why
    with pytest.raises(ConfigurationError, match="served by workers"):
        client.register("echo")
    # and echo stays the workers': a request to it is answered
    assert {a.name: a.kind for a in client.agents()}["echo"] == "handler"
    assert client.request("echo", {"q": 1}, sender="t", timeout_s=30).payload == {"q": 1}
    client.close()


def test_mailbox_receive_ack_nack_peek_and_priority_order(backend: Backend) -> None:
    client = backend.client()
    client.register("inbox", max_retries=3, backoff_s=0.05, backoff_max_s=0.1)
    box = client.mailbox("inbox")
    # An empty mailbox answers within a sub-second timeout
    started = time.monotonic()
    assert box.receive(timeout_s=0.2) is None
    assert 0.2 <= time.monotonic() - started < 1.5
    # Most urgent first, then oldest; peek looks without taking
    low = client.send("inbox", "low", sender="t", priority="low").message_id
    urgent = client.send("inbox", "urgent", sender="t", priority="urgent").message_id
    normal = client.send("inbox", "normal", sender="t").message_id
    assert [m.message_id for m in box.peek(10)] == [urgent, normal, low]
    assert [m.message_id for m in box.peek(10)] == [urgent, normal, low]
    first = box.receive(timeout_s=1)
    assert first is not None and (first.message_id, first.payload) == (urgent, "urgent")
    first.ack()
    # A nack comes back after its backoff as the next attempt
    second = box.receive(timeout_s=1)
    assert second is not None and second.message_id == normal
    second.nack(ValueError("not now"))
    # While it waits out its backoff, the next due message comes first
    last = box.receive(timeout_s=1)
    assert last is not None and last.message_id == low
    last.ack()
    again = wait_for(lambda: box.receive(timeout_s=0.5), 10, "the nacked message")
    assert (again.message_id, again.attempt) == (normal, 2)
    again.reply({"ok": True})
    assert box.receive(timeout_s=0.1) is None
    states = {s: client.status(s) for s in (urgent, normal, low)}
    assert {s.status for s in states.values()} == {"delivered"}
    assert [a.outcome for a in states[normal].attempt_log] == ["retry", "delivered"]
    assert states[normal].attempt_log[0].error == "ValueError: not now"
    assert states[normal].reply == {"ok": True}


def test_mailbox_lease_expiry_and_exhaustion(backend: Backend) -> None:
    client = backend.client()
    client.register("fragile", max_retries=1, backoff_s=0.01, backoff_max_s=0.01)
    box = client.mailbox("fragile")
    sent = client.send("fragile", {"n": 1}, sender="t").message_id
    # Received and neither acked nor nacked within its lease: it comes back
    taken = box.receive(timeout_s=1, lease_s=0.3)
    assert taken is not None
    time.sleep(0.4)
    back = box.receive(timeout_s=1, lease_s=5)
    assert back is not None and (back.message_id, back.attempt) == (sent, 2)
    with pytest.raises(LeaseExpired):
        taken.ack()
    # Out of attempts (1 + max_retries=1): the nack dead-letters it
    back.nack("still failing")
    state = client.status(sent)
    assert (state.status, state.dead_reason) == ("dead", "exhausted")
    assert [a.outcome for a in state.attempt_log] == ["lost", "dead"]
    with pytest.raises(UnknownAgent, match=r"not a mailbox|unknown agent"):
        client.mailbox("nobody")


def test_mailbox_consumer_killed_after_receive_gets_the_message_back(backend: Backend) -> None:
    client = backend.client()
    client.register("pull")
    sent = client.send("pull", "job", sender="t").message_id
    code = (
        "import time\n"
        "from messaging import Client\n"
        "m = Client().mailbox('pull').receive(timeout_s=10, lease_s=1)\n"
        "print(m.message_id, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **backend.env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == sent
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    back = client.mailbox("pull").receive(timeout_s=10)
    assert back is not None and (back.message_id, back.attempt) == (sent, 2)
    back.ack()
    assert [a.outcome for a in client.status(sent).attempt_log] == ["lost", "delivered"]


def test_request_reply_and_late_result(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "echo,slow,asyncecho")
    client = backend.client()
    reply = client.request("echo", {"q": 1}, sender="asker", timeout_s=30)
    assert isinstance(reply, Reply)
    assert (reply.payload, reply.sender, reply.receiver) == ({"q": 1}, "echo", "asker")
    assert reply.correlation_id == reply.parent_id  # the request started its own chain
    # An async def handler answers too
    assert client.request("asyncecho", 7, sender="asker", timeout_s=30).payload == {"async": 7}
    # Timeout: the error carries the id, and the reply can be fetched later
    with pytest.raises(RequestTimeout) as info:
        client.request("slow", {"sleep_s": 1.5}, sender="asker", timeout_s=0.3)
    late = client.result(info.value.message_id, timeout_s=30)
    assert late.payload == {"attempt": 1}


def test_request_to_a_mailbox_agent_gets_its_reply(backend: Backend) -> None:
    client = backend.client()
    client.register("oracle")
    answers: list[Reply] = []
    asker = threading.Thread(
        target=lambda: answers.append(
            client.request("oracle", "6*7?", sender="asker", correlation_id="q-1", timeout_s=20)
        )
    )
    asker.start()
    message = client.mailbox("oracle").receive(timeout_s=20)
    assert message is not None
    message.reply(42)
    asker.join(timeout=20)
    assert [(a.payload, a.correlation_id, a.parent_id) for a in answers] == [
        (42, "q-1", message.message_id)
    ]


def test_broadcast_reaches_every_agent_but_the_sender(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "echo,flaky,doomed")
    client = backend.client()
    client.register("listener")
    results = client.broadcast({"news": 1}, sender="echo", idempotency_key="b-1")
    by_receiver = {client.status(r.message_id).receiver: r.message_id for r in results}
    assert sorted(by_receiver) == ["doomed", "flaky", "listener"]
    # One failing recipient dead-letters while the others succeed
    assert wait_final(client, by_receiver["flaky"]).status == "delivered"
    assert wait_final(client, by_receiver["doomed"]).dead_reason == "exhausted"
    heard = client.mailbox("listener").receive(timeout_s=5)
    assert heard is not None and heard.payload == {"news": 1}
    heard.ack()
    # The same broadcast again is a duplicate for every recipient
    assert all(
        r.duplicate for r in client.broadcast({"news": 1}, sender="echo", idempotency_key="b-1")
    )
    assert backend.runs("echo") == []


def test_topics_with_overlapping_patterns(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "echo,flaky")
    client = backend.client()
    assert client.subscribe("echo", "orders.*")
    assert client.subscribe("echo", "orders.created")
    assert not client.subscribe("echo", "orders.created")
    assert client.subscribe("flaky", "*.created")
    created = client.publish("orders.created", {"succeed_on": 1}, sender="shop")
    deleted = client.publish("orders.deleted", {"id": 9}, sender="shop")
    assert len(created) == 2 and len(deleted) == 1
    for sent in [*created, *deleted]:
        assert wait_final(client, sent.message_id).status == "delivered"
    # echo matched by two patterns still got one message per publish
    assert sorted(json.dumps(client.status(r["id"]).payload) for r in backend.runs("echo")) == [
        '{"id": 9}',
        '{"succeed_on": 1}',
    ]
    assert client.unsubscribe("echo", "orders.*")
    assert client.publish("orders.deleted", {"id": 10}, sender="shop") == []


def test_expired_messages_are_dead_lettered_never_handled(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker().stop()
    client = backend.client()
    client.register("late")
    to_worker = client.send("echo", "stale", sender="t", ttl_s=0.3).message_id
    to_mailbox = client.send("late", "stale", sender="t", ttl_s=0.3).message_id
    time.sleep(0.6)
    assert client.mailbox("late").receive(timeout_s=0.2) is None
    start_worker()
    for message_id in (to_worker, to_mailbox):
        state = wait_final(client, message_id)
        assert (state.status, state.dead_reason) == ("dead", "expired")
    assert backend.runs("echo") == []


def test_urgent_messages_overtake_a_queued_backlog(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 200 low messages queued before 5 urgent ones, and no worker running yet
    start_worker().stop()
    client = backend.client()
    low = client.send_many(
        [Envelope(sender="t", receiver="echo", payload=n, priority="low") for n in range(200)]
    )
    urgent = client.send_many(
        [
            Envelope(sender="t", receiver="echo", payload=f"u{n}", priority="urgent")
            for n in range(5)
        ]
    )
    # When one worker with one process drains the inbox
    start_worker("--agents", "echo", "--concurrency", "1")
    for sent in urgent:
        wait_final(client, sent.message_id)
    wait_for(lambda: len(backend.runs("echo")) >= 15, 60, "15 deliveries")
    # Then every urgent message was among the first 15 handled
    first = [r["id"] for r in backend.runs("echo")[:15]]
    assert {s.message_id for s in urgent} <= set(first)
    assert len(low) == 200


def test_async_client_and_async_mailbox(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "asyncecho")

    async def scenario() -> tuple[object, object, object]:
        async with AsyncClient(backend.settings) as aclient:
            reply = await aclient.request("asyncecho", "hi", sender="a", timeout_s=30)
            await aclient.register("abox")
            sent = await aclient.send("abox", {"n": 1}, sender="a")
            mailbox = await aclient.mailbox("abox")
            async for message in mailbox:
                message.reply("seen")
                break
            late = await aclient.result(sent.message_id, timeout_s=5)
            return reply.payload, message.message_id == sent.message_id, late.payload

    assert asyncio.run(scenario()) == ({"async": "hi"}, True, "seen")


def test_exactly_once_effect_survives_sigkill_between_write_and_completion(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    engine = storage.engine_for(backend.settings.database)
    storage.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE test_ledger (message_id VARCHAR(36), attempt INTEGER)"))
    start_worker("--agents", "ledger")
    client = backend.client()
    # Given handlers killed (SIGKILL of their process) after writing, before completing
    trials = [
        client.send("ledger", {"crash_on": 1}, sender="t", delivery="exactly-once").message_id
        for _ in range(4)
    ]
    calm = client.send("ledger", {}, sender="t", delivery="exactly-once").message_id
    # Then each is delivered on a later attempt, and its effect exists exactly once
    for message_id in [*trials, calm]:
        assert wait_final(client, message_id, timeout_s=90).status == "delivered"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, attempt FROM test_ledger")).all()
    effects: dict[str, list[int]] = {}
    for message_id, attempt in rows:
        effects.setdefault(message_id, []).append(attempt)
    assert {m: effects.get(m) for m in trials} == {m: [2] for m in trials}
    assert effects[calm] == [1]
    # The killed attempts did write before dying: the rollback is what kept them out
    assert sum(1 for r in backend.runs("ledger", "wrote") if r["attempt"] == 1) >= 5


def test_best_effort_runs_once_without_a_row(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "echo,doomed")
    client = backend.client()
    sent = client.send("echo", "fast", sender="t", delivery="best-effort")
    assert (sent.status, sent.duplicate) == ("sent", False)
    wait_for(lambda: backend.runs("echo"), 30, "the best-effort delivery")
    with pytest.raises(MessageNotFound):
        client.status(sent.message_id)
    # A failing best-effort message is not retried
    client.send("doomed", None, sender="t", delivery="best-effort")
    wait_for(lambda: backend.runs("doomed"), 30, "the failing best-effort delivery")
    time.sleep(1.0)
    assert len(backend.runs("doomed")) == 1
    with pytest.raises(DeliveryError, match="exactly-once"):
        _ = Context(Envelope(sender="a", receiver="b"), sender=client, worker="w").session
