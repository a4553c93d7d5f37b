"""CLI start-up: ``agentpost --help``, ``status ID`` and ``trace ID`` against ``celery --help``.

Each round runs the four commands once, in turn, as a user's shell would (the installed
console scripts beside this Python); the medians of ``--rounds`` rounds are printed with
their ratios to ``celery --help`` of the same run. ``status`` and ``trace`` read an
embedded store (a temporary ``AGENTPOST_HOME``) holding one message, given by its
8-character prefix as the CLI's tables print it.

    PYTHONPATH=. .venv/bin/python bench/cli_startup.py --rounds 9

Target (issue: the first hour): ``agentpost --help`` and ``agentpost status ID`` within
1.5x ``celery --help``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import storage  # noqa: E402
from messaging import Client, Settings  # noqa: E402
from wire import inbox_name  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        client = Client(settings)
        storage.register_agents(
            client.engine, [("noop", inbox_name("noop", settings))], kind="handler", now=0
        )
        prefix = client.send("noop", {"i": 1}, sender="bench").message_id[:8]
        client.close()
        storage.dispose_engines()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
        env["AGENTPOST_HOME"] = home
        commands = {
            "celery --help": [str(BIN / "celery"), "--help"],
            "agentpost --help": [str(BIN / "agentpost"), "--help"],
            "agentpost status ID": [str(BIN / "agentpost"), "status", prefix],
            "agentpost trace ID": [str(BIN / "agentpost"), "trace", prefix],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["celery --help"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:22s} {median:6.3f} s  {median / base:5.2f}x celery --help")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
