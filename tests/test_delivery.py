"""The core behaviour suite, run on embedded, Redis + PostgreSQL and RabbitMQ + PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from kombu import Connection
from sqlalchemy import text

from messaging import MessageState
from tests.conftest import (
    ROOT,
    Backend,
    Worker,
    dead_letters_on_broker,
    lose_queued_messages,
    publish_future_envelope,
    wait_final,
    wait_for,
)
from wire import create_app, dead_letter_queue, inbox_queue

pytestmark = pytest.mark.slow


def test_delivery_from_a_process_that_imports_no_agent_code(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker serving the test agents
    start_worker()
    # When a separate Python process that never imports agent code sends a message
    code = (
        "import sys, json\n"
        "from messaging import Client\n"
        "r = Client().send('echo', {'hello': 'world'}, sender='outsider')\n"
        "imported = 'tests.agents' in sys.modules\n"
        "print(json.dumps({'id': r.message_id, 'agents_imported': imported}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **backend.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sent = json.loads(out.stdout.strip().splitlines()[-1])
    assert sent["agents_imported"] is False
    # Then the worker delivers it, and the handler's return value is the reply
    state = wait_final(backend.client(), sent["id"])
    assert state.status == "delivered"
    assert state.reply == {"hello": "world"}
    assert [a.outcome for a in state.attempt_log] == ["delivered"]
    assert len(backend.runs("echo")) == 1


def test_retries_with_backoff_then_success(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client = backend.client()
    sent = client.send("flaky", {"succeed_on": 3}, sender="tester")
    state = wait_final(client, sent.message_id)
    assert state.status == "delivered"
    assert state.attempts == 3
    assert [a.outcome for a in state.attempt_log] == ["retry", "retry", "delivered"]
    assert [a.number for a in state.attempt_log] == [1, 2, 3]
    assert "flaky failure on attempt 1" in (state.attempt_log[0].error or "")
    # Backoff: each retry waited at least half its base delay (0.05 s, doubled, jittered).
    log = state.attempt_log
    for earlier, later, base in ((log[0], log[1], 0.05), (log[1], log[2], 0.1)):
        assert later.started_at is not None
        assert (later.started_at - earlier.ended_at).total_seconds() >= base / 2 - 0.005
    assert state.reply == {"attempt": 3}


def test_exhausted_retries_dead_letter_with_every_error(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    backend.env["AGENTPOST_ALERT_HOOK"] = "tests.agents:alert"
    start_worker()
    client = backend.client()
    sent = client.send("doomed", {"n": 1}, sender="tester")
    state = wait_final(client, sent.message_id)
    # The row is dead, with each of the 3 attempts (1 + max_retries=2) and its error
    assert state.status == "dead"
    assert state.dead_reason == "exhausted"
    assert [a.outcome for a in state.attempt_log] == ["retry", "retry", "dead"]
    assert [a.error for a in state.attempt_log] == [
        f"RuntimeError: boom on attempt {n}" for n in (1, 2, 3)
    ]
    assert all(a.traceback and "RuntimeError" in a.traceback for a in state.attempt_log)
    assert [d.message_id for d in client.dead_letters()] == [sent.message_id]
    # The dead-letter exchange got the envelope and its error
    letters = wait_for(lambda: dead_letters_on_broker(backend), 20, "the DLX message")
    assert [(d["message_id"], d["reason"], d["attempts"]) for d in letters] == [
        (sent.message_id, "exhausted", 3)
    ]
    assert "boom on attempt 3" in str(letters[0]["error"])
    assert letters[0]["envelope"]["payload"] == {"n": 1}  # type: ignore[index]
    # The Celery task itself ended in FAILURE (what Flower lists)
    app = create_app(backend.settings)
    result = app.AsyncResult(sent.message_id)
    wait_for(lambda: result.state == "FAILURE", 20, "the task's FAILURE state")
    assert "boom on attempt 3" in str(result.result)
    assert len(backend.runs("doomed")) == 3
    # And the alert hook was called once, with the message and its reason
    alerts = wait_for(lambda: backend.runs("alerts"), 10, "the alert hook")
    assert alerts == [{"id": sent.message_id, "reason": "exhausted"}]


def test_a_late_retry_never_overwrites_a_finished_task_state(backend: Backend) -> None:
    # Celery publishes a retry before it stores RETRY: the next attempt can dead-letter
    # first, and the late RETRY must not turn a FAILURE back into "retrying" in Flower.
    app = create_app(backend.settings)
    # Ids of their own: the result backend outlives the test session on a shared Redis
    run = uuid.uuid4().hex
    dead, retrying = f"{run}-dead", f"{run}-retrying"
    app.backend.mark_as_failure(dead, RuntimeError("boom on attempt 3"))
    app.backend.mark_as_retry(dead, RuntimeError("boom on attempt 2"))
    assert app.AsyncResult(dead).state == "FAILURE"
    assert "boom on attempt 3" in str(app.AsyncResult(dead).result)
    # An unfinished task still records its retries, and then its end
    app.backend.mark_as_retry(retrying, RuntimeError("boom on attempt 1"))
    assert app.AsyncResult(retrying).state == "RETRY"
    app.backend.mark_as_failure(retrying, RuntimeError("boom on attempt 2"))
    assert app.AsyncResult(retrying).state == "FAILURE"


def test_permanent_error_dead_letters_without_retries(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client = backend.client()
    sent = client.send("rejecter", None, sender="tester")
    state = wait_final(client, sent.message_id)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "rejected", 1)
    assert state.attempt_log[0].error == "PermanentError: this message can never be handled"
    time.sleep(0.5)
    assert len(backend.runs("rejecter")) == 1


def test_errors_no_retry_can_fix_are_dead_at_once_with_their_cause(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given agents that can never succeed: a reply JSON has no form for, and
    # ctx.session used on an at-least-once message (retries up to 5 each)
    start_worker("--agents", "unencodable,needs_session")
    client = backend.client()
    unencodable = client.send("unencodable", None, sender="tester").message_id
    needs_session = client.send("needs_session", None, sender="tester").message_id
    # Then each is dead after one attempt, reason rejected, the attempt saying why
    state = wait_final(client, unencodable)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "rejected", 1)
    assert "reply is not JSON" in (state.attempt_log[0].error or ""), state.attempt_log
    state = wait_final(client, needs_session)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "rejected", 1)
    assert "delivery='exactly-once'" in (state.attempt_log[0].error or ""), state.attempt_log
    assert len(backend.runs("unencodable")) == len(backend.runs("needs_session")) == 1


def test_an_exactly_once_handler_whose_own_sql_fails_records_that_error(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an exactly-once handler that adds a row to a table that was never created
    start_worker("--agents", "unmade_table")
    client = backend.client()
    sent = client.send("unmade_table", None, sender="tester", delivery="exactly-once")
    # Then each attempt fails with the database's own error, retried as the agent says,
    # and the message is dead well inside one lease, not running until it expires
    state = wait_final(client, sent.message_id, timeout_s=30)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "exhausted", 2)
    for attempt in state.attempt_log:
        assert attempt.outcome != "lost" and "test_never_created" in (attempt.error or ""), (
            state.attempt_log
        )


def test_an_agent_s_own_tables_are_made_by_its_worker_and_take_its_exactly_once_writes(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an agent declaring tables=[Invoice], on a store that has never seen the table
    start_worker("--agents", "invoicer")
    client = backend.client()
    sent = client.send("invoicer", None, sender="shop", delivery="exactly-once")
    assert wait_final(client, sent.message_id).status == "delivered"
    # Then its worker made the table, and the handler's row committed with the completion
    with client.engine.connect() as conn:
        billed = conn.execute(text("SELECT message_id FROM test_invoices")).scalars().all()
    assert billed == [sent.message_id]


def test_same_idempotency_key_from_eight_processes(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    backend.client()  # schema exists before the race
    go_at = time.time() + 3
    code = (
        "import json, sys, time\n"
        "from messaging import Client\n"
        "c = Client(); c.agents()\n"
        f"time.sleep(max(0, {go_at} - time.time()))\n"
        "r = c.send('echo', {'pid': __import__('os').getpid()}, sender='racer', "
        "idempotency_key='order-42')\n"
        "print(json.dumps(r.model_dump()))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, **backend.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    # One message: every sender got the same id, exactly one of them created it
    assert len({r["message_id"] for r in results}) == 1
    assert sorted(r["duplicate"] for r in results) == [False] + [True] * 7
    client = backend.client()
    state = wait_final(client, results[0]["message_id"])
    assert state.status == "delivered"
    time.sleep(1.0)
    # And one handler run
    assert len(backend.runs("echo")) == 1


def test_sigkill_in_the_middle_of_a_handler_still_delivers(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a handler that is running (it sleeps on its first attempt)
    first = start_worker()
    client = backend.client()
    sent = client.send("slow", {"sleep_s": 2.5}, sender="tester")
    wait_for(lambda: backend.runs("slow", "start"), 30, "the handler to start")
    # When the whole worker (main process and pool) is killed with SIGKILL
    first.kill()
    assert backend.runs("slow", "done") == []
    # Then a new worker delivers it once the lease expires and the sweeper republishes
    start_worker()
    state = wait_final(client, sent.message_id, timeout_s=90)
    assert state.status == "delivered"
    assert [a.outcome for a in state.attempt_log] == ["lost", "delivered"]
    assert state.reply == {"attempt": 2}
    assert len(backend.runs("slow", "done")) == 1


def test_a_handler_past_its_time_limit_is_recorded_timed_out_and_retried(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a handler whose first attempt runs past 80 % of a 10 s lease
    backend.env["AGENTPOST_LEASE_S"] = "10"
    start_worker("--agents", "slow")
    client = backend.client()
    sent = client.send("slow", {"sleep_s": 30}, sender="tester")
    # Then that attempt is stopped and recorded timed-out (not a lost worker a lease
    # later), and the retry delivers
    state = wait_final(client, sent.message_id, timeout_s=60)
    assert state.status == "delivered" and state.reply == {"attempt": 2}
    [first, second] = state.attempt_log
    assert first.outcome == "retry" and (first.error or "").startswith("timed-out"), first
    assert "(8 s: 80% of" in (first.error or "") and second.outcome == "delivered"


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_an_async_handler_past_its_time_limit_is_cancelled_not_left_running(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an async handler whose first attempt sleeps past 80 % of a 10 s lease
    backend.env["AGENTPOST_LEASE_S"] = "10"
    start_worker("--agents", "slow_async")
    client = backend.client()
    sent = client.send("slow_async", None, sender="tester")
    # Then the attempt is recorded timed-out, its coroutine cancelled, the retry delivers
    state = wait_final(client, sent.message_id, timeout_s=60)
    assert (state.status, state.reply) == ("delivered", {"attempt": 2})
    assert (state.attempt_log[0].error or "").startswith("timed-out"), state.attempt_log
    assert [r["attempt"] for r in backend.runs("slow_async", "cancelled")] == [1]


def test_broker_losing_queued_messages_loses_nothing(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given 20 messages waiting in the broker with no worker running
    start_worker().stop()
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="tester").message_id for n in range(20)]
    # When the broker loses them (Redis FLUSHDB; a purge; the files removed)
    lose_queued_messages(backend)
    # Then once a worker runs, the sweeper republishes and every one is delivered once
    start_worker()
    for message_id in ids:
        assert wait_final(client, message_id, timeout_s=90).status == "delivered"
    time.sleep(1.0)
    assert sorted(r["id"] for r in backend.runs("echo")) == sorted(ids)


def test_pickled_task_body_is_refused_and_never_unpickled(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    marker = backend.spool / "pickle-executed"
    settings = backend.settings
    app = create_app(settings)
    # A task message whose pickle body would create a file if it were ever loaded
    body = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            routing_key=inbox_queue("echo", settings).routing_key,
            exchange=inbox_queue("echo", settings).exchange,
            declare=[inbox_queue("echo", settings)],
            headers={
                "task": "agentpost.deliver",
                "id": "pickled-1",
                "lang": "py",
                "argsrepr": "",
                "kwargsrepr": "",
            },
        )
    # The worker stays healthy and delivers the next JSON message
    client = backend.client()
    sent = client.send("echo", "after pickle", sender="tester")
    assert wait_final(client, sent.message_id).status == "delivered"
    assert not marker.exists()
    assert [r["id"] for r in backend.runs("echo")] == [sent.message_id]


def test_unknown_schema_major_is_dead_lettered_as_invalid(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client = backend.client()
    # A newer producer's envelope (schema 2.x), stored and published as it would be
    message_id = publish_future_envelope(client.app, "echo")
    state = wait_final(client, message_id)
    assert (state.status, state.dead_reason) == ("dead", "invalid")
    assert "unknown major version" in (state.error or "")
    assert backend.runs("echo") == []


def test_children_of_a_rerun_handler_are_sent_once(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client = backend.client()
    sent = client.send("parent", None, sender="tester", correlation_id="chain-1")
    state = wait_final(client, sent.message_id)
    assert (state.status, state.attempts) == ("delivered", 2)

    def chain() -> list[MessageState]:
        states = client.trace("chain-1")
        return states if len(states) == 3 and all(s.status == "delivered" for s in states) else []

    states = wait_for(chain, 30, "the two children to be delivered")
    children = [s for s in states if s.message_id != sent.message_id]
    assert sorted(c.payload["child"] for c in children) == [1, 2]
    assert {c.parent_id for c in children} == {sent.message_id}
    assert {c.correlation_id for c in children} == {"chain-1"}
    assert {c.sender for c in children} == {"parent"}
    time.sleep(1.0)
    assert len(backend.runs("echo")) == 2


def test_redrive_of_a_fixed_dead_message_delivers_it(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client = backend.client()
    sent = client.send("gate", None, sender="tester", idempotency_key="gate-1")
    assert wait_final(client, sent.message_id).status == "dead"
    (backend.spool / "gate-open").touch()
    again = client.redrive(sent.message_id)
    assert again.message_id == sent.message_id
    state = wait_for(
        lambda: (s := client.status(sent.message_id)).status == "delivered" and s,
        60,
        "the redriven message",
    )
    assert (state.attempts, state.redrives, state.reply) == (1, 1, "passed")
    assert [(a.redrive, a.outcome) for a in state.attempt_log] == [(0, "dead"), (1, "delivered")]
    assert client.send("gate", None, sender="tester", idempotency_key="gate-1").duplicate


def test_plain_celery_command_line_serves_an_agent(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker started with Celery's own command line, as the README documents
    backend.env["AGENTPOST_AGENT_MODULES"] = "tests.agents"
    ns = backend.settings.namespace
    start_worker(
        argv=[
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery",
            "worker",
            "-Q",
            f"{ns}agent.echo,{ns}agentpost.sweeper",
            "-c",
            "1",
            "-n",
            "plain@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
    )
    client = backend.client()
    # Then it registered just the agent whose inbox it consumes, and delivers to it
    assert [(a.name, a.kind) for a in client.agents()] == [("echo", "handler")]
    sent = client.send("echo", [1, 2, 3], sender="tester")
    state = wait_final(client, sent.message_id)
    assert (state.status, state.reply) == ("delivered", [1, 2, 3])


@pytest.mark.parametrize("backend", ["amqp"], indirect=True)
def test_rabbitmq_inboxes_dead_letter_natively(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # x-dead-letter-exchange is a RabbitMQ feature: this runs on RabbitMQ only.
    start_worker().stop()
    settings = backend.settings
    # A message the broker itself rejects from an inbox goes to agentpost.dead_letter
    with Connection(settings.broker) as conn:
        inbox = conn.SimpleQueue(inbox_queue("echo", settings))
        inbox.put({"not": "a task"}, serializer="json")
        message = inbox.get(timeout=5)
        message.reject(requeue=False)
        inbox.close()
        dead = conn.SimpleQueue(dead_letter_queue(settings))
        letter = dead.get(timeout=5)
        assert letter.payload == {"not": "a task"}
        assert letter.headers["x-death"][0]["reason"] == "rejected"
        letter.ack()
        dead.close()
