"""The layers hold: every import points down, no module cycle, a sender loads no worker code.

``storage`` <- ``wire`` <- ``messaging`` <- ``worker``: a package imports only the ones
below it. Every import counts, the function-local and ``TYPE_CHECKING`` ones too (they
are how a cycle hides from the interpreter), read from the source with ``ast``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

LAYERS = {"storage": 0, "wire": 1, "messaging": 2, "worker": 3}


@cache
def modules() -> dict[str, Path]:
    """Every module of the layered packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _ours(name: str) -> str | None:
    """The longest of our modules that ``name`` is or lies inside, if any."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Our modules that ``module`` imports, anywhere in its source."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg.
            known = modules()
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        targets.update(t for n in names if (t := _ours(n)) is not None)
    targets.discard(module)
    return targets


def graph() -> dict[str, set[str]]:
    return {module: imports_of(module) for module in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_the_scan_sees_function_local_and_type_checking_imports() -> None:
    # A scan that missed these would pass on the very cycles it is meant to catch.
    assert "wire.app" in imports_of("wire.publish")  # under TYPE_CHECKING
    assert "messaging.gateway.app" in imports_of("messaging.gateway")  # function-local
    assert "messaging.cli_ops" in imports_of("messaging.cli")  # `from messaging import x`


def test_every_import_points_down() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert upward == [], "a package imports one above it:\n" + "\n".join(upward)


def test_no_module_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_a_sending_process_loads_no_worker_module(tmp_path: Path) -> None:
    # Given an embedded deployment where a worker registered the agent `echo`
    code = f"""
import json, sys, time
import storage
from messaging import Client, Settings
from wire import inbox_depths, inbox_name

settings = Settings(home={str(tmp_path)!r})
client = Client(settings)
storage.register_agents(
    client.engine, [("echo", inbox_name("echo", settings))], kind="handler", now=time.time()
)
# When this process sends and publishes a message
sent = client.send("echo", {{"n": 1}}, sender="t")
client.flush()  # the publish runs in the background; this waits for it
print(json.dumps({{
    "status": sent.status,
    "depth": inbox_depths(client.app, ["echo"])["echo"],
    "loaded": sorted(m for m in sys.modules if m == "worker" or m.startswith("worker.")),
}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Then its task is on the broker, and no worker module was ever imported
    assert (report["status"], report["depth"]) == ("queued", 1)
    assert report["loaded"] == []


def test_an_inspecting_command_loads_no_celery(tmp_path: Path) -> None:
    # `agentpost status ID` reads the store only: importing Celery would double its start-up
    code = """
import sys
from messaging.cli import main
sys.argv = ["agentpost", "status", "0000"]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("celery" in sys.modules, "fastapi" in sys.modules, code)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "AGENTPOST_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # On an empty home: no store, exit 2, and neither was imported
    assert done.stdout.split() == ["False", "False", "2"], done.stdout + done.stderr
