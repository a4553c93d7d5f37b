"""``agentpost demo``: the whole path on the embedded default, in one command.

It starts a worker process with the example agents, sends a correlated chain
(researcher → writer → reviewer, plus a flaky agent that succeeds on its third
attempt) and a poison message that ends dead-lettered, prints what the store
recorded, stops the worker and exits 0 when everything ended as expected.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from messaging.client import Client
from messaging.render import chain_tree, dead_letter_panel
from wire.settings import Settings

__all__ = ["run_demo"]

EXAMPLE_AGENTS = {"researcher", "writer", "reviewer", "flaky"}
FINAL = {"delivered", "dead"}


def run_demo(home: Path, *, timeout_s: float = 120.0) -> int:
    """Run the demo under ``home`` (wiped first); return the exit code."""
    console = Console()
    shutil.rmtree(home, ignore_errors=True)
    # The demo is the embedded default whatever the shell exports: this process and
    # its worker read the same settings, or a stray AGENTPOST_NAMESPACE (say) would
    # have them on different queues. The demo owns its process, so it sets them here.
    for name in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[name]
    os.environ.update(
        {
            "AGENTPOST_HOME": str(home.resolve()),
            "AGENTPOST_SWEEP_INTERVAL_S": "2",
            "AGENTPOST_LEASE_S": "30",
        }
    )
    settings = Settings()
    console.rule("agentpost demo — embedded default (filesystem broker + SQLite)")
    console.print(f"store and broker under {settings.home}")
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = settings.home / "worker.log"
    console.print(f"worker log: {log_path}")
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "messaging.cli",
                "worker",
                "messaging.examples",
                "--beat",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        client = Client(settings)

        def names() -> set[str]:
            return {a.name for a in client.agents()}

        _wait(lambda: names() >= EXAMPLE_AGENTS, timeout_s, "worker start")
        console.print(f"worker pid {worker.pid} serves: {', '.join(sorted(names()))}")

        chain = client.send("researcher", {"topic": "celery retries"}, sender="demo")
        poison = client.send(
            "reviewer",
            {"poison": "an unreadable draft"},
            sender="demo",
            correlation_id="demo-poison",
        )
        console.print(f"sent chain {chain.message_id[:8]} and poison {poison.message_id[:8]}")

        def settled() -> bool:
            states = client.trace(chain.message_id)
            return (
                len(states) == 4
                and all(s.status in FINAL for s in states)
                and client.status(poison.message_id).status in FINAL
            )

        _wait(settled, timeout_s, "the chain and the poison message to settle")
        states = client.trace(chain.message_id)
        console.print(chain_tree(states))
        dead = client.status(poison.message_id)
        console.print(dead_letter_panel(dead))

        flaky = next(s for s in states if s.receiver == "flaky")
        ok = (
            all(s.status == "delivered" for s in states)
            and flaky.attempts == 3
            and dead.status == "dead"
            and dead.dead_reason == "exhausted"
        )
        console.print("[green]demo ok[/]" if ok else "[red]demo: unexpected outcome[/]")
        _next_steps(console, settings.home, chain.message_id, poison.message_id)
        return 0 if ok else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        console.print(f"worker stopped (exit {worker.returncode})")


def _next_steps(console: Console, home: Path, chain_id: str, poison_id: str) -> None:
    """Commands to look around the demo's store, runnable as printed from here."""
    prefix = f"AGENTPOST_HOME={shlex.quote(_shown(home))} {_command()}"
    console.print("\nlook around what the demo left (it is wiped at the next run):")
    for args, what in (
        (f"trace {chain_id[:8]}", "the chain, every attempt"),
        (f"trace {chain_id[:8]} --mermaid", "as a sequence diagram"),
        (f"dlq show {poison_id[:8]}", "the dead letter and its tracebacks"),
        (f"status {chain_id[:8]} --json", "one message, for scripts"),
        ("agents", "the agents and their counts"),
    ):
        console.print(f"  {prefix} {args}", style="bold", highlight=False, soft_wrap=True)
        console.print(f"      # {what}", style="dim", highlight=False)


def _command() -> str:
    """How this process was started as the ``agentpost`` command (or the module)."""
    launched = Path(sys.argv[0])
    if launched.name == "agentpost" and launched.exists():
        return shlex.quote(_shown(launched))
    return f"{shlex.quote(_shown(Path(sys.executable)))} -m messaging.cli"


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


def _wait(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"demo: timed out after {timeout_s:.0f} s waiting for {what}")
