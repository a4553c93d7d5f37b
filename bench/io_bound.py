"""I/O-bound agents: how many 200 ms deliveries one worker process keeps in flight.

Agents wait on models and APIs, not on the CPU. One worker process with ``-P threads
-c C`` serves, in turn, with fresh queues and state:

1. ``noop``: the no-op drain rate of that same worker (the CPU-bound ceiling);
2. ``wait``: a synchronous handler that blocks 200 ms (``time.sleep``);
3. ``await``: an async handler that awaits 200 ms (``asyncio.sleep``, on the worker's
   shared event loop);
4. ``raw``: raw Celery (``bench/rawapp.py``) with the same ``-P threads -c C``, a task
   that blocks 200 ms, the same N tasks queued by ``send_task`` first: how near the
   bound Celery itself comes (the ramp at the start and the end of a drain included).

Each case enqueues N messages with ``send_many`` while no worker runs, starts the
worker, and times the drain from the first attempt's start to the last one's end
(stored timestamps). It prints each rate, the most attempts that were running at
once, and for the I/O-bound cases the ratio to ``min(C / 0.2 s, no-op rate)``: the
target is >= 0.8 with >= 200 in flight at ``-c 200``.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python bench/io_bound.py --messages 2000 --concurrency 200

Servers as in ``bench/throughput.py`` (``--redis-url``, ``--pg-admin-url``); a fresh
database is created and dropped, and the run's Redis keys are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench import rawapp  # noqa: E402
from bench.agents import IO_WAIT_S  # noqa: E402
from bench.throughput import (  # noqa: E402
    add_server_args,
    child_env,
    clean_redis,
    fresh_database,
    queue_length,
    raw_worker_argv,
    start_worker,
    stop_worker,
    table,
    wait_for,
)

CASES = ("noop", "wait", "await", "raw")
assert rawapp.WAIT_S == IO_WAIT_S  # the raw task waits as the agents do


@dataclass
class Drain:
    agent: str
    messages: int
    drain_s: float
    most_in_flight: int

    @property
    def rate(self) -> float:
        return self.messages / self.drain_s


def most_in_flight(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start
        running += step
        peak = max(peak, running)
    return peak


def run_case(args: argparse.Namespace, token: str, workdir: Path, db_url: str, name: str) -> Drain:
    import storage  # noqa: PLC0415
    from messaging.client import Client  # noqa: PLC0415
    from messaging.envelope import Envelope  # noqa: PLC0415
    from wire.queues import inbox_name  # noqa: PLC0415
    from wire.settings import Settings  # noqa: PLC0415

    n = args.messages
    namespace = f"b{token}-io-{name}."
    home = workdir / name
    settings = Settings(
        broker_url=args.redis_url, database_url=db_url, namespace=namespace, home=home
    )
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE agentpost_messages, agentpost_attempts, agentpost_agents RESTART IDENTITY"
            )
        )
    storage.register_agents(
        engine, [(name, inbox_name(name, settings))], kind="handler", now=time.time()
    )
    client = Client(settings)
    try:
        envelopes = [Envelope(sender="bench", receiver=name, payload={"i": i}) for i in range(n)]
        for start in range(0, n, 500):
            client.send_many(envelopes[start : start + 500])
        client.flush()
    finally:
        client.close()

    argv = [
        sys.executable,
        "-m",
        "messaging.cli",
        "worker",
        "bench.agents",
        "--agents",
        name,
        "--pool",
        args.pool,
        "-c",
        str(args.concurrency),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{token}-io-{name}@%h",
    ]
    env = {
        "AGENTPOST_BROKER_URL": args.redis_url,
        "AGENTPOST_DATABASE_URL": db_url,
        "AGENTPOST_NAMESPACE": namespace,
        "AGENTPOST_HOME": str(home),
    }
    log = workdir / f"{name}.log"
    proc = start_worker(argv, child_env(env), log)
    done = text("SELECT count(*) FILTER (WHERE status = 'delivered') FROM agentpost_messages")
    try:

        def probe() -> tuple[bool, bool]:
            with engine.connect() as conn:
                delivered = conn.execute(done).scalar_one()
            return delivered > 0, delivered >= n

        wait_for(probe, proc=proc, timeout_s=args.timeout, interval_s=0.1, log=log)
    finally:
        stop_worker(proc)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT started_at, ended_at FROM agentpost_attempts WHERE outcome = 'delivered'")
        ).all()
    intervals = [(float(s), float(e)) for s, e in rows]
    drain = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return Drain(name, n, drain, most_in_flight(intervals))


def run_raw(args: argparse.Namespace, token: str, workdir: Path) -> Drain:
    """Raw Celery's 200 ms task through the same pool; timed by the tasks' own stamps."""
    n, r = args.messages, redis.Redis.from_url(args.redis_url)
    queue, key = f"bench.{token}.io-raw", f"bench:{token}:io-raw"
    config = frozenset({"wait"})
    app = rawapp.make_app(args.redis_url, config)
    try:
        for _ in range(n):
            app.send_task(rawapp.NOOP_TASK, queue=queue)
    finally:
        app.close()
    if (queued := queue_length(r, queue)) != n:
        raise RuntimeError(f"raw: {queued} tasks in {queue}, expected {n}")
    env = {"BENCH_REDIS_URL": args.redis_url, "BENCH_KEY": key, "BENCH_N": str(n)}
    env["BENCH_RAW_CONFIG"] = "wait"
    argv = raw_worker_argv(
        "bench.rawapp", args.concurrency, queue, f"bench-{token}-io-raw@%h", pool=args.pool
    )
    log = workdir / "raw.log"
    proc = start_worker(argv, child_env(env), log)
    try:

        def probe() -> tuple[bool, bool]:
            start, done = r.mget(f"{key}:start", f"{key}:done")
            return start is not None, done is not None and int(done) >= n

        wait_for(probe, proc=proc, timeout_s=args.timeout, interval_s=0.1, log=log)
    finally:
        stop_worker(proc)
    start, end = (float(r.get(f"{key}:{k}") or 0) for k in ("start", "end"))
    return Drain("raw", n, end - start, most_in_flight=0)  # in flight: not recorded


def report(drains: list[Drain], args: argparse.Namespace) -> str:
    noop = next(d for d in drains if d.agent == "noop")
    bound = min(args.concurrency / IO_WAIT_S, noop.rate)
    rows = []
    for d in drains:
        ratio = "" if d.agent == "noop" else f"{d.rate / bound:.2f}"
        shown = "" if d.agent == "raw" else str(d.most_in_flight)
        rows.append([d.agent, f"{d.rate:,.0f}", f"{d.drain_s:.1f}", shown, ratio])
    lines = [
        f"{args.messages} messages per case, one worker -P {args.pool} -c {args.concurrency}",
        "",
        *table(["agent", "msg/s", "drain s", "most in flight", "rate / bound"], rows),
        "",
        f"bound = min(concurrency / {IO_WAIT_S} s = {args.concurrency / IO_WAIT_S:,.0f}, "
        f"no-op rate {noop.rate:,.0f}) = {bound:,.0f} msg/s; target: rate / bound >= 0.8, "
        f"most in flight >= {min(200, args.concurrency)}; raw: raw Celery's 200 ms task "
        "against the same bound",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument("--concurrency", "-c", type=int, default=200)
    parser.add_argument("--pool", default="threads", help="Celery pool (threads, prefork)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated, of " + ", ".join(CASES)
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per drain")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_server_args(parser)
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[key]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if "noop" not in cases:
        cases.insert(0, "noop")  # the bound needs it

    token = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentpost-io-{token}-"))
    print(f"run {token}: logs {workdir}", file=sys.stderr)
    drains: list[Drain] = []
    try:
        with fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url:
            for name in cases:
                drains.append(
                    run_raw(args, token, workdir)
                    if name == "raw"
                    else run_case(args, token, workdir, db_url, name)
                )
                print(f"{name}: {drains[-1].rate:,.0f} msg/s", file=sys.stderr)
    finally:
        removed = clean_redis(args.redis_url, token)
        print(f"cleanup: removed {removed} redis keys/members", file=sys.stderr)
    print(report(drains, args))
    if args.json:
        noop = next(d for d in drains if d.agent == "noop")
        bound = min(args.concurrency / IO_WAIT_S, noop.rate)
        figures = {
            d.agent: {"rate": d.rate, "most_in_flight": d.most_in_flight, "bound": bound}
            for d in drains
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
