"""The HTTP gateway, served by a real ``agentpost serve`` in front of a real worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import func, select

import storage
from messaging import (
    A2AClient,
    AgentInvocationRequest,
    AsyncA2AClient,
    GatewayError,
    RequestTimeout,
)
from tests.conftest import (
    JWT_SECRET,
    Backend,
    Gateway,
    Worker,
    agentpost_cli,
    answers,
    create_key,
    free_port,
    serving,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slow
SERVERS = pytest.mark.parametrize("backend", ["redis"], indirect=True)


def _token(sub: str = "caller", **claims: Any) -> str:
    body = {
        "sub": sub,
        "agents": ["echo", "doomed", "slow"],
        "ops": ["invoke", "send", "read", "redrive"],
        "iss": "agentpost-tests",
        "aud": "agentpost",
        "exp": int(time.time()) + 300,
        **claims,
    }
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def _messages(backend: Backend) -> int:
    engine = storage.engine_for(backend.settings.database)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(storage.Message)).scalar_one())


A2A_SEND = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "message/send",
    "params": {
        "message": {
            "role": "user",
            "messageId": "m-1",
            "parts": [{"kind": "data", "data": {"n": 3}}],
        }
    },
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None
    ok: int
    # What an authenticated caller granted nothing on these agents gets.
    outsider: int


@SERVERS
def test_auth_matrix(backend: Backend, gateway: Gateway) -> None:
    client = backend.client()
    # Given a delivered message, a chain and a dead letter of "caller"'s
    sent = client.send("echo", {"n": 0}, sender="caller", correlation_id="chain-1")
    dead = client.send("doomed", {"n": 0}, sender="caller")
    wait_final(client, sent.message_id)
    wait_final(client, dead.message_id)
    routes = [
        Route("POST", "/v1/agents/echo/invoke", {"payload": {"n": 1}, "timeout_s": 20}, 200, 403),
        Route("POST", "/v1/messages", {"target_agent": "echo", "payload": {"n": 2}}, 202, 403),
        Route("GET", f"/v1/messages/{sent.message_id}", None, 200, 403),
        Route("GET", "/v1/correlations/chain-1", None, 200, 404),
        Route("GET", "/v1/dead-letters?agent=doomed", None, 200, 403),
        Route("POST", f"/v1/dead-letters/{dead.message_id}/redrive", None, 200, 403),
        Route("GET", "/healthz", None, 200, 200),
        Route("GET", "/openapi.json", None, 200, 200),
        # The agent as a Google A2A agent: its card (names only), and message/send
        Route("GET", "/a2a/echo/.well-known/agent-card.json", None, 200, 200),
        Route("POST", "/a2a/echo", A2A_SEND, 200, 403),
    ]
    revoked_id, revoked = create_key(backend, "caller", "echo,doomed", "invoke,send,read,redrive")
    assert agentpost_cli(backend, "keys", "revoke", revoked_id).returncode == 0
    _, outsider = create_key(backend, "outsider", "other", "invoke,send,read,redrive")
    unsigned = jwt.encode({"sub": "caller", "exp": int(time.time()) + 60}, None, algorithm="none")
    refusals: list[tuple[str, dict[str, str], str]] = [
        ("no credentials", {}, "401"),
        ("wrong key", {"X-API-Key": "ap_0123456789ab_not-a-real-key"}, "401"),
        ("revoked key", {"X-API-Key": revoked}, "401"),
        ("expired JWT", {"Authorization": f"Bearer {_token(exp=int(time.time()) - 5)}"}, "401"),
        ("wrong audience", {"Authorization": f"Bearer {_token(aud='someone-else')}"}, "401"),
        ("unsigned JWT", {"Authorization": f"Bearer {unsigned}"}, "401"),
        ("not authorized", {"X-API-Key": outsider}, "outsider"),
    ]
    before = _messages(backend)
    runs_before = len(backend.runs("echo"))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        # When every route is called with every kind of bad credentials
        for route in routes:
            for case, headers, expected in refusals:
                response = http.request(route.method, route.path, json=route.body, headers=headers)
                want = route.outsider if expected == "outsider" else int(expected)
                assert response.status_code == want, (case, route.path, response.text)
                if want == 401:
                    assert "WWW-Authenticate" in response.headers
        # Then nothing was stored, enqueued or run for any refusal
        assert _messages(backend) == before
        time.sleep(0.5)
        assert len(backend.runs("echo")) == runs_before

        # And authorized callers (API key, then JWT) get through on every route
        for headers in ({"X-API-Key": gateway.api_key}, {"Authorization": f"Bearer {_token()}"}):
            for route in routes:
                response = http.request(route.method, route.path, json=route.body, headers=headers)
                assert response.status_code == route.ok, (route.path, response.text)
                if route.body is A2A_SEND:
                    assert response.json()["result"]["parts"][0]["data"] == {"n": 3}
                if route.path.endswith("/redrive"):
                    wait_final(client, dead.message_id)
    # The refusals are in the audit log, with who tried and why
    audit = _json(backend, "audit", "--outcome", "denied", "--limit", "500")
    reasons = {entry["detail"] for entry in audit}
    assert {"revoked API key", "expired token", "token for another audience"} <= reasons
    assert any(e["subject"] == "outsider" and e["detail"] == "forbidden" for e in audit)


def _json(backend: Backend, *args: str) -> Any:
    done = agentpost_cli(backend, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@SERVERS
def test_spoofing_oversize_and_bad_input_are_refused_before_anything_is_stored(
    backend: Backend, start_gateway: Callable[..., Gateway], start_worker: Callable[..., Worker]
) -> None:
    start_worker("--agents", "echo")
    gateway = start_gateway(AGENTPOST_GATEWAY_MAX_BODY_BYTES="4096")
    headers = {"X-API-Key": gateway.api_key}
    before = _messages(backend)
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
        # A body claiming another sender
        spoofed = http.post("/v1/messages", json={"target_agent": "echo", "source_agent": "boss"})
        assert spoofed.status_code == 403 and "boss" in spoofed.json()["detail"]
        invoke = http.post("/v1/agents/echo/invoke", json={"source_agent": "boss"})
        assert invoke.status_code == 403
        # A body over the limit, declared or streamed in chunks
        big = {"target_agent": "echo", "payload": "x" * 5000}
        assert http.post("/v1/messages", json=big).status_code == 413
        chunks = (part for part in [b'{"target_agent": "echo", "payload": "', b"x" * 5000, b'"}'])
        streamed = http.post(
            "/v1/messages", content=chunks, headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        # Not JSON, and wrong types: 422 naming the fields
        bad_json = http.post(
            "/v1/messages", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 422
        wrong = http.post(
            "/v1/agents/echo/invoke", json={"timeout_s": "soon", "metadata": [1], "extra": 1}
        )
        assert wrong.status_code == 422
        fields = {tuple(err["loc"]) for err in wrong.json()["detail"]}
        assert {("body", "timeout_s"), ("body", "metadata"), ("body", "extra")} <= fields
        bad_name = http.post("/v1/messages", json={"target_agent": "Not A Name"})
        assert bad_name.status_code == 422 and "target_agent" in bad_name.text
        mismatch = http.post("/v1/agents/echo/invoke", json={"target_agent": "doomed"})
        assert mismatch.status_code == 422 and "target_agent" in mismatch.text
        unknown = http.post("/v1/messages", json={"target_agent": "nobody"})
        assert unknown.status_code == 403  # not granted: default deny before any lookup
        # Grants are per operation too: a send-only key may not invoke or read
        _, sender_only = create_key(backend, "poster", "echo", "send")
        only = {"X-API-Key": sender_only}
        assert http.post("/v1/agents/echo/invoke", json={}, headers=only).status_code == 403
        posted = http.post("/v1/messages", json={"target_agent": "echo"}, headers=only)
        assert posted.status_code == 202
        read = http.get(f"/v1/messages/{posted.json()['message_id']}", headers=only)
        assert read.status_code == 403
        before += 1
    assert _messages(backend) == before
    assert b"gateway-test-secret" not in gateway.log.read_bytes()
    assert gateway.api_key.encode() not in gateway.log.read_bytes()


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_rate_limit_returns_429_then_recovers(
    backend: Backend, start_gateway: Callable[..., Gateway]
) -> None:
    # Given 2 calls a second with a burst of 3 (in Redis, or in the store when embedded)
    gateway = start_gateway(AGENTPOST_RATE_LIMIT_PER_S="2", AGENTPOST_RATE_LIMIT_BURST="3")
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        key = {"X-API-Key": gateway.api_key}
        codes = [http.get("/healthz", headers=key).status_code for _ in range(6)]
        # Then the burst passes and the rest are limited, with Retry-After
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
        limited = http.get("/healthz", headers=key)
        assert limited.status_code == 429
        retry_after = int(limited.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        # Another caller has a bucket of its own
        assert (
            http.get("/healthz", headers={"Authorization": f"Bearer {_token('other')}"}).status_code
            == 200
        )
        # And the caller recovers once it waited
        time.sleep(retry_after)
        assert http.get("/healthz", headers=key).status_code == 200
    audit = _json(backend, "audit", "--outcome", "limited")
    assert audit and {e["subject"] for e in audit} == {"caller"}


@SERVERS
def test_invoke_end_to_end_is_idempotent_and_times_out_with_the_message_id(
    backend: Backend, gateway: Gateway
) -> None:
    request = AgentInvocationRequest(
        target_agent="echo",
        payload={"question": 42},
        idempotency_key="inv-1",
        run_id="run-7",
        conversation_id="conv-1",
        timeout_s=20,
    )
    with A2AClient(gateway.url, api_key=gateway.api_key) as a2a:
        first = a2a.invoke(request)
        again = a2a.invoke(request)
    # The reply comes back, and the retried invoke returns the first one's result
    assert first.success and first.output == {"question": 42} and first.run_id == "run-7"
    assert again.model_dump() == first.model_dump()
    assert len(backend.runs("echo")) == 1
    state = backend.client().status(first.message_id)
    assert state.sender == "caller" and state.correlation_id == "conv-1"

    # A JWT caller through the async client; a dead request is success=False
    async def call() -> Any:
        async with AsyncA2AClient(gateway.url, token=_token()) as client:
            echoed = await client.invoke(request.model_copy(update={"idempotency_key": "inv-2"}))
            doomed = await client.invoke(
                AgentInvocationRequest(target_agent="doomed", payload={}, timeout_s=20)
            )
            return echoed, doomed

    echoed, doomed = asyncio.run(call())
    assert echoed.success and echoed.message_id != first.message_id
    assert not doomed.success and "boom" in (doomed.error or "")

    # No reply in time: 504 with the message id; the work still completes
    slow = AgentInvocationRequest(target_agent="slow", payload={"sleep_s": 2}, timeout_s=0.3)
    with A2AClient(gateway.url, api_key=gateway.api_key) as a2a:
        with pytest.raises(RequestTimeout) as timed_out:
            a2a.invoke(slow)
        message_id = timed_out.value.message_id
        # and says how to follow it over HTTP, not with a Python call
        assert f"GET /v1/messages/{message_id}" in str(timed_out.value)
        done = wait_for(
            lambda: (s := a2a.status(message_id))["status"] == "delivered" and s, 30, "slow"
        )
        assert done["reply"] == {"attempt": 1}
        assert all(a["traceback"] is None for a in done["attempt_log"])
        with pytest.raises(GatewayError) as refused:
            a2a.invoke(AgentInvocationRequest(target_agent="other", payload={}))
        assert refused.value.status_code == 403


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_keys_are_stored_hashed_and_allow_all_needs_the_dev_flag(backend: Backend) -> None:
    backend.env["AGENTPOST_GATEWAY_SECRET"] = "gateway-test-secret"
    key_id, key = create_key(backend, "caller", "echo", "invoke")
    rows = storage.list_keys(storage.engine_for(backend.settings.database))
    assert [r.id for r in rows] == [key_id]
    assert key not in rows[0].digest and len(rows[0].digest) == 64
    listed = agentpost_cli(backend, "keys", "list", "--json")
    assert key not in listed.stdout and rows[0].digest not in listed.stdout
    # allow-all without AGENTPOST_DEV_ALLOW_ALL: the service refuses to start
    backend.env["AGENTPOST_GATEWAY_AUTH"] = "allow_all"
    refused = agentpost_cli(backend, "serve", "--port", "1")
    assert refused.returncode != 0 and "AGENTPOST_DEV_ALLOW_ALL" in refused.stderr
    # and with it, it starts, lets a caller in without credentials, and says so loudly
    url = f"http://127.0.0.1:{(port := free_port())}"

    argv = ["serve", "--port", str(port)]
    up = answers(f"{url}/healthz", 200)
    with serving(backend, argv, up, env={"AGENTPOST_DEV_ALLOW_ALL": "1"}) as log:
        assert "authenticates NOBODY" in log.read_text()
