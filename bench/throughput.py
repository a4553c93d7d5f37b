"""Throughput of agentpost against a bare Celery no-op, on Redis + PostgreSQL.

One run measures, ``--repeats`` times each (fresh queues and state every time), and
reports the medians:

1. **raw drain**: a minimal Celery app (``bench/rawapp.py``: JSON, ``acks_late``,
   prefetch 1, no result backend) with a no-op task. N tasks are enqueued while no
   worker runs, then ``celery -A bench.rawapp worker -c C -P prefork`` starts; the
   drain time runs from the first task's start to the last task's end (the task
   stamps both in Redis).
2. **agentpost drain**: the same N messages sent with ``Client.send`` to the no-op
   agent of ``bench/agents.py`` while no worker runs, then
   ``python -m messaging.cli worker bench.agents -c C`` starts; the drain time runs
   from ``min(started_at)`` to ``max(ended_at)`` of the stored attempts.
3. **enqueue rate** of one process: ``send_task`` (raw) and ``Client.send``
   (agentpost: store insert + publish), timed over the same N messages.

It also samples the CPU time (``/proc``) spent during each drain by the worker
process tree, by PostgreSQL and by Redis, divided by N: where a delivery's time goes.

Run from the repository root::

    PYTHONPATH=. python bench/throughput.py --messages 2000 --repeats 3 --concurrency 2

Servers: ``--redis-url`` / ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/5``),
``--pg-admin-url`` / ``BENCH_PG_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``): the benchmark creates a fresh
database ``agentpost_bench_<random>`` through it and drops it at the end; it deletes the
Redis keys it created (every one carries the run's random token).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measurements -------------------------------------------------------------------


@dataclass
class Run:
    """One repeat of one system."""

    system: str
    repeat: int
    messages: int
    enqueue_s: float
    drain_s: float
    startup_s: float  # worker spawn -> first task start
    total_s: float  # worker spawn -> last task end
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per message, during the drain
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def enqueue_rate(self) -> float:
        return self.messages / self.enqueue_s

    @property
    def drain_rate(self) -> float:
        return self.messages / self.drain_s


# -- /proc CPU accounting ------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds incl. reaped children) of one process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime..cstime are fields 14..17.
    ppid = int(fields[1])
    ticks = sum(int(v) for v in fields[11:15])
    return comm, ppid, ticks / CLK_TCK


def _all_stats() -> dict[int, tuple[str, int, float]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    return stats


def cpu_snapshot(worker_pid: int) -> dict[str, float]:
    """CPU seconds so far of the worker tree, of PostgreSQL and of Redis (if visible)."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = 0.0, [worker_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree += stats[pid][2]
        todo.extend(children.get(pid, []))
    snap = {
        "worker": tree,
        "postgres": sum(cpu for comm, _, cpu in stats.values() if comm.startswith("postgres")),
        "redis": sum(cpu for comm, _, cpu in stats.values() if comm.startswith("redis-server")),
        "bench": stats.get(os.getpid(), ("", 0, 0.0))[2],
    }
    # Everything else the machine did meanwhile (other users' jobs: noise).
    snap["other"] = machine_busy_s() - sum(snap.values())
    # The worker's main process alone (consumer, acks, events): part of "worker".
    snap["worker_main"] = stats.get(worker_pid, ("", 0, 0.0))[2]
    return snap


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat, all but idle/iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def cpu_per_message(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: (after[k] - before[k]) * 1000.0 / n for k in before}


# -- processes -----------------------------------------------------------------------


def raw_worker_argv(
    app_module: str, concurrency: int, queue: str, name: str, pool: str = "prefork"
) -> list[str]:
    """A raw Celery worker on one queue, as the benchmarks start it (prefork unless said)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--without-mingle",
        "--without-gossip",
        "-Q",
        queue,
        "-l",
        "WARNING",
        "-n",
        name,
    ]


def start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the worker's process group (warm shutdown), SIGKILL it if it lingers."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # Pool children may outlive a killed parent: clear the whole group.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_for(
    probe: Callable[[], tuple[bool, bool]],
    *,
    proc: subprocess.Popen[bytes],
    timeout_s: float,
    interval_s: float,
    log: Path,
    describe: Callable[[], str] = lambda: "",
) -> tuple[dict[str, float], dict[str, float]]:
    """Poll ``probe() -> (started, done)``; CPU snapshots at first start and at done."""
    deadline = time.monotonic() + timeout_s
    at_start: dict[str, float] | None = None
    while True:
        started, done = probe()
        if started and at_start is None:
            at_start = cpu_snapshot(proc.pid)
        if done:
            at_end = cpu_snapshot(proc.pid)
            return at_start or at_end, at_end
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker exited ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:]
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"drain not finished after {timeout_s}s ({describe()}); "
                f"worker log {log}:\n" + log.read_text()[-3000:]
            )
        time.sleep(interval_s)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTPOST_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


# -- the database --------------------------------------------------------------------


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """CREATE a database for this run and DROP it afterwards; yields its URL."""
    admin = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        import storage  # noqa: PLC0415

        storage.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- raw Celery ----------------------------------------------------------------------


def queue_length(r: redis.Redis, queue: str) -> int:
    """Messages in a kombu Redis queue, across its priority lists (``queue\x06\x16N``)."""
    return sum(r.llen(k) for k in [queue, *(f"{queue}\x06\x16{p}" for p in range(1, 10))])


def run_raw(
    args: argparse.Namespace,
    token: str,
    repeat: int,
    workdir: Path,
    system: str = "raw",
    config: frozenset[str] = frozenset(),
) -> Run:
    from bench import rawapp  # noqa: PLC0415

    n, r = args.messages, redis.Redis.from_url(args.redis_url)
    tag = system.replace("+", "-").replace(",", "-")
    queue = f"bench.{token}.{tag}{repeat}"
    key = f"bench:{token}:{tag}{repeat}"
    app = rawapp.make_app(args.redis_url, config)
    options = rawapp.send_options(config)

    try:
        t0 = time.perf_counter()
        for _ in range(n):
            app.send_task(rawapp.NOOP_TASK, queue=queue, **options)
        enqueue_s = time.perf_counter() - t0
    finally:
        app.close()
    queued = queue_length(r, queue)
    if queued != n:
        raise RuntimeError(f"{system}: {queued} tasks in {queue}, expected {n}")

    env = child_env(
        {
            "BENCH_REDIS_URL": args.redis_url,
            "BENCH_KEY": key,
            "BENCH_N": str(n),
            "BENCH_RAW_CONFIG": ",".join(sorted(config)),
        }
    )
    argv = raw_worker_argv(
        "bench.rawapp", args.concurrency, queue, f"bench-{token}-{tag}{repeat}@%h"
    )
    log = workdir / f"{tag}{repeat}.log"
    spawned = time.time()
    proc = start_worker(argv, env, log)
    try:

        def probe() -> tuple[bool, bool]:
            start, done = r.mget(f"{key}:start", f"{key}:done")
            return start is not None, done is not None and int(done) >= n

        before, after = wait_for(
            probe,
            proc=proc,
            timeout_s=args.timeout,
            interval_s=0.02,
            log=log,
            describe=lambda: f"done={r.get(f'{key}:done')!r}",
        )
    finally:
        stop_worker(proc)
    start, end, done = (r.get(f"{key}:{k}") for k in ("start", "end", "done"))
    assert start is not None and end is not None and done is not None
    first, last = float(start), float(end)
    return Run(
        system,
        repeat,
        n,
        enqueue_s,
        last - first,
        first - spawned,
        last - spawned,
        cpu_per_message(before, after, n),
        {"executed": int(done)},
    )


# -- agentpost -----------------------------------------------------------------------


def run_agentpost(
    args: argparse.Namespace,
    token: str,
    repeat: int,
    workdir: Path,
    db_url: str,
    system: str = "agentpost",
    variant: tuple[str, ...] = (),
) -> Run:
    import storage  # noqa: PLC0415
    from bench.variant_worker import apply_variant  # noqa: PLC0415
    from messaging.client import Client  # noqa: PLC0415
    from wire.app import create_app  # noqa: PLC0415
    from wire.queues import inbox_name  # noqa: PLC0415
    from wire.settings import Settings  # noqa: PLC0415

    n = args.messages
    tag = system.replace("+", "-").replace(",", "-")
    namespace = f"b{token}-{tag.replace('agentpost', 'ap')}{repeat}."  # <= 32 characters
    home = workdir / f"{tag}{repeat}"
    agentpost_env = {
        "AGENTPOST_BROKER_URL": args.redis_url,
        "AGENTPOST_DATABASE_URL": db_url,
        "AGENTPOST_NAMESPACE": namespace,
        "AGENTPOST_HOME": str(home),
        "BENCH_AGENTPOST_VARIANT": ",".join(variant),
    }
    settings = Settings(
        broker_url=args.redis_url,
        database_url=db_url,
        namespace=namespace,
        home=home,
    )
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)
    with engine.begin() as conn:  # fresh state for every repeat
        conn.execute(
            text(
                "TRUNCATE agentpost_messages, agentpost_attempts, agentpost_agents RESTART IDENTITY"
            )
        )
    # The worker registers its agents when it is ready; the client refuses unknown
    # receivers, so register the inbox here, as that worker would.
    storage.register_agents(
        engine, [("noop", inbox_name("noop", settings))], kind="handler", now=time.time()
    )

    # The Celery app is built outside the timed loop (as a long-lived client has it).
    client = Client(settings, app=apply_variant(create_app(settings), variant))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            client.send("noop", {"i": i}, sender="bench")
        client.flush()  # timed until every task is on the broker, as send_task's are
        enqueue_s = time.perf_counter() - t0
    finally:
        client.close()
    with engine.connect() as conn:
        queued = conn.execute(
            text("SELECT count(*) FROM agentpost_messages WHERE status = 'queued'")
        ).scalar_one()
    if queued != n:
        raise RuntimeError(f"agentpost: {queued} queued messages, expected {n}")

    argv = [
        sys.executable,
        "-m",
        "bench.variant_worker" if variant else "messaging.cli",
        "worker",
        "bench.agents",
        "--agents",
        "noop",
        "-c",
        str(args.concurrency),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"bench-{token}-{tag}{repeat}@%h",
    ]
    log = workdir / f"{tag}{repeat}.log"
    spawned = time.time()
    proc = start_worker(argv, child_env(agentpost_env), log)
    counts = text(
        "SELECT count(*) FILTER (WHERE status <> 'queued'), "
        "count(*) FILTER (WHERE status = 'delivered') FROM agentpost_messages"
    )
    try:

        def probe() -> tuple[bool, bool]:
            with engine.connect() as conn:
                taken, delivered = conn.execute(counts).one()
            return taken > 0, delivered >= n

        def describe() -> str:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT status, count(*) FROM agentpost_messages GROUP BY status")
                ).all()
            return "messages by status: " + ", ".join(f"{s} {c}" for s, c in rows)

        before, after = wait_for(
            probe, proc=proc, timeout_s=args.timeout, interval_s=0.05, log=log, describe=describe
        )
    finally:
        stop_worker(proc)
    with engine.connect() as conn:
        first, last, attempts, delivered = conn.execute(
            text(
                "SELECT min(started_at), max(ended_at), count(*), "
                "count(*) FILTER (WHERE outcome = 'delivered') FROM agentpost_attempts"
            )
        ).one()
    return Run(
        system,
        repeat,
        n,
        enqueue_s,
        last - first,
        first - spawned,
        last - spawned,
        cpu_per_message(before, after, n),
        {"attempts": attempts, "delivered_attempts": delivered},
    )


# -- Redis cleanup -------------------------------------------------------------------


def clean_redis(url: str, token: str) -> int:
    """Delete this run's keys and this run's members of shared kombu binding sets."""
    r = redis.Redis.from_url(url)
    removed = 0
    for key in list(r.scan_iter(match="*", count=1000)):
        name = key.decode("utf-8", "replace")
        if token in name:
            removed += r.delete(key)
        elif name.startswith("_kombu.binding") and r.type(key) == b"set":
            ours = [m for m in r.smembers(key) if token.encode() in m]
            if ours:
                removed += r.srem(key, *ours)
    # kombu's deadline index of binding tables: drop entries whose table is gone
    # (e.g. celery.pidbox once this run's workers' members are removed).
    deadlines = "_kombu.binding_deadlines"
    if r.type(deadlines) == b"zset":
        for member in r.zrange(deadlines, 0, -1):
            if not r.exists(b"_kombu.binding." + member):
                removed += r.zrem(deadlines, member)
    return removed


# -- report --------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


LABELS = {
    "raw": "raw Celery no-op (send_task)",
    "agentpost": "agentpost no-op (Client.send)",
}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    return [
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(r) for r in rows),
    ]


def report(runs: list[Run], args: argparse.Namespace) -> str:
    systems = list(dict.fromkeys(r.system for r in runs))
    by_system = {name: [r for r in runs if r.system == name] for name in systems}

    def med(name: str, attr: str) -> float:
        return median([getattr(r, attr) for r in by_system[name]])

    def cpu(name: str, part: str) -> str:
        return f"{median([r.cpu_ms[part] for r in by_system[name]]):.2f}"

    header = [
        "system",
        "drain msg/s",
        "drain s",
        "enqueue msg/s",
        "worker startup s",
        "CPU ms/msg: worker",
        "(main proc)",
        "PostgreSQL",
        "Redis",
        "bench",
        "other",
    ]
    parts = ("worker", "worker_main", "postgres", "redis", "bench", "other")
    rows = [
        [
            LABELS.get(name, name),
            f"{med(name, 'drain_rate'):.0f}",
            f"{med(name, 'drain_s'):.2f}",
            f"{med(name, 'enqueue_rate'):.0f}",
            f"{med(name, 'startup_s'):.2f}",
            *(cpu(name, part) for part in parts),
        ]
        for name in systems
    ]
    lines = [
        f"N={args.messages} messages, concurrency={args.concurrency} (prefork), "
        f"repeats={args.repeats}: medians",
        "",
        *table(header, rows),
        "",
        "CPU ms/msg: CPU time spent during the drain (first task start to all done) by the",
        "worker process tree (of which its main process: consumer, acks, task events),",
        "PostgreSQL, Redis, this script (polling) and everything else on the machine",
        "('other': noise from other jobs), divided by N; /proc tick resolution is 10 ms.",
        "",
    ]
    if "raw" in by_system and "agentpost" in by_system:
        lines += [
            "drain ratio agentpost/raw:   "
            f"{med('agentpost', 'drain_rate') / med('raw', 'drain_rate'):.3f}",
            "enqueue ratio agentpost/raw: "
            f"{med('agentpost', 'enqueue_rate') / med('raw', 'enqueue_rate'):.3f}",
            "",
        ]
    lines.append("per repeat:")
    for r in runs:
        lines.append(
            f"  {r.system:<12} #{r.repeat}: drain {r.drain_rate:6.0f}/s "
            f"({r.drain_s:5.2f}s)  enqueue {r.enqueue_rate:6.0f}/s  "
            f"startup {r.startup_s:.2f}s  other CPU {r.cpu_ms['other']:.2f} ms/msg  {r.extra}"
        )
    return "\n".join(lines)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--redis-url`` and ``--pg-admin-url``, defaulting from ``BENCH_*`` variables."""
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN),
        help="a database to connect to for CREATE/DROP DATABASE",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument("--repeats", "-r", type=int, default=3)
    parser.add_argument("--concurrency", "-c", type=int, default=2)
    add_server_args(parser)
    parser.add_argument("--timeout", type=float, default=120.0, help="per drain, seconds")
    parser.add_argument(
        "--raw-variant",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="also run the raw app with some of agentpost's Celery settings, e.g. "
        "'events', 'priority', 'time_limit' or 'agentpost' (all); repeatable",
    )
    parser.add_argument(
        "--agentpost-variant",
        action="append",
        default=[],
        metavar="VARIANT",
        help="also run agentpost with a Celery setting changed (bench/variant_worker.py), "
        "e.g. 'no-events'; repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs")
    args = parser.parse_args(argv)

    # Only the settings this script passes explicitly may reach agentpost.
    for key in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[key]

    from bench.rawapp import parse_config  # noqa: PLC0415
    from bench.variant_worker import parse_variant  # noqa: PLC0415

    # (name, kind, raw app settings or agentpost variant), interleaved in every repeat.
    systems: list[tuple[str, str, Any]] = [("raw", "raw", frozenset())]
    for value in args.raw_variant:
        config = parse_config(value)
        systems.append(("raw+" + ",".join(sorted(config)), "raw", config))
    systems.append(("agentpost", "agentpost", ()))
    for value in args.agentpost_variant:
        names = parse_variant(value)
        systems.append(("agentpost+" + ",".join(names), "agentpost", names))

    token = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentpost-bench-{token}-"))
    db_name = f"agentpost_bench_{token}"
    print(
        f"run {token}: redis {args.redis_url}, database {db_name}, logs {workdir}", file=sys.stderr
    )
    runs: list[Run] = []
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f}: other jobs will skew the figures",
            file=sys.stderr,
        )
    started = time.monotonic()
    failed = True
    try:
        with fresh_database(args.pg_admin_url, db_name) as db_url:
            for repeat in range(args.repeats):
                for system, kind, config in systems:
                    if kind == "agentpost":
                        run = run_agentpost(args, token, repeat, workdir, db_url, system, config)
                    else:
                        run = run_raw(args, token, repeat, workdir, system, config)
                    runs.append(run)
                    print(
                        f"  {system:<12} #{repeat}: drain {run.drain_rate:7.0f}/s, "
                        f"enqueue {run.enqueue_rate:7.0f}/s, {run.extra}",
                        file=sys.stderr,
                    )
        failed = False
    finally:
        removed = clean_redis(args.redis_url, token)
        print(f"cleanup: dropped {db_name}, removed {removed} redis keys/members", file=sys.stderr)
        if failed:
            print(f"worker logs kept in {workdir}", file=sys.stderr)
        elif not args.keep_logs:
            for log in workdir.rglob("*"):
                if log.is_file():
                    log.unlink()
            for folder in sorted(workdir.rglob("*"), reverse=True):
                folder.rmdir()
            workdir.rmdir()
    print(report(runs, args))
    print(
        f"\nwall time {time.monotonic() - started:.0f}s; load average before "
        f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {**asdict(r), "enqueue_rate": r.enqueue_rate, "drain_rate": r.drain_rate}
                    for r in runs
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
