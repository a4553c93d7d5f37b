"""The Prometheus exporter, scraped while messages flow through a real worker."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Backend, Worker, answers, free_port, serving, wait_final, wait_for

pytestmark = pytest.mark.slow
TOKEN = "metrics-test-token"


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_counters_move_as_messages_flow(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker, and the exporter started the README way with a token
    start_worker("--agents", "echo,flaky,doomed,breaker")
    url = f"http://127.0.0.1:{(port := free_port())}/metrics"

    argv = ["metrics", "--port", str(port), "--min-interval", "0"]
    up = answers(url, 401)
    with serving(backend, argv, up, env={"AGENTPOST_METRICS_TOKEN": TOKEN}) as log:
        # Without the token, or with a wrong one, nothing is served
        assert (
            httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
        )
        before = _scrape(url)
        assert _value(before, "agentpost_queue_depth", agent="echo") == 0
        assert ("agentpost_circuit_open", (("agent", "breaker"),)) in before
        assert _value(before, "agentpost_circuit_open", agent="breaker") == 0

        # When messages are delivered, retried and dead-lettered
        client = backend.client()
        ids = [client.send("echo", {"n": n}, sender="tester").message_id for n in range(3)]
        ids.append(client.send("flaky", {"succeed_on": 3}, sender="tester").message_id)
        ids.append(client.send("doomed", {"n": 1}, sender="tester").message_id)
        for message_id in ids:
            wait_final(client, message_id)
        after = _scrape(url)

        # Then each counter moved by what happened
        def moved(name: str, agent: str) -> float:
            return _value(after, name, agent=agent) - _value(before, name, agent=agent)

        assert moved("agentpost_messages_sent_total", "echo") == 3
        assert moved("agentpost_messages_delivered_total", "echo") == 3
        assert moved("agentpost_messages_retried_total", "flaky") == 2
        assert moved("agentpost_messages_delivered_total", "flaky") == 1
        assert moved("agentpost_messages_retried_total", "doomed") == 2
        assert moved("agentpost_messages_dead_total", "doomed") == 1
        assert _value(after, "agentpost_messages", agent="doomed", status="dead") == 1
        assert moved("agentpost_delivery_latency_seconds_count", "echo") == 3
        inf = ("agentpost_delivery_latency_seconds_bucket", (("agent", "echo"), ("le", "+Inf")))
        assert after[inf] == 3
        assert _value(after, "agentpost_delivery_latency_seconds_sum", agent="echo") > 0

        # And an agent failing three times in a row shows its circuit open
        (backend.spool / "breaker-broken").touch()
        client.send("breaker", {}, sender="tester")
        wait_for(
            lambda: _value(_scrape(url), "agentpost_circuit_open", agent="breaker") == 1,
            20,
            "the circuit gauge",
        )

        # And a backlog shows as queue depth once no worker takes it
        for worker in list(backend.workers):
            worker.stop()
        for n in range(4):
            client.send("echo", {"n": n}, sender="tester")
        backlog = _scrape(url)
        if backend.name == "redis":
            assert _value(backlog, "agentpost_queue_depth", agent="echo") == 4
        assert _value(backlog, "agentpost_messages", agent="echo", status="queued") == 4
    assert TOKEN not in log.read_text()
