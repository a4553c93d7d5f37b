"""Property-based fuzzing of the HTTP gateway from its own OpenAPI document.

Schemathesis reads ``/openapi.json`` from the app in-process (ASGI, no server) and
generates valid and invalid requests for every operation the document lists. No
response may be a server error, no request may raise out of the app, and every
response must match the document: status code, content type, headers, body schema.

The world is the embedded default (filesystem broker, SQLite) with no worker:
``echo`` is registered so sends are accepted, ``doomed`` is granted to the caller
but not registered (404), ``secret`` is registered but not granted (403), and an
invoke of ``echo`` waits ``gateway_max_timeout_s`` for a reply that never comes
(504, documented for invoke). Random strings seldom name a registered agent or a
stored message, so two cases in three are steered onto known names and ids: a
queued message, dead ones to redrive, one the caller may not read, and their
correlation chain. Some requests go without the caller's key (401).

A second test sends the same cases with one value of the body replaced by what
Python's json module reads but JSON has not (NaN, Infinity, lone surrogates).

One tolerance, narrow:
- agent names are checked by a validator the document does not show, so
  schema-valid names are refused with 422: that is why the checks that valid data
  is accepted (``positive_data_acceptance``) and invalid data refused are not run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks

import storage
from messaging import Client, Settings
from messaging.gateway.app import create_gateway
from messaging.gateway.auth import OPERATIONS, create_api_key
from wire.queues import inbox_name

pytestmark = pytest.mark.slow

MIN_REQUESTS = 1000
# Generated requests per operation (the document has 9), valid and invalid data mixed.
PER_OPERATION = 120
CALLER = "caller"
CORRELATION = "fuzz-chain"
INVOKE = "/v1/agents/{agent}/invoke"
# What Python's json module reads but JSON has not: the gateway parses with it.
NOT_JSON = [float("nan"), float("inf"), float("-inf"), "\ud800", "x\udfff"]


def no_server_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """``not_a_server_error``, but for invoke's 504: no reply in time, documented."""
    if response.status_code == 504 and case.operation.path == INVOKE:
        return
    schemathesis.checks.not_a_server_error(ctx, response, case)


@dataclass
class Gateway:
    """The app's schema, the caller's key, and the stored state cases point at."""

    schema: Any
    auth: dict[str, str]
    message_ids: list[str]
    statuses: Counter[tuple[str, int]]

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    # The embedded default only: no broker or database from the environment.
    for name in list(os.environ):
        if name.startswith("AGENTPOST_"):
            monkeypatch.delenv(name)
    # Hypothesis's caches (unicode tables, constants) go here, not into the repo.
    set_hypothesis_home_dir(tmp_path / "hypothesis")
    settings_ = Settings(
        home=tmp_path / "home",
        gateway_secret="fuzz-secret-long-enough",
        gateway_max_timeout_s=0.2,
        rate_limit_per_s=100_000,
        rate_limit_burst=100_000,
    )
    app = create_gateway(settings_)
    engine = storage.engine_for(settings_.database)
    storage.register_agents(
        engine,
        [(name, inbox_name(name, settings_)) for name in ("echo", "secret")],
        kind="handler",
        now=time.time(),
    )
    _, key = create_api_key(
        engine, settings_, CALLER, agents=["echo", "doomed"], operations=OPERATIONS
    )
    with Client(settings_) as client:

        def send(receiver: str, sender: str = CALLER) -> str:
            sent = client.send(receiver, {"n": 1}, sender=sender, correlation_id=CORRELATION)
            return sent.message_id

        queued = send("echo")
        dead = [send("echo") for _ in range(3)]
        unreadable = send("secret", sender="intruder")
    for message_id in dead:
        storage.mark_dead(engine, message_id, reason="failed", error="boom", now=time.time())
    auth = {"X-API-Key": key}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    load_all_checks()
    world = Gateway(schema, auth, [queued, *dead, unreadable], Counter())
    try:
        yield world
    finally:
        storage.dispose_engines()
        set_hypothesis_home_dir(None)
        print(f"\n{world.sent} requests")
        for (label, status), count in sorted(world.statuses.items()):
            print(f"  {label:50} {status} x{count}")


def _steer(case: schemathesis.Case, to: dict[str, Any]) -> None:
    """Point the case's agent names, message id and correlation id at stored ones."""
    params = case.path_parameters or {}
    for name in ("agent", "message_id", "correlation_id"):
        if name in params:
            params[name] = to[name]
    if case.query and "agent" in case.query:
        case.query["agent"] = to["agent"]
    if isinstance(case.body, dict):
        if "target_agent" in case.body or case.operation.path == "/v1/messages":
            case.body["target_agent"] = to["agent"]
        if "source_agent" in case.body:
            case.body["source_agent"] = to["source"]


def _fuzz(
    gateway: Gateway,
    *,
    operations: Callable[[Any], bool] = lambda _: True,
    mutate: st.SearchStrategy[Callable[[schemathesis.Case], None]] | None = None,
) -> None:
    """Run every selected operation's cases; raise every operation's failure at the end."""
    checks = [
        no_server_error,
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_headers_conformance,
        schemathesis.checks.response_schema_conformance,
    ]
    steering = st.fixed_dictionaries(
        {
            # Two cases in three are steered, half of those at echo (it accepts sends).
            "steer": st.integers(0, 2).map(bool),
            "agent": st.just("echo") | st.sampled_from(["doomed", "secret", CALLER]),
            "source": st.sampled_from([CALLER, "mallory"]),
            "message_id": st.sampled_from(gateway.message_ids),
            "correlation_id": st.just(CORRELATION),
        }
    )
    # Some requests without the caller's key (they may still carry a generated one).
    authenticated = st.integers(0, 9).map(lambda n: n < 9)
    mutations = mutate if mutate is not None else st.just(lambda _: None)
    failures: list[tuple[str, Exception]] = []
    for result in gateway.schema.get_all_operations():
        operation = result.ok()
        if not operations(operation):
            continue
        cases = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | (
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        )

        # The small draws first: drawn after a case, they come out mostly zero.
        @given(to=steering, authed=authenticated, mutation=mutations, case=cases)
        @settings(
            max_examples=PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            # No shrinking: the first failure is reported as found (with a curl command),
            # so a failing run stays as short as a passing one.
            phases=[Phase.explicit, Phase.generate],
        )
        def fuzz(
            to: dict[str, Any],
            authed: bool,
            mutation: Callable[[schemathesis.Case], None],
            case: schemathesis.Case,
        ) -> None:
            if to["steer"]:
                _steer(case, to)
            mutation(case)
            response = case.call_and_validate(
                headers=gateway.auth if authed else None, checks=checks
            )
            gateway.statuses[(case.operation.label, response.status_code)] += 1

        try:
            fuzz()
        except Exception as exc:
            failures.append((operation.label, exc))
    if failures:
        # Every operation's failure (with its curl command), and the first's traceback.
        report = "\n\n".join(
            f"{label}: {type(exc).__name__}: {exc}\n"
            + "\n".join(n for n in getattr(exc, "__notes__", []) if "Reproduce" in n)
            for label, exc in failures
        )
        raise AssertionError(f"{len(failures)} operation(s) failed:\n\n{report}") from (
            failures[0][1]
        )


def test_gateway_fuzz(gateway: Gateway) -> None:
    _fuzz(gateway)
    assert gateway.sent >= MIN_REQUESTS
    # The steering reached the routes' own work, not only their refusals.
    assert gateway.statuses[("POST /v1/messages", 202)]
    assert gateway.statuses[(f"POST {INVOKE}", 504)]
    assert gateway.statuses[("POST /v1/dead-letters/{message_id}/redrive", 200)]
    assert gateway.statuses[("GET /v1/correlations/{correlation_id}", 200)]


def _poison(value: Any, index: int) -> Callable[[schemathesis.Case], None]:
    """Put ``value`` at one place of the case's JSON body, sent as Python writes it."""

    def mutate(case: schemathesis.Case) -> None:
        body = copy.deepcopy(case.body)
        slots: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, item in list(items):
                slots.append((node, key))
                if isinstance(item, dict | list):
                    walk(item)

        if isinstance(body, dict | list):
            walk(body)
        if slots:
            node, key = slots[index % len(slots)]
            node[key] = value
        else:
            body = value
        # json.dumps writes NaN, Infinity and lone surrogates (as \ud800 escapes).
        case.body = json.dumps(body).encode()

    return mutate


def test_gateway_fuzz_non_json_values(gateway: Gateway) -> None:
    """Bodies with what Python's json reads but JSON has not: NaN, Infinity, lone surrogates.

    Schemathesis never generates these (they are not JSON), but the gateway's parser
    accepts them, so each must be refused (422) or carried, never a 500.
    """
    poison = st.builds(_poison, st.sampled_from(NOT_JSON), st.integers(0, 1000))
    _fuzz(gateway, operations=lambda op: op.body, mutate=poison)
    assert gateway.sent >= 100
