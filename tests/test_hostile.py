"""Hostile input at the broker: what anyone who can publish to an inbox may send.

Real workers on every backend. A message on ``agent.<name>`` that claims to be an
``agentpost.deliver`` task but is not one never stops the worker: it goes to the
dead-letter queue (reason ``undecodable``) and the same worker delivers the next message.
A task is a token for a stored message: a forged body never changes what runs, or
another message's state.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text

import storage
from messaging import Envelope
from tests.conftest import (
    GATEWAY_ENV,
    JWT_SECRET,
    Backend,
    Gateway,
    Worker,
    agentpost_cli,
    answers,
    create_key,
    dead_letters_on_broker,
    free_port,
    lose_queued_messages,
    serving,
    wait_final,
    wait_for,
)
from wire import create_app, inbox_name, inbox_queue, publish_delivery

pytestmark = pytest.mark.slow

# (what it is, body, content type, content encoding)
POISON: list[tuple[str, Any, str, str]] = [
    ("JSON of the wrong shape", "[1, 2]", "application/json", "utf-8"),
    ("JSON object, not a triple", '{"a": 1}', "application/json", "utf-8"),
    ("envelope not an object", '[["x"], {}, {}]', "application/json", "utf-8"),
    ("two arguments", "[[{}, {}], {}, {}]", "application/json", "utf-8"),
    ("created_at not a number", '[[{}], {"created_at": "x"}, {}]', "application/json", "utf-8"),
    ("not JSON at all", "{not json", "application/json", "utf-8"),
    ("raw application/data", b"\x00\x01\xffbinary", "application/data", "binary"),
    ("raw application/text", "hello", "application/text", "utf-8"),
    ("a pickle", pickle.dumps({"never": "unpickled"}), "application/x-python-serialize", "binary"),
]


def _publish_raw(
    backend: Backend, receiver: str, body: Any, content_type: str, encoding: str
) -> None:
    settings = backend.settings
    app = create_app(settings)
    queue = inbox_queue(receiver, settings)
    # The app's own connection: on the embedded broker its transport writes each file
    # whole (kombu's plain filesystem one can be read half written, and dropped).
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            content_type=content_type,
            content_encoding=encoding,
            headers={"task": "agentpost.deliver", "id": str(uuid.uuid4())},
        )


def test_poison_tasks_are_dead_lettered_and_the_same_worker_goes_on(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a running worker
    worker = start_worker("--agents", "echo")
    client = backend.client()
    # When each kind of poison lands in its inbox, then a normal message
    for _, body, content_type, encoding in POISON:
        _publish_raw(backend, "echo", body, content_type, encoding)
    sent = client.send("echo", "after the poison", sender="t")
    # Then the same worker process delivers the normal message
    assert wait_final(client, sent.message_id).status == "delivered"
    assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
    # And every poison body is in the dead-letter queue, with why it was refused
    letters: list[dict[str, Any]] = []
    wait_for(
        lambda: letters.extend(dead_letters_on_broker(backend)) or len(letters) >= len(POISON),
        20,
        "the poison bodies in the dead-letter queue",
    )
    refused = [letter for letter in letters if letter["reason"] == "undecodable"]
    assert len(refused) == len(POISON), letters
    assert {letter["envelope"]["content_type"] for letter in refused} == {
        content_type for _, _, content_type, _ in POISON
    }
    assert all(letter["error"] and letter["envelope"]["queue"] for letter in refused), refused
    log = worker.log.read_text()
    assert "Unrecoverable error" not in log
    assert log.count("refused a task from queue") == len(POISON), log[-3000:]
    assert "unpickled" not in log  # the pickle was never loaded (its bytes are not shown)


def _forged(message_id: str, receiver: str, **changes: Any) -> dict[str, Any]:
    wire = Envelope.build(receiver, "forged", sender="bob").wire()
    return {**wire, "id": message_id, **changes}


def test_a_forged_task_body_never_overrides_the_stored_message(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given messages waiting in the store while no worker runs: two to echo, and one
    # from alice to a mailbox agent
    start_worker("--agents", "echo").stop()
    client = backend.client()
    client.register("inbox1")
    real = client.send("echo", {"from": "carol"}, sender="carol")
    future = client.send("echo", {"from": "dave"}, sender="dave")
    alices = client.send("inbox1", {"for": "inbox1"}, sender="alice")
    client.flush()
    lose_queued_messages(backend)  # so that the forged tasks are the ones the worker reads
    # When someone with access to the broker publishes tasks reusing their ids: another
    # sender and payload, a schema version no worker reads, another agent's message
    app = create_app(backend.settings)
    for forged in (
        _forged(real.message_id, "echo"),
        _forged(future.message_id, "echo", schema_version="9.0"),
        _forged(alices.message_id, "echo"),
    ):
        publish_delivery(app, message_id=forged["id"], receiver="echo", priority=5, envelope=forged)
    worker = start_worker("--agents", "echo")
    # Then each echo message is delivered as it was stored, once
    for sent, payload in ((real, {"from": "carol"}), (future, {"from": "dave"})):
        state = wait_final(client, sent.message_id)
        assert (state.status, state.sender, state.reply) == ("delivered", sent_by(payload), payload)
    # And alice's message was not touched: still queued for its mailbox, as sent
    state = client.status(alices.message_id)
    assert (state.status, state.attempts, state.sender) == ("queued", 0, "alice")
    taken = client.mailbox("inbox1").receive(timeout_s=5)
    assert taken is not None and taken.payload == {"for": "inbox1"}
    taken.ack()
    assert sorted(r["id"] for r in backend.runs("echo")) == sorted(
        [real.message_id, future.message_id]
    )
    if backend.name != "embedded":  # there the store picks the message: no body is read
        assert "differs from the stored message" in worker.log.read_text()


def sent_by(payload: dict[str, str]) -> str:
    return payload["from"]


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_one_caller_s_flood_of_waiting_invokes_does_not_stall_the_others(
    backend: Backend,
    start_worker: Callable[..., Worker],
    start_gateway: Callable[..., Gateway],
) -> None:
    # Given a gateway, echo served by a worker, and an agent nobody serves (its invokes
    # wait until their timeout), and a flooding caller allowed 50 requests in flight
    start_worker("--agents", "echo")
    settings = backend.settings
    storage.register_agents(
        storage.engine_for(settings.database),
        [("void", inbox_name("void", settings))],
        kind="handler",
        now=time.time(),
    )
    gateway = start_gateway(AGENTPOST_GATEWAY_MAX_IN_FLIGHT="50")
    _, flood_key = create_key(backend, "flooder", "void", "invoke")

    async def scenario() -> tuple[list[int], float, int, float, int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=180, limits=limits) as http:

            def invoke_void(n: int) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(
                    http.post(
                        "/v1/agents/void/invoke",
                        headers={"X-API-Key": flood_key},
                        json={"payload": {"n": n}, "timeout_s": 120},
                    )
                )

            flood = [invoke_void(n) for n in range(50)]
            # When its 50 invokes are waiting (their messages stored), and it sends more
            deadline = time.monotonic() + 90
            while _stored("void") < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            ended = [(t.result().status_code, t.result().text[:300]) for t in flood if t.done()]
            assert _stored("void") == 50, f"the flood's invokes did not all arrive: {ended}"
            refused = [r.status_code for r in await asyncio.gather(*map(invoke_void, range(5)))]
            # Then another caller's health check and a quick invoke are answered promptly
            own = {"X-API-Key": gateway.api_key}
            t0 = time.perf_counter()
            health = await http.get("/healthz", headers=own, timeout=5)
            health_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            quick = await http.post(
                "/v1/agents/echo/invoke", headers=own, json={"payload": 1, "timeout_s": 5}
            )
            quick_s = time.perf_counter() - t0
            for task in flood:
                task.cancel()
            return refused, health_s, health.status_code, quick_s, quick.status_code

    engine = storage.engine_for(settings.database)

    def _stored(agent: str) -> int:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM agentpost_messages WHERE receiver = :r")
            return int(conn.execute(query, {"r": agent}).scalar_one())

    refused, health_s, health_status, quick_s, quick_status = asyncio.run(scenario())
    assert refused == [429] * 5
    assert health_status == 200 and quick_status == 200
    # (seconds here, against 17 s before the waits had a pool of their own)
    assert health_s < 5 and quick_s < 5, (health_s, quick_s)
    print(f"healthz {health_s:.3f} s, quick invoke {quick_s:.3f} s with 50 invokes in flight")


def test_failed_authentication_is_rate_limited_per_address_and_audits_a_bounded_number(
    backend: Backend, start_gateway: Callable[..., Gateway]
) -> None:
    # Given a gateway with the default allowance of failed authentications (10, then 1/s),
    # refusals audited per 2 s window with at most 5 kinds of refusal a row of their own
    window_s, kinds = 2.0, 5
    gateway = start_gateway(
        AGENTPOST_AUTH_FAILURES_PER_S="1",
        AGENTPOST_AUTH_FAILURES_BURST="10",
        AGENTPOST_AUDIT_WINDOW_S=str(window_s),
        AGENTPOST_AUDIT_REFUSAL_KINDS=str(kinds),
    )
    engine = storage.engine_for(backend.settings.database)

    def audited_since(first_id: int) -> tuple[int, int]:
        query = text("SELECT count(*), coalesce(sum(count), 0) FROM agentpost_audit WHERE id > :i")
        with engine.connect() as conn:
            rows, refusals = conn.execute(query, {"i": first_id}).one()
        return int(rows), int(refusals)

    newest = text("SELECT coalesce(max(id), 0) FROM agentpost_audit")
    with engine.connect() as conn:
        before = int(conn.execute(newest).scalar_one())

    # When 120 requests with bad keys, each to a path of its own, arrive at once from one address
    async def guess() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:
            return await asyncio.gather(
                *(http.get(f"/v1/x/{n}", headers={"X-API-Key": f"guess-{n}"}) for n in range(120))
            )

    started = time.monotonic()
    answers = [r.status_code for r in asyncio.run(guess())]
    windows = 1 + int((time.monotonic() - started) // window_s) + 1
    # Then the allowance was answered 401 and the rest 429
    unauthorized, limited = answers.count(401), answers.count(429)
    assert unauthorized + limited == 120, answers
    # (the start-up probe's own 401s used part of the allowance)
    assert 1 <= unauthorized <= 30 and limited >= 90, answers

    # And once the window closed, every refusal is counted in the audit, in a bounded
    # number of rows: per window, the kinds' own rows, one overflow row, one for the 429s
    def all_counted() -> tuple[int, int] | None:
        rows, refusals = audited_since(before)
        return (rows, refusals) if refusals == 120 else None

    rows, _ = wait_for(all_counted, 4 * window_s + 10, "the window's counts in the audit")
    assert rows <= windows * (kinds + 2), (rows, windows)
    # And a caller with a good key is not affected (its own bucket)
    own = httpx.get(f"{gateway.url}/healthz", headers={"X-API-Key": gateway.api_key}, timeout=10)
    assert own.status_code == 200


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_the_audit_command_prints_stored_text_as_text(backend: Backend) -> None:
    # Given audit rows whose path and detail came from a caller: Rich markup, a stray
    # closing tag (which Rich refuses to render) and terminal escape sequences
    engine = storage.engine_for(backend.settings.database)
    storage.create_schema(engine)
    storage.record_audit(
        engine,
        storage.AuditEntry(
            at=time.time(),
            subject="[bold red]evil[/]",
            action="GET /x[/oops]",
            outcome="denied",
            detail="\x1b[2J\x1b]0;owned\x07cleared",
        ),
    )
    # When an operator lists them
    done = agentpost_cli(backend, "audit")
    # Then the command works and shows the text, with no escape sequence reaching the terminal
    assert done.returncode == 0, done.stderr
    assert "[bold red]evil[/]" in done.stdout and "/x[/oops]" in done.stdout, done.stdout
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_with_the_rate_limit_s_redis_down_the_gateway_answers_503_naming_it(
    backend: Backend,
) -> None:
    # Given a gateway whose broker (and so its rate-limit buckets) is a Redis that is down
    backend.env.update(GATEWAY_ENV)
    _, key = create_key(backend, "caller", "echo", "invoke,read")
    down = f"redis://127.0.0.1:{free_port()}/0"
    url = f"http://127.0.0.1:{free_port()}"
    up = answers(f"{url}/healthz", 503)
    argv = ["serve", "--port", url.rsplit(":", 1)[1]]
    with serving(backend, argv, up, env={"AGENTPOST_BROKER_URL": down}):
        # When a caller with a good key, and one without, ask
        health = httpx.get(f"{url}/healthz", headers={"X-API-Key": key}, timeout=10)
        anonymous = httpx.get(f"{url}/v1/dead-letters", timeout=10)
    # Then both are told the service is unavailable and why, not a bare 500
    for answer in (health, anonymous):
        assert answer.status_code == 503, answer.text
        assert "broker" in answer.json()["detail"], answer.text


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_caller_cannot_join_another_caller_s_chain(backend: Backend, gateway: Gateway) -> None:
    _, other = create_key(backend, "other", "echo", "send")

    def send(key: str, correlation_id: str) -> httpx.Response:
        return httpx.post(
            f"{gateway.url}/v1/messages",
            headers={"X-API-Key": key},
            json={"target_agent": "echo", "payload": 1, "correlation_id": correlation_id},
            timeout=10,
        )

    assert send(gateway.api_key, "chain-of-caller").status_code == 202
    assert send(gateway.api_key, "chain-of-caller").status_code == 202  # its own: fine
    refused = send(other, "chain-of-caller")
    assert refused.status_code == 403 and "another sender's chain" in refused.text
    assert send(other, "chain-of-other").status_code == 202


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_revoking_a_subject_refuses_its_keys_and_the_tokens_issued_before(
    backend: Backend, start_gateway: Callable[..., Gateway]
) -> None:
    # Given a caller with an API key and a JWT, both accepted
    gateway = start_gateway()

    def token() -> str:
        now = int(time.time())
        claims = {"sub": "caller", "iat": now, "exp": now + 300, "agents": ["echo"], "ops": []}
        claims |= {"iss": "agentpost-tests", "aud": "agentpost"}
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    def health(headers: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{gateway.url}/healthz", headers=headers, timeout=10)

    old = {"Authorization": f"Bearer {token()}"}
    key = {"X-API-Key": gateway.api_key}
    assert health(old).status_code == 200 and health(key).status_code == 200
    # When the operator revokes the subject
    time.sleep(1.1)  # (iat has whole seconds: the token above is from an earlier one)
    done = agentpost_cli(backend, "keys", "revoke", "--subject", "caller")
    assert done.returncode == 0, done.stderr
    # Then its key and its token issued before are refused, saying why
    for headers in (old, key):
        refused = health(headers)
        assert refused.status_code == 401, refused.text
        assert "revoked" in refused.json()["detail"], refused.text
    # And a token issued afterwards is accepted (the issuer decides who gets new ones)
    time.sleep(1.1)
    assert health({"Authorization": f"Bearer {token()}"}).status_code == 200


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_silent_and_dribbling_connections_are_closed_at_the_read_deadline(
    backend: Backend, start_gateway: Callable[..., Gateway]
) -> None:
    # Given a gateway giving each request 2 s to arrive whole
    gateway = start_gateway(AGENTPOST_GATEWAY_READ_TIMEOUT_S="2")
    host, port = gateway.url.removeprefix("http://").split(":")

    def closed_after(dribble: bytes) -> float:
        """Seconds until the server closes a socket that sends ``dribble`` a byte at a time."""
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.settimeout(0.3)
            for byte in [dribble[i : i + 1] for i in range(len(dribble))] or [b""] * 100:
                try:
                    if byte:
                        sock.sendall(byte)
                    if sock.recv(1024) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - started
        return time.monotonic() - started

    # When one socket sends nothing, one dribbles its headers, one its body
    silent = closed_after(b"")
    headers = closed_after(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + b"k" * 200)
    body = closed_after(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
        b"Content-Type: application/json\r\nX-API-Key: "
        + gateway.api_key.encode()
        + b"\r\n\r\n"
        + b"{" * 200
    )
    # Then each is closed near the deadline (they were held for as long as they liked),
    # and the gateway still answers a normal request
    assert all(1.5 < held < 8 for held in (silent, headers, body)), (silent, headers, body)
    own = httpx.get(f"{gateway.url}/healthz", headers={"X-API-Key": gateway.api_key}, timeout=10)
    assert own.status_code == 200
