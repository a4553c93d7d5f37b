"""A long-running worker: its memory over 100,000 messages, and the first one after idle.

One worker (``-P prefork -c 2``, the defaults) serves ``noop`` and ``echo``:

1. **warm round trip**: ``--warm`` requests to ``echo`` one after another; their median;
2. **soak**: N messages to ``noop`` (``send_many`` in batches of 1,000) while the worker
   drains them; the resident memory of the worker's process tree (main process and
   pool children, ``VmRSS``) is read every 2 s with the count delivered. It prints the
   memory after the first 10 % and at the end, and the growth per 100,000 messages
   between the two (target < 10 MB);
3. **after idle**: ``--idle-repeats`` times, nothing for ``--idle-s`` seconds (60), then
   one request, timed (target: within 2x the warm median).

Run from the repository root::

    PYTHONPATH=. .venv/bin/python bench/soak.py --messages 100000

Servers as in ``bench/throughput.py`` (``--redis-url``, ``--pg-admin-url``); a fresh
database is created and dropped, and the run's Redis keys are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.throughput import (  # noqa: E402
    add_server_args,
    child_env,
    clean_redis,
    fresh_database,
    start_worker,
    stop_worker,
)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB."""
    total_kb, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total_kb += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
        todo += [int(c) for c in children]
    return total_kb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=100_000)
    parser.add_argument("--warm", type=int, default=50, help="warm requests")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--idle-repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the soak")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_server_args(parser)
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[key]

    import storage  # noqa: PLC0415
    from messaging.client import Client  # noqa: PLC0415
    from messaging.envelope import Envelope  # noqa: PLC0415
    from wire.settings import Settings  # noqa: PLC0415

    token = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentpost-soak-{token}-"))
    print(f"run {token}: logs {workdir}", file=sys.stderr)
    lines: list[str] = []
    figures: dict[str, Any] = {}
    try:
        with fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url:
            namespace = f"b{token}-soak."
            env = {
                "AGENTPOST_BROKER_URL": args.redis_url,
                "AGENTPOST_DATABASE_URL": db_url,
                "AGENTPOST_NAMESPACE": namespace,
                "AGENTPOST_HOME": str(workdir / "home"),
            }
            settings = Settings(
                broker_url=args.redis_url,
                database_url=db_url,
                namespace=namespace,
                home=workdir / "home",
            )
            engine = storage.engine_for(settings.database)
            storage.create_schema(engine)
            argv_ = [
                sys.executable,
                "-m",
                "messaging.cli",
                "worker",
                "bench.agents",
                "--agents",
                "noop,echo",
            ]
            argv_ += ["--loglevel", "WARNING", "--hostname", f"bench-{token}-soak@%h"]
            log = workdir / "worker.log"
            proc = start_worker(argv_, child_env(env), log)
            client = Client(settings)
            try:
                deadline = time.monotonic() + 60
                while {a.name for a in storage.list_agents(engine)} < {"noop", "echo"}:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("worker did not start:\n" + log.read_text()[-3000:])
                    time.sleep(0.1)

                def round_trip() -> float:
                    t0 = time.perf_counter()
                    client.request("echo", "ping", sender="bench", timeout_s=30)
                    return (time.perf_counter() - t0) * 1000

                round_trip()
                warm = statistics.median(round_trip() for _ in range(args.warm))
                lines.append(f"warm round trip (median of {args.warm}): {warm:.2f} ms")
                figures["warm_ms"] = warm

                n = args.messages
                done = text(
                    "SELECT count(*) FROM agentpost_messages "
                    "WHERE receiver = 'noop' AND status = 'delivered'"
                )
                samples: list[tuple[int, float]] = []
                t0 = time.monotonic()
                sent = 0
                while True:
                    if sent < n:
                        batch = [
                            Envelope(sender="bench", receiver="noop", payload={"i": i})
                            for i in range(sent, min(n, sent + 1000))
                        ]
                        client.send_many(batch)
                        sent += len(batch)
                    with engine.connect() as conn:
                        delivered = conn.execute(done).scalar_one()
                    if not samples or time.monotonic() - t0 >= 2 * len(samples):
                        samples.append((delivered, tree_rss_mb(proc.pid)))
                    if delivered >= n:
                        samples.append((delivered, tree_rss_mb(proc.pid)))
                        break
                    if proc.poll() is not None or time.monotonic() - t0 > args.timeout:
                        raise RuntimeError(
                            f"soak stopped at {delivered} of {n}:\n" + log.read_text()[-3000:]
                        )
                    if sent >= n:
                        time.sleep(0.5)
                soak_s = time.monotonic() - t0
                first = next(s for s in samples if s[0] >= n // 10)
                last = samples[-1]
                growth = (last[1] - first[1]) / max(1, last[0] - first[0]) * 100_000
                figures.update(messages=n, growth_mb_per_100k=growth, after_idle_ms=[])
                lines += [
                    f"soak: {n:,} messages in {soak_s:.0f} s ({n / soak_s:,.0f} msg/s)",
                    f"worker tree RSS: {samples[0][1]:.1f} MB at start, {first[1]:.1f} MB after "
                    f"{first[0]:,} delivered, {last[1]:.1f} MB after {last[0]:,}",
                    f"growth: {growth:+.1f} MB per 100,000 messages (target < 10 MB)",
                ]
                for i in range(args.idle_repeats):
                    time.sleep(args.idle_s)
                    after = round_trip()
                    figures["after_idle_ms"].append(after)
                    lines.append(
                        f"first request after {args.idle_s:.0f} s idle (#{i + 1}): {after:.2f} ms "
                        f"= {after / warm:.2f}x the warm median (target <= 2x)"
                    )
            finally:
                client.close()
                stop_worker(proc)
    finally:
        removed = clean_redis(args.redis_url, token)
        print(f"cleanup: removed {removed} redis keys/members", file=sys.stderr)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
