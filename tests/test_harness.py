"""The behaviour checks a developer runs while changing code: in one process, in milliseconds.

``worker.Harness`` delivers through the real deliver path, lifecycle, embedded broker
and SQLite store, with no worker subprocess. The real-worker suite (``test_delivery``,
``test_semantics``) stays the proof against real servers and killed processes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import text

import storage
from messaging import (
    Context,
    Envelope,
    InboxFull,
    MessageNotFound,
    PermanentError,
    Settings,
    agent,
)
from tests.conftest import publish_future_envelope
from wire import dead_letter_queue, inbox_depths
from worker import Harness, SweepReport

# Every handler run, as (agent, message id, attempt): the harness runs them in this process.
RUNS: list[tuple[str, str, int]] = []
FAIL_UNTIL: dict[str, int] = {}  # message id -> attempts that fail before one succeeds


def _ran(msg: Envelope, ctx: Context) -> None:
    RUNS.append((ctx.agent, str(msg.id), ctx.attempt))


@agent("h.echo")
def echo(msg: Envelope, ctx: Context) -> Any:
    _ran(msg, ctx)
    return msg.payload


@agent("h.flaky", max_retries=4)
def flaky(msg: Envelope, ctx: Context) -> str:
    _ran(msg, ctx)
    if ctx.attempt <= FAIL_UNTIL.get(str(msg.id), 0):
        raise ConnectionError(f"upstream down on attempt {ctx.attempt}")
    return "ok"


@agent("h.doomed", max_retries=2)
def doomed(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@agent("h.rejecter")
def rejecter(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    raise PermanentError("this can never work")


@agent("h.ledger")
def ledger(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    ctx.session.execute(text("INSERT INTO h_effects (message_id) VALUES (:m)"), {"m": str(msg.id)})
    if isinstance(msg.payload, dict) and msg.payload.get("fail_after_write"):
        raise RuntimeError("failed after writing")


@agent("h.parent")
def parent(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    ctx.send("h.echo", {"child": 1})
    ctx.send("h.echo", {"child": 2})
    if ctx.attempt == 1:
        raise ConnectionError("fails after sending its children, then runs again")


@agent("h.async")
async def asynchronous(msg: Envelope, ctx: Context) -> Any:
    _ran(msg, ctx)
    return {"awaited": msg.payload}


OUTAGE: list[int] = []  # h.breaker's upstream fails this many more calls
STAMPS: list[float] = []  # when h.metered ran


@agent("h.breaker", max_retries=10, circuit_after=3, circuit_cooldown_s=0.4)
def breaker(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    if OUTAGE and OUTAGE[0] > 0:
        OUTAGE[0] -= 1
        raise ConnectionError("upstream down")


@agent("h.metered", rate_limit="5/s")
def metered(msg: Envelope, ctx: Context) -> None:
    _ran(msg, ctx)
    STAMPS.append(time.monotonic())


AGENTS = (
    "h.echo",
    "h.flaky",
    "h.doomed",
    "h.rejecter",
    "h.ledger",
    "h.parent",
    "h.async",
    "h.breaker",
    "h.metered",
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    RUNS.clear()
    FAIL_UNTIL.clear()
    OUTAGE.clear()
    STAMPS.clear()
    settings = Settings(
        home=tmp_path,
        backoff_s=0.01,
        backoff_max_s=0.05,
        lease_s=30,
        redeliver_after_s=0.05,
        publish_grace_s=0.05,
    )
    with Harness(settings) as h:
        assert h.serve(*AGENTS) == sorted(AGENTS)
        yield h
    storage.dispose_engines()


def runs(agent_name: str) -> list[tuple[str, int]]:
    return [(message_id, attempt) for name, message_id, attempt in RUNS if name == agent_name]


def test_a_message_is_delivered_with_its_reply(harness: Harness) -> None:
    sent = harness.client.send("h.echo", {"x": [1, 2]}, sender="t")
    assert [o.kind for o in harness.run()] == ["delivered"]
    state = harness.client.status(sent.message_id)
    assert (state.status, state.reply, state.attempts) == ("delivered", {"x": [1, 2]}, 1)
    assert runs("h.echo") == [(sent.message_id, 1)]


def test_a_send_encodes_its_payload_once(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every JSON encoding in this process whose output holds the payload is counted
    # (the marker sits past what Flower's summary shows of a payload).
    marker = "payload-marker-7f3a"
    payload = {"pad": "x" * 100, "marker": marker}
    encodings: list[str] = []
    encode = json.JSONEncoder.encode

    def counted(self: json.JSONEncoder, value: Any) -> str:
        text = encode(self, value)
        if marker in text:
            encodings.append(text)
        return text

    monkeypatch.setattr(json.JSONEncoder, "encode", counted)
    sent = harness.client.send("h.echo", payload, sender="t")
    assert len(encodings) == 1, encodings
    monkeypatch.undo()
    # and what was stored and published is that payload, whole
    harness.run()
    assert harness.client.status(sent.message_id).reply == payload


def test_an_async_handler_is_awaited(harness: Harness) -> None:
    sent = harness.client.send("h.async", 7, sender="t")
    harness.run()
    assert harness.client.status(sent.message_id).reply == {"awaited": 7}


def test_retries_with_backoff_then_success(harness: Harness) -> None:
    sent = harness.client.send("h.flaky", None, sender="t")
    FAIL_UNTIL[sent.message_id] = 2
    assert [o.kind for o in harness.run()] == ["retry", "retry", "delivered"]
    state = harness.client.status(sent.message_id)
    assert [a.outcome for a in state.attempt_log] == ["retry", "retry", "delivered"]
    assert state.attempt_log[0].error == "ConnectionError: upstream down on attempt 1"


def test_an_open_circuit_holds_deliveries_without_spending_attempts(harness: Harness) -> None:
    # Given an agent whose upstream fails three calls, and three messages for it
    OUTAGE.append(3)
    ids = [harness.client.send("h.breaker", {"n": n}, sender="t").message_id for n in range(3)]
    outcomes = harness.run()
    # Then three failures opened it, the retries were held (no attempt spent), one probe
    # ran after the cool-down and closed it, and the others followed
    assert len(RUNS) == 6
    assert {o.error for o in outcomes if o.reason == "held"} == {"held (circuit open)"}
    logs = [harness.client.status(message_id).attempt_log for message_id in ids]
    assert sorted(a.outcome for log in logs for a in log) == ["delivered"] * 3 + ["retry"] * 3
    assert all(log[-1].outcome == "delivered" for log in logs)
    info = {a.name: a for a in harness.client.agents()}["h.breaker"]
    assert (info.circuit, info.circuit_failures) == ("closed", 0)
    assert info.circuit_error == "ConnectionError: upstream down"


def test_a_rate_limited_agent_runs_its_messages_one_slot_apart(harness: Harness) -> None:
    sent_at = time.monotonic()
    ids = [harness.client.send("h.metered", {"n": n}, sender="t").message_id for n in range(5)]
    outcomes = harness.run()
    # Each message waited for a slot of its own (5/s: 200 ms apart, more than a delivery
    # takes even on a loaded machine, so some are held). The first slot is taken after
    # the sends, and a handler starts at its slot or a claim's time later (never more
    # than storage.SLOT_EARLY_S before it): the fifth starts at least 4 slots after the sends
    assert len(STAMPS) == 5 and STAMPS[-1] - sent_at >= 4 * 0.2 - storage.SLOT_EARLY_S, STAMPS
    assert {o.error for o in outcomes if o.reason == "held"} == {"held (rate limit 5/s)"}
    assert [harness.client.status(i).attempts for i in ids] == [1] * 5


def test_exhausted_retries_dead_letter_with_every_error(harness: Harness) -> None:
    sent = harness.client.send("h.doomed", {"order": 7}, sender="t")
    outcomes = harness.run()
    assert [o.kind for o in outcomes] == ["retry", "retry", "dead"]
    state = harness.client.status(sent.message_id)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "exhausted", 3)
    assert [a.error for a in state.attempt_log] == [
        f"RuntimeError: boom on attempt {n}" for n in (1, 2, 3)
    ]
    assert all(a.traceback and "RuntimeError" in a.traceback for a in state.attempt_log)
    # The dead letter went to the DLX queue too, with its reason and attempts
    settings = harness.settings
    options = harness.app.conf.broker_transport_options
    with Connection(settings.broker, transport_options=options) as conn:
        letter = conn.SimpleQueue(dead_letter_queue(settings)).get(timeout=1)
        assert (letter.payload["message_id"], letter.payload["reason"]) == (
            sent.message_id,
            "exhausted",
        )
        assert letter.payload["attempts"] == 3
        letter.ack()


def test_a_permanent_error_is_dead_at_once(harness: Harness) -> None:
    sent = harness.client.send("h.rejecter", None, sender="t")
    assert [o.kind for o in harness.run()] == ["dead"]
    state = harness.client.status(sent.message_id)
    assert (state.dead_reason, state.attempts) == ("rejected", 1)
    assert state.error == "PermanentError: this can never work"


def test_an_expired_message_is_dead_and_never_handled(harness: Harness) -> None:
    sent = harness.client.send("h.echo", None, sender="t", ttl_s=0.01)
    time.sleep(0.05)
    harness.run()
    state = harness.client.status(sent.message_id)
    assert (state.status, state.dead_reason) == ("dead", "expired")
    assert "before a handler took it" in (state.error or "")
    assert runs("h.echo") == []


def test_an_envelope_of_an_unknown_major_is_dead_as_invalid(harness: Harness) -> None:
    message_id = publish_future_envelope(harness.app, "h.echo")
    harness.run()
    state = harness.client.status(message_id)
    assert (state.status, state.dead_reason) == ("dead", "invalid")
    assert "unknown major version" in (state.error or "")
    assert runs("h.echo") == []


def test_exactly_once_writes_commit_with_the_completion_or_not_at_all(harness: Harness) -> None:
    with harness.client.engine.begin() as conn:
        conn.execute(text("CREATE TABLE h_effects (message_id TEXT NOT NULL)"))
    kept = harness.client.send("h.ledger", {}, sender="t", delivery="exactly-once")
    failed = harness.client.send(
        "h.ledger", {"fail_after_write": True}, sender="t", delivery="exactly-once"
    )
    harness.run()
    with harness.client.engine.connect() as conn:
        effects = conn.execute(text("SELECT message_id FROM h_effects")).scalars().all()
    # The failing handler wrote on each of its 6 attempts; none of it was kept
    assert effects == [kept.message_id]
    assert len(runs("h.ledger")) == 1 + 6
    assert harness.client.status(failed.message_id).dead_reason == "exhausted"


def test_children_of_a_rerun_handler_are_sent_once(harness: Harness) -> None:
    sent = harness.client.send("h.parent", None, sender="t", correlation_id="chain-h")
    harness.run()
    chain = harness.client.trace("chain-h")
    children = [s for s in chain if s.message_id != sent.message_id]
    assert sorted(c.payload["child"] for c in children) == [1, 2]
    assert {(c.parent_id, c.sender, c.status) for c in children} == {
        (sent.message_id, "h.parent", "delivered")
    }
    assert len(runs("h.parent")) == 2 and len(runs("h.echo")) == 2


def test_urgent_messages_overtake_a_queued_backlog(harness: Harness) -> None:
    backlog = [harness.client.send("h.echo", n, sender="t").message_id for n in range(3)]
    urgent = harness.client.send("h.echo", "now", sender="t", priority="urgent").message_id
    harness.run()
    assert [m for m, _ in runs("h.echo")] == [urgent, *backlog]


def test_a_lost_attempt_is_recovered_by_the_sweeper(harness: Harness) -> None:
    # Given a message whose worker claimed it and died (its lease runs out)
    sent = harness.client.send("h.echo", "lost", sender="t")
    claim = storage.claim(
        harness.client.engine, sent.message_id, worker="gone:1", now=time.time(), lease_s=0.3
    )
    assert claim is not None
    harness.run()  # the task is taken, but the row is running under the dead worker's lease
    time.sleep(0.35)
    # When the sweeper runs, the lost attempt is recorded and the message published
    # again at once: it runs one lease after its worker died
    assert harness.sweep().recovered == 1
    harness.run()
    state = harness.client.status(sent.message_id)
    assert state.status == "delivered"
    assert [(a.outcome, a.worker) for a in state.attempt_log] == [
        ("lost", "gone:1"),
        ("delivered", state.attempt_log[1].worker),
    ]


def test_best_effort_runs_once_without_a_row(harness: Harness) -> None:
    sent = harness.client.send("h.doomed", None, sender="t", delivery="best-effort")
    assert [o.kind for o in harness.run()] == ["dead"]
    assert len(runs("h.doomed")) == 1
    with pytest.raises(MessageNotFound):
        harness.client.status(sent.message_id)


def test_a_mailbox_follows_the_same_lifecycle(harness: Harness) -> None:
    client = harness.client
    # A backoff long enough that a loaded machine still reads "backing off" before it ends
    client.register("h.box", max_retries=1, backoff_s=1, backoff_max_s=1)
    box = client.mailbox("h.box")
    sent = client.send("h.box", {"n": 1}, sender="t")
    # nack: a retry after backoff, then dead once the retries are used
    first = box.receive()
    assert first is not None and first.attempt == 1
    first.nack("not now")
    assert box.receive() is None  # backing off
    second = box.receive(timeout_s=5)
    assert second is not None and second.attempt == 2
    second.nack(ValueError("still no"))
    state = client.status(sent.message_id)
    assert (state.status, state.dead_reason) == ("dead", "exhausted")
    assert [a.outcome for a in state.attempt_log] == ["retry", "dead"]
    # A consumer that vanishes with its leases uses the attempts up just the same
    lost = client.send("h.box", {"n": 2}, sender="t")
    for _ in range(2):
        assert box.receive(lease_s=0.01) is not None
        time.sleep(0.02)
    assert box.receive() is None
    state = client.status(lost.message_id)
    assert (state.status, state.dead_reason) == ("dead", "exhausted")
    assert "by lost consumers" in (state.error or "")


def _tasks(harness: Harness, agent: str) -> int:
    """Tasks waiting in an agent's inbox on the broker."""
    depth = inbox_depths(harness.app, [agent])[agent]
    assert depth is not None
    return depth


def test_a_message_whose_publish_never_happened_is_published_by_the_sweeper(
    harness: Harness,
) -> None:
    # Given a message stored by a sender that died before its publish (the row only)
    harness.sweep()  # the broker's epoch is set
    row = storage.NewMessage(
        id=(message_id := str(uuid.uuid4())),
        idempotency_key=message_id,
        correlation_id=message_id,
        parent_id=None,
        sender="t",
        receiver="h.echo",
        priority=5,
        envelope=Envelope.build("h.echo", "orphan", sender="t").wire_json(),
        created_at=time.time(),
        expires_at=None,
    )
    storage.insert_messages(harness.client.engine, [row])
    assert _tasks(harness, "h.echo") == 0
    # When the publish grace has passed, the sweeper publishes it, once
    time.sleep(0.1)
    assert harness.sweep().republished == 1
    assert harness.sweep().republished == 0
    harness.run()
    assert harness.client.status(message_id).status == "delivered"


def test_a_sent_message_is_recorded_as_handed_and_never_republished(harness: Harness) -> None:
    harness.sweep()  # the broker's epoch is set
    sent = harness.client.send("h.echo", 1, sender="t")
    harness.client.close()  # the handed marks are written (a background thread, else)
    row = storage.get_message(harness.client.engine, sent.message_id)
    assert row is not None and row.handed_at is not None
    time.sleep(0.1)
    assert storage.unpublished(harness.client.engine, now=time.time(), grace_s=0.05) == []
    assert _tasks(harness, "h.echo") == 1


def test_an_old_backlog_never_holds_more_than_two_tasks_a_message(harness: Harness) -> None:
    # Given a backlog that waits far longer than redeliver_after_s, swept again and again
    harness.sweep()
    ids = [harness.client.send("h.echo", n, sender="t").message_id for n in range(5)]
    harness.client.close()
    for _ in range(6):
        time.sleep(0.06)
        harness.sweep()
    # Then none got a spare copy: the inbox holds a task for each, the broker is short
    # of none (a lost task's spare is in test_recovery and bench/faults.py)
    assert _tasks(harness, "h.echo") == 5
    harness.run()
    assert sorted(m for m, _ in runs("h.echo")) == sorted(ids)


def test_a_broker_that_lost_its_contents_gets_every_waiting_message_back(
    harness: Harness,
) -> None:
    # Given waiting messages, one of them a retry waiting for its countdown
    harness.sweep()
    waiting = [harness.client.send("h.echo", n, sender="t").message_id for n in range(3)]
    retry = harness.client.send("h.flaky", None, sender="t").message_id
    FAIL_UNTIL[retry] = 1
    with harness.client.engine.begin() as conn:  # a long countdown
        conn.execute(
            text("UPDATE agentpost_messages SET due_at = :d WHERE id = :i"),
            {"d": time.time() + 0.5, "i": retry},
        )
    harness.client.close()
    # When the broker's folders are wiped (the epoch marker with them)
    for path in (harness.settings.home / "broker" / "queue").iterdir():
        path.unlink()
    # Then the next sweep republishes them all, the retry with its remaining countdown
    report = harness.sweep()
    assert report.lost == 4
    harness.run()
    assert sorted(m for m, _ in runs("h.echo")) == sorted(waiting)
    assert harness.client.status(retry).status == "delivered"
    assert harness.sweep() == SweepReport(recovered=0, republished=0, lost=0)


def test_a_publish_and_a_broadcast_carry_their_delivery_guarantee(harness: Harness) -> None:
    with harness.client.engine.begin() as conn:
        conn.execute(text("CREATE TABLE h_effects (message_id TEXT NOT NULL)"))
    harness.client.subscribe("h.ledger", "orders.*")
    published = harness.client.publish("orders.created", {}, sender="shop", delivery="exactly-once")
    # An exactly-once handler needs ctx.session, which an at-least-once message has not
    refused = harness.client.publish("orders.created", {}, sender="shop")
    loud = harness.client.broadcast("hi", sender="h.ledger", delivery="best-effort")
    harness.run()
    assert harness.client.status(published[0].message_id).status == "delivered"
    assert harness.client.status(refused[0].message_id).dead_reason == "rejected"
    # Best-effort: published to each of the other agents, no rows
    assert len(loud) == len(AGENTS) - 1 and {r.status for r in loud} == {"sent"}
    with harness.client.engine.connect() as conn:
        effects = conn.execute(text("SELECT message_id FROM h_effects")).scalars().all()
    assert effects == [published[0].message_id]


def test_the_sweeper_deletes_what_finished_past_its_retention(tmp_path: Path) -> None:
    # Given delivered messages kept 0.2 s and dead ones for ever (0), one of each
    settings = Settings(
        home=tmp_path, retain_delivered_s=0.2, retain_dead_s=0, prune_batch=1, rollup_lag_s=0.1
    )
    with Harness(settings) as h:
        h.serve("h.echo", "h.rejecter")
        delivered = [h.client.send("h.echo", {"n": n}, sender="t").message_id for n in range(2)]
        dead = h.client.send("h.rejecter", None, sender="t").message_id
        h.run()
        time.sleep(0.3)
        # When the sweeper runs twice (one message a status a sweep)
        h.sweep()
        assert sum(1 for m in delivered if _gone(h, m)) == 1
        h.sweep()
        # Then the delivered ones are gone, the dead one stays
        assert all(_gone(h, m) for m in delivered)
        assert h.client.status(dead).status == "dead"


def _gone(harness: Harness, message_id: str) -> bool:
    try:
        harness.client.status(message_id)
    except MessageNotFound:
        return True
    return False


def test_a_mailbox_declares_its_backlog_and_concurrency_limits(harness: Harness) -> None:
    client = harness.client
    client.register("h.limited_box", max_backlog=2, max_concurrency=1)
    box = client.mailbox("h.limited_box")
    client.send("h.limited_box", {"n": 1}, sender="t")
    client.send("h.limited_box", {"n": 2}, sender="t")
    with pytest.raises(InboxFull):
        client.send("h.limited_box", {"n": 3}, sender="t")
    first = box.receive()
    assert first is not None
    assert box.receive() is None  # one held at a time
    first.ack()
    second = box.receive()
    assert second is not None and second.payload == {"n": 2}
