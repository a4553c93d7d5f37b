"""Flower, really started against Redis with a worker: what an operator sees."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Backend, Worker, answers, free_port, serving, wait_final, wait_for

pytestmark = pytest.mark.slow
AUTH = ("ops", "flower-test-secret")


@pytest.fixture
def flower(backend: Backend) -> Iterator[str]:
    url = f"http://127.0.0.1:{(port := free_port())}"

    env = {"AGENTPOST_FLOWER_BASIC_AUTH": ":".join(AUTH)}
    up = answers(f"{url}/api/workers", 200, auth=AUTH)
    with serving(backend, ["flower", "--port", str(port)], up, env=env) as log:
        yield url
    assert b"flower-test-secret" not in log.read_bytes()


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_flower_shows_dead_letters_as_failures_and_retries(
    backend: Backend, flower: str, start_worker: Callable[..., Worker]
) -> None:
    # Given Flower watching (it only knows events it receives) and a worker started with
    # task events off (the default): Flower turns them on by itself
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    start_worker("--agents", "doomed,flaky,echo")
    client = backend.client()

    def listed(message_id: str) -> bool:
        found = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).json()
        return bool(found.get(message_id, {}).get("state") == "SUCCESS")

    def probe() -> bool:
        sent = client.send("echo", "probe", sender="tester").message_id
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not listed(sent):
            time.sleep(0.2)
        return listed(sent)

    wait_for(probe, 30, "Flower to turn the worker's task events on")
    dead = client.send("doomed", {"order": 7}, sender="tester").message_id
    retried = client.send("flaky", {"succeed_on": 3}, sender="tester").message_id
    assert wait_final(client, dead).status == "dead"
    assert wait_final(client, retried).status == "delivered"

    def tasks() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).json()
        done = (
            found.get(dead, {}).get("state") == "FAILURE"
            and found.get(retried, {}).get("state") == "SUCCESS"
        )
        return found if done else {}

    found = wait_for(tasks, 60, "Flower to list both deliveries")
    # The dead-lettered delivery is a FAILURE with its last error and attempt count
    assert "boom on attempt 3" in found[dead]["exception"]
    assert "after 3 attempt(s)" in found[dead]["exception"]
    # Its arguments show who sent what, not the payload in full
    assert "tester → doomed" in found[dead]["args"]
    # The retried one shows its retries
    assert found[retried]["retries"] == 2
    workers = httpx.get(f"{flower}/api/workers?refresh=1", auth=AUTH, timeout=20).json()
    assert any(name.startswith("agentpost.") for name in workers)
    # Flower's own Prometheus metrics, behind the same basic auth
    assert httpx.get(f"{flower}/metrics", timeout=5).status_code == 401
    scraped = httpx.get(f"{flower}/metrics", auth=AUTH, timeout=5).text
    assert 'flower_events_total{task="agentpost.deliver",type="task-failed"' in scraped
