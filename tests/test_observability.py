"""Structured delivery logs and OpenTelemetry propagation, through a real worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import Backend, Worker, wait_final, wait_for

pytestmark = pytest.mark.slow


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_json_logs_carry_the_delivery_fields(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker logging JSON
    backend.env["AGENTPOST_LOG_FORMAT"] = "json"
    worker = start_worker("--agents", "echo,flaky,doomed")
    client = backend.client()
    echoed = client.send("echo", {"n": 1}, sender="tester", correlation_id="chain-1")
    retried = client.send("flaky", {"succeed_on": 2}, sender="tester", correlation_id="chain-1")
    dead = client.send("doomed", {"n": 2}, sender="tester")
    for sent in (echoed, retried, dead):
        wait_final(client, sent.message_id)

    # When the log is read back (the last line of a delivery may still be in flight;
    # a duplicate task's "skipped" line has no attempt, at-least-once allows one)
    def lines_of(message_id: str, count: int) -> list[dict[str, Any]]:
        lines = [
            r
            for r in _json_lines(worker.log.read_text())
            if r.get("message_id") == message_id
            and r.get("logger") == "agentpost.deliver"
            and r.get("attempt") is not None
        ]
        return lines if len(lines) >= count else []

    # Then every delivery line is JSON with the message's fields and its attempt
    [line] = wait_for(lambda: lines_of(echoed.message_id, 1), 10, "the echo delivery line")
    assert line["correlation_id"] == "chain-1"
    assert (line["sender"], line["receiver"], line["attempt"]) == ("tester", "echo", 1)
    assert line["level"] == "INFO" and line["message"].startswith("delivered")
    flaky = wait_for(lambda: lines_of(retried.message_id, 2), 10, "the flaky lines")
    assert [(r["level"], r["attempt"]) for r in flaky] == [("WARNING", 1), ("INFO", 2)]
    doomed = wait_for(lambda: lines_of(dead.message_id, 3), 10, "the doomed lines")
    assert [r["attempt"] for r in doomed] == [1, 2, 3]
    assert doomed[-1]["level"] == "ERROR" and "dead-lettered" in doomed[-1]["message"]
    assert {r["receiver"] for r in doomed} == {"doomed"}
    # and the handler's own logging carries them too
    [own] = [r for r in _json_lines(worker.log.read_text()) if r.get("message") == "echo handled"]
    assert (own["message_id"], own["attempt"]) == (echoed.message_id, 1)
    # and, stopped, the worker wrote nothing but JSON lines (no banner, no plain warning,
    # no shutdown notice), so its output can be piped to jq
    worker.stop()
    text = worker.log.read_text()
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text[:4000]
    assert any("shutdown" in r["message"] for r in _json_lines(text)), text[-2000:]


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    # The global provider can be set once per process; the spans we need are the worker's.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("tests")


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_trace_context_flows_from_send_through_the_worker(
    backend: Backend, start_worker: Callable[..., Worker], tracer: trace.Tracer
) -> None:
    # Given a worker that exports its spans, and a caller inside a span of its own
    spans_file = backend.spool / "spans.jsonl"
    backend.env["AGENTPOST_TEST_TRACE_FILE"] = str(spans_file)
    start_worker("--agents", "parent,echo")
    client = backend.client()
    with tracer.start_as_current_span("caller") as caller:
        sent = client.send("parent", {"n": 1}, sender="tester")
    assert wait_final(client, sent.message_id).status == "delivered"

    # When the worker's spans are read back (parent ran twice; each run sent two echoes)
    def spans() -> list[dict[str, Any]]:
        found = _json_lines(spans_file.read_text()) if spans_file.exists() else []
        return found if len([s for s in found if s["name"] == "deliver echo"]) >= 2 else []

    found = wait_for(spans, 30, "the worker's spans")
    trace_id = f"{caller.get_span_context().trace_id:032x}"
    caller_id = f"{caller.get_span_context().span_id:016x}"

    # Then every delivery span is in the caller's trace: parent's under the caller,
    # and the echoes under the parent run that sent them
    parents = [s for s in found if s["name"] == "deliver parent"]
    assert len(parents) == 2 and {s["parent_id"] for s in parents} == {caller_id}
    assert [s["attributes"]["agentpost.attempt"] for s in parents] == [1, 2]
    echoes = [s for s in found if s["name"] == "deliver echo"]
    assert {s["trace_id"] for s in found} == {trace_id}
    assert {s["parent_id"] for s in echoes} <= {s["span_id"] for s in parents}
    assert echoes[0]["attributes"]["messaging.destination.name"] == "echo"
