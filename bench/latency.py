"""Request → reply round-trip latency of agentpost against raw Celery, on Redis + PostgreSQL.

One run measures, one request at a time (each waits for its reply before the next is
sent), after a warm-up:

1. **raw Celery**: a minimal app (``bench/rawecho.py``: Redis broker and result
   backend, JSON, ``acks_late``, prefetch 1) with an echo task, served by
   ``celery -A bench.rawecho worker -c C -P prefork --without-mingle --without-gossip``;
   timed: ``app.send_task("bench.echo", args=[payload]).get(timeout=10)``.
2. **agentpost**: the ``echo`` agent of ``bench/agents.py`` (it returns the payload),
   served by ``python -m messaging.cli worker bench.agents --agents echo -c C``; timed:
   ``client.request("echo", payload, sender="bench", timeout_s=10)``.

It prints p50, p90, p99, mean, min and max in ms, the ratios agentpost/raw, and for
agentpost a breakdown of each round trip from the stored timestamps: client call →
``created_at`` (envelope built) → attempt ``started_at`` (the task began in the pool)
→ attempt ``ended_at`` (handler done, before the completion statement) → ``request``
returned (completion statement, the client's next poll, its two SELECTs). It also
counts the store polls (``storage.reply_state``) per request.

Optional extra rows (``--variant``, repeatable):

* ``events``: agentpost with ``AGENTPOST_TASK_EVENTS=true`` (its own worker; the default
  is off, as raw Celery's).
* ``tight-poll``: on the default agentpost worker, ``Client.send`` then a bench-only
  wait: one ``SELECT status, reply`` on a held autocommit connection every
  ``--tight-poll-ms`` (default 1 ms). An estimate of what a prompt reply notification
  (a blocking wait instead of the 2 → 50 ms backoff) would give; core code unchanged.

Run from the repository root::

    PYTHONPATH=. python bench/latency.py --requests 500

Servers as in ``bench/throughput.py``: ``--redis-url`` / ``BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/5``), ``--pg-admin-url`` / ``BENCH_PG_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). A fresh database
``agentpost_bench_<random>`` is created and dropped; every Redis key of the run carries
its random token and is deleted at the end; workers get SIGTERM, then SIGKILL, on
their process group.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
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
    raw_worker_argv,
    start_worker,
    stop_worker,
    table,
)

VARIANTS = ("events", "tight-poll")


@dataclass
class Series:
    """The timed round trips of one system, in ms."""

    system: str
    samples_ms: list[float]
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# -- statistics ----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def payload_of(i: int) -> dict[str, Any]:
    return {"i": i, "text": "ping"}


def check_alive(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(
            f"worker exited ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:]
        )


# -- raw Celery ----------------------------------------------------------------------


def run_raw(args: argparse.Namespace, token: str, workdir: Path) -> Series:
    from celery.exceptions import TimeoutError as CeleryTimeout  # noqa: PLC0415

    from bench import rawecho  # noqa: PLC0415

    queue = f"bench.{token}.echo"
    argv = raw_worker_argv("bench.rawecho", args.concurrency, queue, f"bench-{token}-echo@%h")
    log = workdir / "raw.log"
    app = rawecho.make_app(args.redis_url)
    proc = start_worker(argv, child_env({"BENCH_REDIS_URL": args.redis_url}), log)
    samples: list[float] = []
    try:

        def call(task_id: str, payload: Any) -> Any:
            result = app.send_task(rawecho.ECHO_TASK, args=[payload], queue=queue, task_id=task_id)
            return result.get(timeout=args.request_timeout)

        # The first request waits for the worker to come up.
        first = app.send_task(
            rawecho.ECHO_TASK, args=[payload_of(-1)], queue=queue, task_id=f"bench-{token}-w"
        )
        deadline = time.monotonic() + args.start_timeout
        while True:
            try:
                first.get(timeout=1.0)
                break
            except CeleryTimeout:
                check_alive(proc, log)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"raw worker not serving after {args.start_timeout}s"
                    ) from None
        for i in range(args.warmup):
            call(f"bench-{token}-w{i}", payload_of(-1))

        for i in range(args.requests):
            payload = payload_of(i)
            t0 = time.perf_counter()
            reply = call(f"bench-{token}-{i}", payload)
            samples.append((time.perf_counter() - t0) * 1000.0)
            if reply != payload:
                raise RuntimeError(f"raw: reply {reply!r} to {payload!r}")
    finally:
        stop_worker(proc)
        app.close()
    return Series("raw", samples)


# -- agentpost -----------------------------------------------------------------------


def run_agentpost(
    args: argparse.Namespace, token: str, workdir: Path, db_url: str, events: bool
) -> list[Series]:
    """One agentpost worker; the ``request`` series, and the tight-poll one if asked."""
    import storage  # noqa: PLC0415
    from messaging.client import Client  # noqa: PLC0415
    from wire.settings import Settings  # noqa: PLC0415

    system = "agentpost, task events on" if events else "agentpost"
    tag = "ap-ev" if events else "ap"
    namespace = f"b{token}-lat-{tag}."  # <= 32 characters
    home = workdir / tag
    settings = Settings(
        broker_url=args.redis_url,
        database_url=db_url,
        namespace=namespace,
        home=home,
        task_events=events,
    )
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)
    with engine.begin() as conn:  # readiness below is the worker registering its agent
        conn.execute(text("DELETE FROM agentpost_agents"))

    class InstrumentedClient(Client):
        """Notes when ``send`` returns, and counts and times the store polls."""

        sent_at = 0.0
        polls = 0
        poll_s = 0.0

        def send(self, *args: Any, **kwargs: Any) -> Any:
            result = super().send(*args, **kwargs)
            self.sent_at = time.time()
            return result

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            read = storage.reply_state  # what request/result poll with

            def counted(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return read(*a, **k)
                finally:
                    self.poll_s += time.perf_counter() - t0
                    self.polls += 1

            storage.reply_state = counted  # type: ignore[assignment]

    argv = [
        sys.executable,
        "-m",
        "messaging.cli",
        "worker",
        "bench.agents",
        "--agents",
        "echo",
        "-c",
        str(args.concurrency),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{token}-{tag}@%h",
    ]
    env = child_env(
        {
            "AGENTPOST_BROKER_URL": args.redis_url,
            "AGENTPOST_DATABASE_URL": db_url,
            "AGENTPOST_NAMESPACE": namespace,
            "AGENTPOST_HOME": str(home),
            "AGENTPOST_TASK_EVENTS": "true" if events else "false",
        }
    )
    log = workdir / f"{tag}.log"
    proc = start_worker(argv, env, log)
    client: InstrumentedClient | None = None
    series: list[Series] = []
    try:
        deadline = time.monotonic() + args.start_timeout
        while not any(a.name == "echo" for a in storage.list_agents(engine)):
            check_alive(proc, log)
            if time.monotonic() > deadline:
                raise TimeoutError(f"agentpost worker not ready after {args.start_timeout}s")
            time.sleep(0.05)
        client = InstrumentedClient(settings)
        client.request("echo", payload_of(-1), sender="bench", timeout_s=args.start_timeout)
        for _ in range(args.warmup):
            client.request("echo", payload_of(-1), sender="bench", timeout_s=args.request_timeout)

        samples: list[float] = []
        walls: dict[str, tuple[float, float, float]] = {}  # id -> call, send returned, reply
        client.polls, client.poll_s = 0, 0.0
        for i in range(args.requests):
            payload = payload_of(i)
            w0, t0 = time.time(), time.perf_counter()
            reply = client.request("echo", payload, sender="bench", timeout_s=args.request_timeout)
            samples.append((time.perf_counter() - t0) * 1000.0)
            walls[reply.parent_id] = (w0, client.sent_at, time.time())
            if reply.payload != payload:
                raise RuntimeError(f"agentpost: reply {reply.payload!r} to {payload!r}")
        series.append(
            Series(
                system,
                samples,
                stages(engine, walls),
                {
                    "polls_per_request": client.polls / args.requests,
                    "ms_per_poll": client.poll_s * 1000.0 / max(1, client.polls),
                },
            )
        )
        if not events and "tight-poll" in args.variant:
            series.append(tight_poll(args, client, engine))
    finally:
        if client is not None:
            client.close()
        stop_worker(proc)
    return series


def tight_poll(args: argparse.Namespace, client: Any, engine: Any) -> Series:
    """``Client.send``, then poll one prebuilt SELECT every ``--tight-poll-ms``."""
    query = text("SELECT status, reply FROM agentpost_messages WHERE id = :id")
    pause = args.tight_poll_ms / 1000.0
    samples: list[float] = []
    walls: dict[str, tuple[float, float, float]] = {}
    polls = 0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for i in range(-args.warmup, args.requests):
            payload = payload_of(i)
            w0, t0 = time.time(), time.perf_counter()
            sent = client.send("echo", payload, sender="bench")
            deadline = t0 + args.request_timeout
            while True:
                polls += i >= 0
                status, reply = conn.execute(query, {"id": sent.message_id}).one()
                if status == "delivered":
                    break
                if status == "dead" or time.perf_counter() > deadline:
                    raise RuntimeError(f"tight-poll: message {sent.message_id} is {status}")
                time.sleep(pause)
            elapsed = (time.perf_counter() - t0) * 1000.0
            if json.loads(reply) != payload:
                raise RuntimeError(f"tight-poll: reply {reply!r} to {payload!r}")
            if i >= 0:
                samples.append(elapsed)
                walls[sent.message_id] = (w0, client.sent_at, time.time())
    return Series(
        f"agentpost send + {args.tight_poll_ms:g} ms poll (bench-only)",
        samples,
        stages(engine, walls),
        {"polls_per_request": polls / args.requests},
    )


STAGES = (
    "call → created_at: build, check the envelope",
    "created_at → send returned: INSERT (publish: background)",
    "send returned → started_at: broker, worker, pool hand-off",
    "started_at → ended_at: parse, claim UPDATE, handler",
    "ended_at → reply returned: completion, wait for next poll, poll",
)


def stages(engine: Any, walls: dict[str, tuple[float, float, float]]) -> dict[str, list[float]]:
    """Per request, the time between the stored timestamps (ms), from the store."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.id, m.created_at, a.started_at, a.ended_at "
                "FROM agentpost_messages m JOIN agentpost_attempts a ON a.message_id = m.id "
                "WHERE a.outcome = 'delivered'"
            )
        ).all()
    out: dict[str, list[float]] = {name: [] for name in STAGES}
    for message_id, created, started, ended in rows:
        if message_id not in walls:
            continue
        called, sent, returned = walls[message_id]
        points = (called, created, sent, started, ended, returned)
        for name, a, b in zip(STAGES, points, points[1:], strict=False):
            out[name].append((b - a) * 1000.0)
    return out


# -- report --------------------------------------------------------------------------


def report(series: list[Series], args: argparse.Namespace) -> str:
    header = ["system", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "max ms"]
    rows = []
    stats = {s.system: summary(s.samples_ms) for s in series}
    for s in series:
        st = stats[s.system]
        rows.append([s.system, *(f"{st[k]:.2f}" for k in header_keys())])
    lines = [
        f"{args.requests} sequential request → reply round trips per system "
        f"(after {args.warmup} warm-up), worker prefork -c {args.concurrency}",
        "",
        *table(header, rows),
        "",
    ]
    if "raw" in stats:
        raw = stats["raw"]
        for s in series:
            if s.system == "raw":
                continue
            st = stats[s.system]
            lines.append(
                f"{s.system} / raw: p50 {st['p50'] / raw['p50']:.2f}x, "
                f"p99 {st['p99'] / raw['p99']:.2f}x, mean {st['mean'] / raw['mean']:.2f}x"
            )
        lines.append("")
    for s in series:
        if "polls_per_request" in s.extra:
            line = f"{s.system}: {s.extra['polls_per_request']:.2f} store polls per request"
            if "ms_per_poll" in s.extra:
                line += f", {s.extra['ms_per_poll']:.2f} ms per poll (storage.reply_state)"
            lines.append(line)
    for s in series:
        if not s.stages_ms:
            continue
        lines += ["", f"{s.system}: where a round trip goes (from the stored timestamps)", ""]
        stage_rows = [
            [
                name,
                f"{statistics.median(s.stages_ms[name]):.2f}",
                f"{statistics.fmean(s.stages_ms[name]):.2f}",
                f"{percentile(s.stages_ms[name], 99):.2f}",
            ]
            for name in STAGES
            if s.stages_ms[name]
        ]
        lines += table(["stage", "median ms", "mean ms", "p99 ms"], stage_rows)
    return "\n".join(lines)


def header_keys() -> tuple[str, ...]:
    return ("p50", "p90", "p99", "mean", "min", "max")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", "-n", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests first")
    parser.add_argument("--concurrency", "-c", type=int, default=2)
    add_server_args(parser)
    parser.add_argument("--request-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--start-timeout", type=float, default=60.0, help="worker start, s")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=VARIANTS,
        help="extra agentpost rows: 'events' (task events on), 'tight-poll' "
        "(send + a 1 ms store poll, bench-only); repeatable",
    )
    parser.add_argument("--tight-poll-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs")
    args = parser.parse_args(argv)

    # Only the settings this script passes explicitly may reach agentpost.
    for key in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[key]

    token = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentpost-latency-{token}-"))
    db_name = f"agentpost_bench_{token}"
    print(
        f"run {token}: redis {args.redis_url}, database {db_name}, logs {workdir}", file=sys.stderr
    )
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f}: other jobs will skew the figures",
            file=sys.stderr,
        )
    started = time.monotonic()
    series: list[Series] = []
    failed = True
    try:
        with fresh_database(args.pg_admin_url, db_name) as db_url:
            series.append(run_raw(args, token, workdir))
            series += run_agentpost(args, token, workdir, db_url, events=False)
            if "events" in args.variant:
                series += run_agentpost(args, token, workdir, db_url, events=True)
        failed = False
    finally:
        removed = clean_redis(args.redis_url, token)
        print(f"cleanup: dropped {db_name}, removed {removed} redis keys/members", file=sys.stderr)
        if failed or args.keep_logs:
            print(f"worker logs kept in {workdir}", file=sys.stderr)
        else:
            for path in sorted(workdir.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            workdir.rmdir()
    print(report(series, args))
    print(
        f"\nwall time {time.monotonic() - started:.0f}s; load average before "
        f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in series], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
