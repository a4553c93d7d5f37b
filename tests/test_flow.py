"""Flow control declared by an agent, enforced by every worker of the deployment at once:
``max_concurrency``, ``rate_limit`` and the circuit breaker, on real worker processes."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import pytest

from messaging import AgentInfo
from tests.conftest import Backend, Worker, agentpost_cli, wait_final, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True),
]


def _agent(backend: Backend, name: str) -> AgentInfo:
    return {a.name: a for a in backend.client().agents()}[name]


def test_max_concurrency_holds_across_worker_processes_while_other_agents_flow(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an agent declaring max_concurrency=2, served with echo by two worker
    # processes of four pool slots each
    for _ in range(2):
        start_worker("--agents", "limited,echo", "--concurrency", "4")
    client = backend.client()
    # When twelve slow messages are sent to it, and ten to echo once two of them run
    limited = [
        client.send("limited", {"sleep_s": 0.6}, sender="tester").message_id for _ in range(12)
    ]
    wait_for(lambda: len(backend.runs("limited", "start")) >= 2, 30, "the first two to start")
    echoed = [client.send("echo", {"n": n}, sender="tester").message_id for n in range(10)]
    # Then echo's are all delivered while the limited agent still has a backlog: its held
    # deliveries take no pool slot from other agents
    assert {wait_final(client, m).status for m in echoed} == {"delivered"}
    assert len(backend.runs("limited", "end")) < 12
    # And every one of the limited agent's is delivered, the held ones without spending
    # an attempt
    states = [wait_final(client, m, timeout_s=90) for m in limited]
    assert {(s.status, s.attempts) for s in states} == {("delivered", 1)}
    # And never more than two of its handlers ran at once (their own stamps say so),
    # though two did, on more than one worker process
    starts, ends = backend.runs("limited", "start"), backend.runs("limited", "end")
    events = sorted([(r["at"], 1) for r in starts] + [(r["at"], -1) for r in ends])
    running = list(itertools.accumulate(step for _, step in events))
    assert max(running) == 2, events
    assert len({r["pid"] for r in starts}) >= 2


def test_a_rate_limit_holds_across_worker_processes(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an agent declaring rate_limit="4/s", served by two worker processes
    workers = [start_worker("--agents", "metered", "--concurrency", "2") for _ in range(2)]
    client = backend.client()
    # When 17 messages are sent at once
    sent = [client.send("metered", {"n": n}, sender="tester").message_id for n in range(17)]
    states = [wait_final(client, m, timeout_s=60) for m in sent]
    assert {(s.status, s.attempts) for s in states} == {("delivered", 1)}
    # Then they ran at 4 a second, within 10 %, the two processes together: the slope
    # of their start times (one late start does not move it much), and no more than
    # the limit allows in their first second
    runs = sorted(r["at"] for r in backend.runs("metered"))
    slope, _ = statistics.linear_regression(range(len(runs)), runs)
    assert 3.6 <= 1 / slope <= 4.4, (1 / slope, runs)
    assert sum(1 for t in runs if t < runs[0] + 1) <= 5
    # and both processes held deliveries back: they share the one limit (which of them
    # then runs a held delivery is the broker's choice)
    assert all("held (rate limit 4/s)" in w.log.read_text() for w in workers)


def test_a_circuit_opens_after_k_failures_holds_without_attempts_then_probes_and_closes(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given an agent whose circuit opens after 3 failures in a row (10 s cool-down),
    # whose upstream is down
    (backend.spool / "breaker-broken").touch()
    backend.env["AGENTPOST_ALERT_HOOK"] = "tests.agents:alert"
    start_worker("--agents", "breaker", "--concurrency", "1")
    client = backend.client()
    # When five messages are sent
    sent = [client.send("breaker", {"n": n}, sender="tester").message_id for n in range(5)]
    # Then three attempts fail and the circuit opens, and while it is open the
    # messages are held: no attempt is spent
    wait_for(lambda: _agent(backend, "breaker").circuit == "open", 20, "the circuit to open")
    time.sleep(1.0)
    assert len(backend.runs("breaker")) == 3
    assert sum(client.status(m).attempts for m in sent) == 3
    # When the upstream is back (early in the cool-down: the checks below take their
    # time on a loaded machine, and the probe must find it back)
    (backend.spool / "breaker-broken").unlink()
    # Then the alert hook heard the opening, and the circuit shows open until the probe
    alerts = wait_for(lambda: backend.runs("alerts"), 10, "the alert hook")
    assert alerts == [{"id": None, "reason": "circuit-open"}]
    info = _agent(backend, "breaker")
    assert info.circuit_error == "ConnectionError: upstream down"
    assert "circuit OPEN (opens after 3 failures)" in info.contract()
    listed = agentpost_cli(backend, "agents")
    assert listed.returncode == 0 and "circuit OPEN" in listed.stdout, listed.stdout
    # And one probe runs after the cool-down, closes the circuit, and the rest follow
    states = [wait_final(client, m, timeout_s=60) for m in sent]
    assert {s.status for s in states} == {"delivered"}
    events = [r["event"] for r in backend.runs("breaker")]
    assert events == ["failed"] * 3 + ["ok"] * 5, events
    assert sum(s.attempts for s in states) == 8
    after = _agent(backend, "breaker")
    assert (after.circuit, after.circuit_failures) == ("closed", 0)
