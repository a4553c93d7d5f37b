"""What an agent declares about itself, enforced on real workers: retry rules by error
type, ``Retry(after_s=...)`` that spends no retry, a time limit per agent, a backlog
limit checked by every sender."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

import storage
from messaging import Envelope, InboxFull, InvalidEnvelope
from tests.conftest import Backend, Gateway, Worker, agentpost_cli, create_key, wait_final

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True),
]


def test_retry_rules_by_error_type(backend: Backend, start_worker: Callable[..., Worker]) -> None:
    # Given an agent retrying TimeoutError and OSError (twice), giving up on KeyError
    start_worker("--agents", "picky")
    client = backend.client()
    sent = {
        name: client.send("picky", {"raise": name}, sender="tester").message_id
        for name in ("KeyError", "TimeoutError", "ValueError", "ConnectionError")
    }
    states = {name: wait_final(client, message_id) for name, message_id in sent.items()}
    # Then give_up_on is dead at once, even where retry_on matches too (KeyError is no
    # OSError, but ConnectionError is one and is retried), and an error outside retry_on
    # is dead at once as well; what retry_on names is retried until the retries are used
    outcome = {name: (s.status, s.dead_reason, s.attempts) for name, s in states.items()}
    assert outcome == {
        "KeyError": ("dead", "rejected", 1),
        "TimeoutError": ("dead", "exhausted", 3),
        "ValueError": ("dead", "rejected", 1),
        "ConnectionError": ("dead", "exhausted", 3),
    }
    # And each attempt's real cause is recorded
    assert states["KeyError"].attempt_log[0].error == "KeyError: 'raised on purpose'"
    assert [a.outcome for a in states["TimeoutError"].attempt_log] == ["retry", "retry", "dead"]
    runs = backend.runs("picky")
    assert {name: sum(r["id"] == i for r in runs) for name, i in sent.items()} == {
        "KeyError": 1,
        "TimeoutError": 3,
        "ValueError": 1,
        "ConnectionError": 3,
    }


def test_a_handler_asking_to_be_tried_later_spends_no_retry(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an agent with no retries at all, which postpones itself three times
    start_worker("--agents", "patient")
    client = backend.client()
    sent = client.send("patient", {"postpone": 3}, sender="tester")
    # Then it is delivered on its fourth run, its attempts recorded postponed, not failed
    state = wait_final(client, sent.message_id)
    assert (state.status, state.reply) == ("delivered", "done at last")
    log = [(a.number, a.outcome) for a in state.attempt_log]
    assert log == [(1, "postponed")] * 3 + [(1, "delivered")], log
    assert state.attempt_log[0].error == "postponed: not yet"
    # And the waits were at least the 0.2 s asked for
    runs = [r["at"] for r in backend.runs("patient")]
    assert len(runs) == 4 and all(b - a >= 0.19 for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize(
    ("agent_name", "pool"),
    [("sleepy", "prefork"), ("sleepy_async", "prefork"), ("sleepy_async", "threads")],
)
def test_a_handler_past_its_time_limit_is_stopped_and_recorded_timed_out(
    backend: Backend, start_worker: Callable[..., Worker], agent_name: str, pool: str
) -> None:
    # Given an agent with time_limit_s=0.5 and one retry
    start_worker("--agents", agent_name, "--pool", pool)
    client = backend.client()
    # When one message sleeps 0.1 s and another 30 s
    quick = client.send(agent_name, {"sleep": 0.1}, sender="tester").message_id
    stuck = client.send(agent_name, {"sleep": 30}, sender="tester").message_id
    # Then the quick one is delivered, the other stopped twice and dead, each attempt
    # recorded timed-out (a failure like any other)
    assert wait_final(client, quick).status == "delivered"
    state = wait_final(client, stuck, timeout_s=20)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "exhausted", 2)
    errors = [a.error for a in state.attempt_log]
    assert errors == ["timed-out: the handler ran past its time_limit_s (0.5 s)"] * 2, errors
    # And the handler never woke from its sleep: it was stopped, not waited for
    woke = [r for r in backend.runs(agent_name, "woke") if r["id"] == stuck]
    assert woke == []


def test_a_send_past_the_agent_s_max_backlog_is_refused_with_nothing_stored(
    backend: Backend, start_worker: Callable[..., Worker], start_gateway: Callable[..., Gateway]
) -> None:
    # Given an agent declaring max_backlog=3 (registered by its worker, now stopped),
    # holding 3 undelivered messages
    start_worker("--agents", "bounded").stop()
    client = backend.client()
    for _ in range(3):
        client.send("bounded", {}, sender="tester")
    engine = storage.engine_for(backend.settings.database)

    def stored() -> int:
        query = text("SELECT count(*) FROM agentpost_messages WHERE receiver = 'bounded'")
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # When a 4th is sent, alone, in a batch, or waiting a little for room
    with pytest.raises(InboxFull) as refused:
        client.send("bounded", {}, sender="tester")
    batch = [Envelope.build("bounded", {}, sender="tester") for _ in range(2)]
    with pytest.raises(InboxFull):
        client.send_many(batch)
    started = time.monotonic()
    with pytest.raises(InboxFull):
        client.send("bounded", {}, sender="tester", wait_s=0.5)
    waited = time.monotonic() - started
    # Then each is refused naming the backlog and the limit, and nothing more is stored
    assert (refused.value.backlog, refused.value.limit) == (3, 3)
    assert "max_backlog is 3" in str(refused.value)
    assert stored() == 3 and waited >= 0.5
    # And the gateway answers 429 with Retry-After for it
    gateway = start_gateway()
    _, key = create_key(backend, "caller2", "bounded", "send")
    answer = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"X-API-Key": key},
        json={"target_agent": "bounded", "payload": {}},
        timeout=10,
    )
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1", answer.text
    assert answer.json()["limit"] == 3 and stored() == 3


def test_a_typed_agent_s_payload_is_checked_by_every_sender_and_its_reply_by_the_worker(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker serving an agent typed payload=Brief, reply=Draft (pydantic models)
    start_worker("--agents", "typed")
    engine = storage.engine_for(backend.settings.database)

    def stored() -> int:
        query = text("SELECT count(*) FROM agentpost_messages WHERE receiver = 'typed'")
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # When a process that imports no agent code sends a payload that does not fit
    done = agentpost_cli(backend, "send", "typed", '{"topic": 5, "words": 0}')
    # Then it is refused naming each field, and nothing is stored
    assert done.returncode != 0, done.stdout
    said = " ".join(done.stderr.split())
    assert 'payload.topic: 5 is not of type "string"' in said, said
    assert "payload.words: 0 is less than or equal to the minimum of 0" in said, said
    assert stored() == 0
    # And a payload that fits reaches the handler as a Brief; its Draft is the reply
    client = backend.client()
    reply = client.request("typed", {"topic": "tides", "words": 120}, sender="tester", timeout_s=30)
    assert reply.payload == {"title": "Brief: tides", "words": 120}
    # And a reply that is no Draft is dead at once, the validation error recorded
    bad = client.send("typed", {"topic": "bad reply", "words": 1}, sender="tester")
    state = wait_final(client, bad.message_id)
    assert (state.status, state.dead_reason, state.attempts) == ("dead", "rejected", 1)
    assert "the reply does not fit Draft: reply.words: Field required" in (state.error or "")
    # And the contract is shown to operators, its schema in full
    listed = {a["name"]: a for a in json.loads(agentpost_cli(backend, "agents", "--json").stdout)}
    assert listed["typed"]["contract"] == "payload Brief · reply Draft (v1)"
    shown = json.loads(agentpost_cli(backend, "agents", "show", "typed", "--json").stdout)
    assert shown["payload_schema"]["required"] == ["topic", "words"]

    # When a new version of the agent registers a changed payload schema
    new_schema = {**shown["payload_schema"], "required": ["topic", "words", "audience"]}
    storage.register_agents(
        engine,
        [("typed", shown["queue"])],
        kind="handler",
        now=time.time(),
        schemas={"typed": (json.dumps(new_schema), json.dumps(shown["reply_schema"]))},
    )
    # Then a running sender checks against it within its registry's 5 s, without a restart
    deadline = time.monotonic() + 10
    while True:
        try:
            client.send("typed", {"topic": "tides", "words": 1}, sender="tester")
        except InvalidEnvelope as refused:
            assert "(its schema v2)" in str(refused) and '"audience" is a required' in str(
                refused
            ), refused
            break
        assert time.monotonic() < deadline, "the sender kept the old schema"
        time.sleep(0.5)
