"""The fault run at scale: N messages through workers that keep dying, on servers that crash.

It starts its own Redis and PostgreSQL on private ports and temporary folders (it kills
them, so it never touches a shared server), then runs the same workload twice:

1. **without faults**: N messages, half exactly-once, from two sender processes (one
   ``Client.send`` per message, one ``send_many`` in batches of 100) into two workers
   (``-c 2``) and one beat; timed from the first send to the last delivery;
2. **with faults**, on a fresh database and an empty Redis: the same, while a worker is
   SIGKILLed every ``--kill-every`` seconds (and started again), Redis is killed and
   started empty twice and PostgreSQL is crashed (immediate stop) and started again,
   all within the time the run without faults took. The senders retry a send that
   raised with the same idempotency keys.

The sweep settings are an impatient operator's: ``AGENTPOST_LEASE_S=5
AGENTPOST_SWEEP_INTERVAL_S=1 AGENTPOST_REDELIVER_AFTER_S=5``.

At the end of each run it checks, from the store: every idempotency key is one row, every
message is delivered and none dead, every exactly-once message's effect happened exactly
once and every at-least-once message's at least once. Throughout, it samples the broker's
delivery tasks (the inbox lists) against the messages outstanding
(stored, neither delivered nor dead); the check is that at the peak the tasks are at most
twice the outstanding messages (it also prints the most tasks beyond that at any sample:
a spare copy whose message was delivered meanwhile waits in its inbox until a worker takes
it and finds the row done). It prints both runs, the time ratio
(the goal: within 2x) and exits 1 if a check failed.

Run from the repository root (about 40 s for N = 2,000 on two cores; ``tests/test_faults.py``
runs it so in CI)::

    .venv/bin/python bench/faults.py --messages 2000
    .venv/bin/python bench/faults.py --messages 10000 --json /tmp/faults.json

Needs ``redis-server`` and PostgreSQL's ``initdb``/``pg_ctl`` (``/usr/lib/postgresql/*/bin``
or on ``PATH``); as root it runs PostgreSQL as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
from sqlalchemy.pool import NullPool  # noqa: E402

AGENT = "effect"
BATCH = 100
SETTINGS = {
    "AGENTPOST_LEASE_S": "5",
    "AGENTPOST_SWEEP_INTERVAL_S": "1",
    "AGENTPOST_REDELIVER_AFTER_S": "5",
    "AGENTPOST_BACKOFF_S": "0.2",
    "AGENTPOST_BACKOFF_MAX_S": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(Exception):
            if condition():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class PrivateRedis:
    """A Redis of this run only: no persistence, so a restart starts it empty."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.folder)]
        argv += ["--logfile", str(self.folder / "redis.log")]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: bool(client.ping()), 20, "the private Redis")

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise SystemExit(f"{name} not found: install PostgreSQL's server binaries")
    return str(found[-1])


class PrivatePostgres:
    """A PostgreSQL cluster of this run only (trust auth, loopback, a private port)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.data = folder / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as postgres
            self._as = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        initdb = [_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*self._as, *initdb, "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self._as, _pg_bin("pg_ctl"), "-D", str(self.data), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        options += " -c fsync=off -c max_connections=300"
        self._ctl("-l", str(self.folder / "postgres.log"), "-w", "-o", options, "start")

    def crash(self) -> None:
        """An immediate stop: no checkpoint, the next start recovers from the WAL."""
        self._ctl("-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self._ctl("-m", "immediate", "-w", "stop")


@dataclass
class Sample:
    at: float
    tasks: int
    outstanding: int


@dataclass
class RunReport:
    faults: bool
    messages: int
    seconds: float = 0.0
    delivered: int = 0
    dead: int = 0
    other: int = 0
    rows: int = 0
    keys_with_many_rows: int = 0
    exactly_once_effects: int = 0
    exactly_once_not_once: int = 0
    at_least_once_missing: int = 0
    at_least_once_extra: int = 0
    peak_tasks: int = 0
    outstanding_at_peak: int = 0
    worst_excess: int = 0  # max over samples of tasks - 2 x outstanding (reported)
    sending_s: float = 0.0  # the slower sender's time
    samples: int = 0
    kills: int = 0
    redis_restarts: int = 0
    postgres_crashes: int = 0
    sender_retries: int = 0
    revived: int = 0  # processes that exited on their own, started again
    failures: list[str] = field(default_factory=list)
    # For reading a run afterwards (--json): what happened when, and the samples as
    # (seconds, tasks, outstanding messages).
    events: list[tuple[float, str]] = field(default_factory=list)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


class Deployment:
    """The processes of one run: a beat, two workers, and the servers under them."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.workers: list[subprocess.Popen[bytes]] = []
        self.beat: subprocess.Popen[bytes] | None = None
        self._logs = 0

    def _spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        self._logs += 1
        log = (self.folder / f"{argv[0]}-{self._logs}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "messaging.cli", *argv],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self._spawn("worker", "bench.agents", "-c", "2", "-l", "INFO")

    def start(self) -> None:
        self.beat = self._spawn("beat", "-l", "INFO")
        self.workers = [self.start_worker(), self.start_worker()]

    def kill_worker(self, index: int) -> None:
        """SIGKILL one worker's whole process group, then start a new one in its place."""
        with suppress(ProcessLookupError):
            os.killpg(self.workers[index].pid, signal.SIGKILL)
        self.workers[index].wait(timeout=10)
        self.workers[index] = self.start_worker()

    def revive(self) -> int:
        """Start again the workers (and beat) that exited on their own, as a supervisor
        would (a worker started while PostgreSQL is down exits: it cannot register)."""
        revived = 0
        for index, proc in enumerate(self.workers):
            if proc.poll() is not None:
                self.workers[index] = self.start_worker()
                revived += 1
        if self.beat is not None and self.beat.poll() is not None:
            self.beat = self._spawn("beat", "-l", "INFO")
            revived += 1
        return revived

    def stop(self) -> None:
        for proc in [*self.workers, *([self.beat] if self.beat else [])]:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def count_tasks(client: redis.Redis) -> int:
    """Delivery tasks the broker holds: its inbox lists (a worker's prefetched tasks are
    in its memory, no unacked hash in Redis: wire/brokers.py)."""
    total = 0
    for key in client.scan_iter(match="*agent.*", count=1000):
        if client.type(key) == b"list":
            total += int(client.llen(key))  # type: ignore[arg-type]
    return total


def outstanding(engine: Any) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT count(*) FROM agentpost_messages WHERE status NOT IN ('delivered', 'dead')"
            )
        ).scalar_one()
    return int(value)


def statuses(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM agentpost_messages GROUP BY status")
        ).all()
    return {str(status): int(count) for status, count in rows}


@contextmanager
def sampling(broker: str, engine: Any, samples: list[Sample]) -> Iterator[None]:
    """Sample tasks against outstanding messages every 0.2 s (skipped while a server is down)."""
    stop = threading.Event()
    client = redis.Redis.from_url(broker, socket_timeout=2)

    def run() -> None:
        while not stop.wait(0.2):
            with suppress(Exception):
                # Outstanding before and after the count: a task counted belongs to a
                # message outstanding at one of the two moments (sends and deliveries
                # go on while it counts).
                before = outstanding(engine)
                tasks = count_tasks(client)
                waiting = max(before, outstanding(engine))
                samples.append(Sample(time.monotonic(), tasks, waiting))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def faults_schedule(window_s: float, kill_every_s: float) -> list[tuple[float, str]]:
    """What happens when, within the time the run without faults took."""
    # The first Redis restart and the PostgreSQL crash fall while the senders still send.
    events = [(0.1 * window_s, "redis"), (0.2 * window_s, "postgres"), (0.6 * window_s, "redis")]
    at, index = kill_every_s / 2, 0
    while at < window_s:
        events.append((at, f"kill:{index % 2}"))
        at, index = at + kill_every_s, index + 1
    return sorted(events)


def run_once(
    n: int,
    *,
    faults: bool,
    window_s: float,
    kill_every_s: float,
    redis_server: PrivateRedis,
    postgres: PrivatePostgres,
    folder: Path,
    timeout_s: float,
) -> RunReport:
    report = RunReport(faults=faults, messages=n)
    database = f"faults_{int(time.time() * 1000)}"
    admin = create_engine(
        postgres.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    redis_server.restart_empty()
    folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
    env.update(SETTINGS)
    env.update(
        AGENTPOST_BROKER_URL=redis_server.url,
        AGENTPOST_DATABASE_URL=postgres.url(database),
        AGENTPOST_HOME=str(folder / "home"),
        PYTHONPATH=str(ROOT),
    )
    engine = create_engine(postgres.url(database), poolclass=NullPool)
    _prepare(env)
    deployment = Deployment(env, folder)
    deployment.start()
    samples: list[Sample] = []
    try:
        wait_for(lambda: _registered(engine), 90, "the workers to register their agent")
        with sampling(redis_server.url, engine, samples):
            started = time.monotonic()
            senders = [
                subprocess.Popen(
                    [sys.executable, __file__, "send", mode, str(first), str(count)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=(folder / f"sender-{mode}.log").open("wb"),
                )
                for mode, first, count in (("one", 0, n // 2), ("many", n // 2, n - n // 2))
            ]
            schedule = faults_schedule(window_s, kill_every_s) if faults else []
            done = _wait_delivered(
                engine, n, started, timeout_s, schedule, deployment, redis_server, postgres, report
            )
            report.seconds = time.monotonic() - started
            for sender in senders:
                out, _ = sender.communicate(timeout=max(5.0, timeout_s - report.seconds))
                with suppress(ValueError):
                    said = json.loads(out or b"{}")
                    report.sender_retries += int(said.get("retries", 0))
                    report.sending_s = max(report.sending_s, float(said.get("seconds", 0)))
                if sender.returncode != 0:
                    report.failures.append(f"a sender exited with {sender.returncode}")
            if not done:
                report.failures.append(f"not all delivered within {timeout_s:.0f} s")
    finally:
        deployment.stop()
    _check(engine, n, report)
    _judge_samples(samples, report, started - time.monotonic() + time.time(), folder)
    report.timeline = [(round(s.at - started, 1), s.tasks, s.outstanding) for s in samples]
    engine.dispose()
    return report


def _prepare(env: dict[str, str]) -> None:
    """The schema, and the table the agent records its effects in."""
    code = (
        "import storage; from wire.settings import Settings; from sqlalchemy import text\n"
        "e = storage.engine_for(Settings().database); storage.create_schema(e)\n"
        "with e.begin() as c: c.execute(text('CREATE TABLE fault_effects (key TEXT NOT NULL,"
        " delivery TEXT NOT NULL, message_id TEXT NOT NULL, attempt INTEGER NOT NULL)'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def _registered(engine: Any) -> bool:
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM agentpost_agents WHERE name = :n"), {"n": AGENT}
        ).scalar_one()
    return bool(count)


def _wait_delivered(
    engine: Any,
    n: int,
    started: float,
    timeout_s: float,
    schedule: list[tuple[float, str]],
    deployment: Deployment,
    redis_server: PrivateRedis,
    postgres: PrivatePostgres,
    report: RunReport,
) -> bool:
    pending, revived_at = list(schedule), 0.0
    while time.monotonic() - started < timeout_s:
        elapsed = time.monotonic() - started
        while pending and pending[0][0] <= elapsed:
            _, event = pending.pop(0)
            report.events.append((round(elapsed, 1), event))
            if event == "redis":
                redis_server.restart_empty()
                report.redis_restarts += 1
            elif event == "postgres":
                postgres.crash()
                time.sleep(1.0)  # down for a second, as a crash-restart would be
                postgres.start()
                report.postgres_crashes += 1
            else:
                deployment.kill_worker(int(event.split(":")[1]))
                report.kills += 1
        if elapsed - revived_at >= 1.0:  # a supervisor's restart delay
            revived_at = elapsed
            report.revived += deployment.revive()
        if not pending:
            with suppress(Exception):
                if statuses(engine).get("delivered", 0) >= n:
                    return True
        time.sleep(0.1)
    return False


def _check(engine: Any, n: int, report: RunReport) -> None:
    with engine.connect() as conn:
        counts = statuses(engine)
        report.delivered = counts.pop("delivered", 0)
        report.dead = counts.pop("dead", 0)
        report.other = sum(counts.values())
        report.rows = int(
            conn.execute(text("SELECT count(*) FROM agentpost_messages")).scalar_one()
        )
        report.keys_with_many_rows = int(
            conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT idempotency_key FROM agentpost_messages"
                    " GROUP BY idempotency_key HAVING count(*) > 1) many"
                )
            ).scalar_one()
        )
        effects = conn.execute(
            text("SELECT key, delivery, count(*) FROM fault_effects GROUP BY key, delivery")
        ).all()
    once = {k: c for k, d, c in effects if d == "exactly-once"}
    least = {k: c for k, d, c in effects if d == "at-least-once"}
    report.exactly_once_effects = sum(once.values())
    report.exactly_once_not_once = sum(1 for c in once.values() if c != 1) + (n // 2 - len(once))
    report.at_least_once_missing = (n - n // 2) - len(least)
    report.at_least_once_extra = sum(c - 1 for c in least.values())
    checks = {
        f"{report.rows} rows for {n} keys": report.rows == n and report.keys_with_many_rows == 0,
        f"{report.delivered} of {n} delivered": report.delivered == n,
        f"{report.dead} dead": report.dead == 0,
        f"{report.exactly_once_not_once} exactly-once effects not once": (
            report.exactly_once_not_once == 0
        ),
        f"{report.at_least_once_missing} at-least-once effects missing": (
            report.at_least_once_missing == 0
        ),
    }
    report.failures += [what for what, ok in checks.items() if not ok]


def _judge_samples(
    samples: list[Sample], report: RunReport, started_at: float, folder: Path
) -> None:
    report.samples = len(samples)
    if not samples:
        report.failures.append("no sample of the broker's tasks")
        return
    peak = max(samples, key=lambda s: s.tasks)
    report.peak_tasks, report.outstanding_at_peak = peak.tasks, peak.outstanding
    # Reported, not judged: a spare copy whose message was delivered meanwhile waits in
    # its inbox until a worker takes it, so a few tasks can outlive their messages.
    report.worst_excess = max(s.tasks - 2 * s.outstanding for s in samples)
    if peak.tasks > 2 * peak.outstanding:
        # What led there, to be read in a CI log: the samples around the peak (seconds
        # from the first send, tasks, outstanding) and what the sweepers and senders said.
        near = [s for s in samples if abs(s.at - peak.at) <= 3.0]
        timeline = " ".join(f"{s.at - peak.at:+.1f}s:{s.tasks}/{s.outstanding}" for s in near)
        report.failures.append(
            f"the broker held {peak.tasks} tasks for {peak.outstanding} outstanding message(s)"
            f" at {peak.at - samples[0].at:.1f} s; tasks/outstanding around it: {timeline}\n"
            + "\n".join(_republish_lines(folder, started_at))
        )


def _republish_lines(folder: Path, started_at: float) -> list[str]:
    """The sweepers' republish reports and the senders' dropped handed marks, in order."""
    said = ("sweeper:", "could not record", "a batch failed")
    lines = [
        line.strip()
        for log in sorted(folder.glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if any(word in line for word in said)
    ]
    start = time.strftime("%H:%M:%S", time.localtime(started_at))
    return [f"  (first send at {start})", *sorted(lines)[:60]]


def send_main(mode: str, first: int, count: int) -> int:
    """A sender process: sends its keys, retrying a failed send with the same keys."""
    from messaging import Client, Envelope  # noqa: PLC0415  (after sys.path is set)

    def envelope(i: int) -> Envelope:
        return Envelope.build(
            AGENT,
            {"i": i},
            sender="faults",
            idempotency_key=f"fault-{i}",
            delivery="exactly-once" if i % 2 == 0 else "at-least-once",
        )

    retries, started = 0, time.monotonic()

    def retry(what: object, exc: Exception) -> None:
        nonlocal retries
        retries += 1
        print(f"retrying {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        time.sleep(0.2)

    while True:  # the store may be down when the sender starts, too
        try:
            client = Client()
            break
        except Exception as exc:
            retry("the client", exc)
    with client:
        keys = list(range(first, first + count))
        step = BATCH if mode == "many" else 1
        for start in range(0, len(keys), step):
            batch = keys[start : start + step]
            while True:
                try:
                    client.send_many([envelope(i) for i in batch])
                    break
                except Exception as exc:  # any failure: the same keys again
                    retry(batch[0], exc)
    print(json.dumps({"retries": retries, "seconds": time.monotonic() - started}))
    return 0


def _line(report: RunReport) -> str:
    return (
        f"{'with faults' if report.faults else 'no faults  '}: {report.delivered:>6} of "
        f"{report.messages} delivered in {report.seconds:6.1f} s (sent in "
        f"{report.sending_s:.1f} s) · dead {report.dead} · "
        f"peak {report.peak_tasks} broker tasks ({report.outstanding_at_peak} outstanding then) · "
        f"kills {report.kills} · Redis restarts {report.redis_restarts} · "
        f"PostgreSQL crashes {report.postgres_crashes} · sender retries {report.sender_retries} · "
        f"restarted after exiting {report.revived} · "
        f"exactly-once effects {report.exactly_once_effects} · "
        f"extra at-least-once runs {report.at_least_once_extra} · "
        f"most tasks beyond 2 x outstanding {report.worst_excess}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["send"]:
        return send_main(args[1], int(args[2]), int(args[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    parser.add_argument("--json", type=Path, help="write both reports here")
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    options = parser.parse_args(args)
    folder = Path(tempfile.mkdtemp(prefix="agentpost-faults-"))
    os.chmod(folder, 0o755)
    redis_server = PrivateRedis(folder)
    (folder / "pg").mkdir()
    postgres = PrivatePostgres(folder / "pg")
    reports: list[RunReport] = []
    try:
        redis_server.start()
        postgres.start()
        common: dict[str, Any] = {
            "kill_every_s": options.kill_every,
            "redis_server": redis_server,
            "postgres": postgres,
            "timeout_s": options.timeout,
        }
        calm = run_once(
            options.messages, faults=False, window_s=0, folder=folder / "calm", **common
        )
        print(_line(calm), flush=True)
        stormy = run_once(
            options.messages,
            faults=True,
            window_s=max(calm.seconds, 3 * options.kill_every),
            folder=folder / "faults",
            **common,
        )
        print(_line(stormy), flush=True)
        reports = [calm, stormy]
    finally:
        redis_server.kill()
        postgres.stop()
        failed = len(reports) < 2 or any(r.failures for r in reports)
        if options.keep or failed:  # a failed run keeps its logs to be read
            print(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    ratio = stormy.seconds / calm.seconds if calm.seconds else float("inf")
    print(f"time with faults / without: {ratio:.2f}x (goal: within 2x)")
    failures = [
        f"{'faults' if r.faults else 'no faults'}: {f}" for r in reports for f in r.failures
    ]
    for failure in failures:
        print(f"FAILED {failure}")
    if options.json:
        options.json.write_text(
            json.dumps({"ratio": ratio, "runs": [asdict(r) for r in reports]}, indent=2)
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
