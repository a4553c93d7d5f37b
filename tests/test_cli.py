"""Every operator command run as a subprocess, on every backend."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import storage
from tests.conftest import (
    AGENTPOST,
    ROOT,
    Backend,
    Worker,
    agentpost_cli,
    lose_queued_messages,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.slow


def _json(backend: Backend, *args: str) -> Any:
    done = agentpost_cli(backend, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_operator_commands(backend: Backend, start_worker: Callable[..., Worker]) -> None:
    start_worker("--agents", "echo,gate,doomed")
    client = backend.client()
    # send: a message whose handler fails ends in the dead letters
    sent = _json(
        backend,
        "send",
        "gate",
        '{"n": 1}',
        "--sender",
        "ops",
        "--key",
        "g-1",
        "--correlation",
        "chain-9",
    )
    message_id = sent["message_id"]
    assert wait_final(client, message_id).status == "dead"
    listed = _json(
        backend, "dlq", "list", "--agent", "gate", "--reason", "exhausted", "--since", "1h"
    )
    assert [d["message_id"] for d in listed] == [message_id]
    shown = _json(backend, "dlq", "show", message_id[:8])  # the short id the CLI prints
    assert shown["attempt_log"][0]["error"] == "RuntimeError: gate closed"
    text = agentpost_cli(backend, "dlq", "show", message_id).stdout
    assert "gate closed" in text and "Traceback" in text
    # redrive after the handler was fixed: delivered, and the round is recorded
    (backend.spool / "gate-open").touch()
    assert [r["message_id"] for r in _json(backend, "dlq", "redrive", message_id)] == [message_id]
    wait_final(client, message_id)
    status = _json(backend, "status", message_id)
    assert (status["status"], status["redrives"], status["reply"]) == ("delivered", 1, "passed")
    # trace: the whole chain, as a tree and as a sequence diagram
    tree = agentpost_cli(backend, "trace", "chain-9").stdout
    assert "ops → gate" in tree and "delivered" in tree and "attempt 1: dead" in tree
    mermaid = agentpost_cli(backend, "trace", "chain-9", "--mermaid").stdout
    assert mermaid.startswith("sequenceDiagram") and "ops->>gate" in mermaid
    # request: the reply
    assert _json(backend, "request", "echo", '{"q": 2}', "--timeout", "30")["payload"] == {"q": 2}
    # agents: counts from the store, consumers from the workers
    agents = {a["name"]: a for a in _json(backend, "agents")}
    assert {"echo", "gate", "doomed"} <= set(agents)
    assert agents["echo"]["counts"].get("delivered") == 1
    assert agents["gate"]["consumers"] == 1
    # purge asks first (no answer: nothing deleted), --yes deletes
    doomed = _json(backend, "send", "doomed", "null")["message_id"]
    assert wait_final(client, doomed).status == "dead"
    assert agentpost_cli(backend, "dlq", "purge", doomed).returncode != 0
    assert _json(backend, "dlq", "purge", "--agent", "doomed", "--yes") == {"purged": 1}
    missing = agentpost_cli(backend, "status", doomed)
    assert missing.returncode == 1 and f"no message '{doomed}'" in missing.stderr
    # bad input is refused with the reason
    bad = agentpost_cli(backend, "send", "echo", "{not json")
    assert bad.returncode != 0 and "not JSON" in bad.stderr


# Run a command with SIGINT's default action, as a terminal's Ctrl-C finds it. A shell
# starts background jobs with SIGINT ignored, an ignored signal stays ignored across
# exec, and Python then installs no KeyboardInterrupt: a suite run in the background
# (as a CI may) would hand the request a Ctrl-C it never hears.
_SIGINT_AS_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_short_ids_exit_codes_and_an_interrupted_request(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given echo registered, but no worker serving it yet
    start_worker().stop()
    client = backend.client()
    # A request not answered in time exits 1 and says how to follow it from the shell
    late = agentpost_cli(backend, "request", "echo", '{"q": 1}', "--timeout", "1")
    assert late.returncode == 1 and "agentpost result" in late.stderr, late.stderr
    followed = re.search(r"agentpost result (\S+) --timeout", late.stderr)
    assert followed is not None, late.stderr
    # Ctrl-C on a waiting request exits 130 and prints the id it sent
    waiting = subprocess.Popen(
        [*_SIGINT_AS_A_TERMINAL, *AGENTPOST, "request", "echo", '{"q": 2}', "--timeout", "120"],
        # A SIGABRT then prints every thread's stack, should it hang on its way out
        env={**os.environ, **backend.env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def stored(n: int) -> bool:
        stats = {a.name: a for a in client.agent_stats()}
        return stats["echo"].counts.get("queued", 0) >= n

    wait_for(lambda: stored(2), 60, "the second request to be stored")
    waiting.send_signal(signal.SIGINT)
    try:
        _, said = waiting.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        waiting.send_signal(signal.SIGABRT)
        _, stacks = waiting.communicate(timeout=30)
        pytest.fail(f"agentpost request still running 30 s after Ctrl-C:\n{stacks}")
    assert waiting.returncode == 130 and "agentpost status" in said, said
    # (a Ctrl-C that lands inside the send says it may not be stored; here it is)
    interrupted = re.search(r"interrupted: (\S+) was", said)
    assert interrupted is not None, said
    assert client.status(interrupted.group(1)).payload == {"q": 2}
    # Once a worker serves echo, the short id printed gets the first reply
    start_worker("--agents", "echo")
    assert _json(backend, "result", followed.group(1), "--timeout", "30")["payload"] == {"q": 1}
    # A correlation prefix that starts two chains lists both and exits 2, like a usage error
    for chain in ("job-1", "job-2"):
        client.send("echo", {"chain": chain}, sender="ops", correlation_id=chain)
    ambiguous = agentpost_cli(backend, "trace", "job-")
    assert ambiguous.returncode == 2, ambiguous.stderr
    assert "job-1" in ambiguous.stderr and "job-2" in ambiguous.stderr
    # and an id nothing starts with exits 1
    missing = agentpost_cli(backend, "status", "0000zz")
    assert missing.returncode == 1 and "no message '0000zz'" in missing.stderr
    client.close()


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_read_only_commands_on_an_empty_store_say_so_and_change_nothing(
    backend: Backend,
) -> None:
    # Given a database nobody has used (a fresh PostgreSQL database, no SQLite file)
    inspecting = (["agents"], ["status", "0f3a"], ["dlq", "list"], ["trace", "chain-1"])
    for words in (*inspecting, ["keys", "list"], ["audit"]):
        done = agentpost_cli(backend, *words)
        # Then each says there is no store there, exit 2, and creates nothing
        assert done.returncode == 2 and "no agentpost store" in done.stderr, (words, done)
    assert not storage.has_store(backend.settings.database)
    assert not list(backend.settings.home.rglob("*.db"))


COMMANDS = [
    *[[c] for c in ("worker", "beat", "flower", "metrics", "demo", "send", "request")],
    *[[c] for c in ("result", "status", "trace", "agents", "serve", "audit")],
    *[["db", c] for c in ("upgrade", "current")],
    ["agents", "show"],
    *[["dlq", c] for c in ("list", "show", "redrive", "purge")],
    *[["keys", c] for c in ("create", "list", "revoke")],
]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_has_help(backend: Backend, words: list[str]) -> None:
    done = agentpost_cli(backend, *words, "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage: agentpost " + " ".join(words) in done.stdout


@pytest.mark.parametrize("backend", ["embedded", "redis"], indirect=True)
def test_beat_on_its_own_sweeps_for_workers_that_run_without_it(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given a worker without an embedded beat, and messages its broker then lost
    worker = [*AGENTPOST, "worker", "tests.agents", "--agents", "echo", "--loglevel", "INFO"]
    start_worker(argv=worker).stop()
    client = backend.client()
    ids = [client.send("echo", {"n": n}, sender="ops").message_id for n in range(5)]
    lose_queued_messages(backend)
    start_worker(argv=worker)
    # When `agentpost beat` runs as the deployment's one scheduler
    start_worker(argv=[*AGENTPOST, "beat"], wait=False)
    # Then its sweeps bring every lost message back, each delivered once
    for message_id in ids:
        assert wait_final(client, message_id, timeout_s=90).status == "delivered"
    assert sorted(r["id"] for r in backend.runs("echo")) == sorted(ids)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_demo_runs_on_the_embedded_default(backend: Backend) -> None:
    home = backend.spool.parent / "demo"
    done = agentpost_cli(backend, "demo", "--home", str(home))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "demo ok" in done.stdout and "exhausted" in done.stdout
    assert (home / "store.db").exists()
    # The next steps it prints run as printed, from where it was started
    steps = [
        line.strip() for line in done.stdout.splitlines() if line.strip().startswith("AGENTPOST_")
    ]
    assert len(steps) == 5, done.stdout
    runs = [
        subprocess.run(step, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
        for step in steps
    ]
    for step, ran in zip(steps, runs, strict=True):
        assert ran.returncode == 0, (step, ran.stdout[-2000:], ran.stderr[-2000:])
    assert "demo → researcher" in runs[0].stdout and "exhausted" in runs[2].stdout
