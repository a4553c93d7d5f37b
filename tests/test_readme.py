"""The README, executed: its snippets run top to bottom as the walk-through it describes.

Every ``python`` and ``bash`` block runs, in order, in one empty folder on the embedded
default: Python blocks in one namespace (an interpreter session kept open), shell blocks
in ``bash -e`` with the variables they export carried to the next block and to Python
(``KEY``). Workers and servers a block starts with ``&`` run until the test ends. An
HTML comment on the line before a block says what else to do with it:

- ``<!-- readme-test: skip: WHY -->`` illustrative only: not run;
- ``file PATH``: the block is that file's content (written, not run);
- ``pytest NAME``: the block is a test file: written and run with pytest;
- ``wait-agents A B``: after the block, wait until the store lists those agents (a
  worker it started has registered them);
- ``with NAME=EXPR``: replace the placeholder ``NAME`` in the block with the value of
  the Python expression (a message id: first waited for until delivered or dead);
- ``expect TEXT``: the block's output contains ``TEXT``.

Several go in one comment, separated by ``;``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import storage
from messaging import Client, MessageNotFound
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_BIN = str(Path(sys.executable).parent)


@dataclass
class Block:
    lang: str
    code: str
    line: int
    directives: list[tuple[str, str]] = field(default_factory=list)

    def get(self, verb: str) -> list[str]:
        return [arg for v, arg in self.directives if v == verb]


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks, each with the directives of the comment just above it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        directive = _DIRECTIVE.match(lines[start - 1]) if start else None
        parsed: list[tuple[str, str]] = []
        for part in directive.group(1).split(";") if directive else []:
            verb, _, arg = part.strip().partition(" ")
            parsed.append((verb.rstrip(":"), arg.strip()))
        blocks.append(Block(fence.group(1), "\n".join(body) + "\n", start + 1, parsed))
    return blocks


class Walkthrough:
    """One reader's folder, shell and interpreter session."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.namespace: dict[str, Any] = {"__name__": "__readme__"}
        self.state = folder / ".readme-shell-state"
        self.state.write_text("")
        self.groups: list[int] = []  # process groups of the shell blocks (their & jobs too)
        self.client = Client()

    def run(self, block: Block) -> None:
        where = f"README.md line {block.line}"
        for path in block.get("file"):
            target = self.folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            return
        for name in block.get("pytest"):
            (self.folder / name).write_text(block.code)
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
                cwd=self.folder,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"{where}: {done.stdout}{done.stderr}"
            return
        if block.lang == "python":
            output = self._python(block, where)
        elif block.lang == "bash":
            output = self._bash(block, where)
        else:
            return
        for text in block.get("expect"):
            assert text in output, f"{where}: {text!r} not in the output:\n{output}"
        for names in block.get("wait-agents"):
            self._wait_for_agents(names.split(), where)

    def _python(self, block: Block, where: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(block.code, where, "exec"), self.namespace)
            except Exception as exc:
                pytest.fail(f"{where}: {type(exc).__name__}: {exc}\n{block.code}")
        return out.getvalue()

    def _bash(self, block: Block, where: str) -> str:
        code = block.code
        for assignments in block.get("with"):
            for assignment in assignments.split():
                name, _, expression = assignment.partition("=")
                value = str(eval(expression, self.namespace))
                self._settle(value)
                code = re.sub(rf"\b{name}\b", value, code)
        log = self.folder / f".readme-block-{block.line}.log"
        script = f"set -eo pipefail\nset -a\n. {self.state}\n{code}\nexport -p > {self.state}\n"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            rc = proc.wait(timeout=120)
        output = log.read_text()
        assert rc == 0, f"{where}: exit {rc}\n{code}\n--- output ---\n{output}"
        self._import_exports()
        return output

    def _import_exports(self) -> None:
        # What the shell exported (KEY=...), for the Python blocks that use it.
        for line in self.state.read_text().splitlines():
            match = re.match(r'^declare -x ([A-Z][A-Z0-9_]*)="(.*)"$', line)
            if match and match.group(1) not in self.env:
                self.namespace[match.group(1)] = match.group(2)

    def _settle(self, value: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.client.status(value).status in ("delivered", "dead"):
                    return
            except MessageNotFound:
                return  # not a message id
            time.sleep(0.1)
        pytest.fail(f"message {value} still not delivered or dead after 60 s")

    def _wait_for_agents(self, names: list[str], where: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(names) <= {a.name for a in self.client.agents()}:
                return
            time.sleep(0.2)
        pytest.fail(f"{where}: agents {names} not registered within 60 s")

    def stop(self) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for group in self.groups:
            while time.monotonic() < deadline and _alive(group):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Walkthrough]:
    # A reader's machine: the embedded default, nothing of the test session's settings.
    for name in list(os.environ):
        if name.startswith("AGENTPOST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    walk = Walkthrough(tmp_path, env)
    try:
        yield walk
    finally:
        walk.stop()
        storage.dispose_engines()


def test_the_readme_runs_top_to_bottom(walkthrough: Walkthrough) -> None:
    blocks = readme_blocks((ROOT / "README.md").read_text())
    runnable = [b for b in blocks if b.lang in ("python", "bash") and not b.get("skip")]
    skipped = [b for b in blocks if b.get("skip")]
    # A parser that finds nothing would pass: the README has this many of each
    assert len(runnable) >= 15 and len(skipped) >= 4, [(b.line, b.lang) for b in blocks]
    for block in skipped:
        assert block.get("skip") != [""], f"README.md line {block.line}: say why it is skipped"
    for block in runnable:
        walkthrough.run(block)


def test_every_block_is_python_bash_or_a_picture() -> None:
    # A block in another language would be silently left out of the walk-through.
    for block in readme_blocks((ROOT / "README.md").read_text()):
        assert block.lang in ("python", "bash", ""), f"README.md line {block.line}: {block.lang}"
