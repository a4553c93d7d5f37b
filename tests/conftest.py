"""Backends, isolation and real worker processes for the behaviour suite.

Every test that takes ``backend`` runs three times: on the embedded default
(filesystem broker + SQLite in a temporary folder), on Redis + PostgreSQL and on
RabbitMQ + PostgreSQL. A server's URL comes from ``AGENTPOST_TEST_REDIS_URL``,
``AGENTPOST_TEST_AMQP_URL`` and ``AGENTPOST_TEST_DATABASE_URL``; without it those
variants skip, with it a server that does not answer fails the test.

Isolation: each test gets its own PostgreSQL database (or SQLite file), its own
queue namespace on the broker, and its own spool folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

import storage
from messaging import Client, Envelope, Settings
from wire import create_app, dead_letter_queue, publish_delivery

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("embedded", "redis", "amqp")
# The console script the README tells users to run (installed by `pip install -e .`).
_SCRIPT = Path(sys.executable).with_name("agentpost")
AGENTPOST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "messaging.cli"]

# Short timings so recovery paths take seconds (the paths are the real ones).
FAST = {
    "AGENTPOST_LEASE_S": "4",
    "AGENTPOST_SWEEP_INTERVAL_S": "1",
    "AGENTPOST_REDELIVER_AFTER_S": "2",
    "AGENTPOST_BACKOFF_S": "0.05",
    "AGENTPOST_BACKOFF_MAX_S": "0.2",
}


@dataclass
class Backend:
    """One test's world: its settings as environment variables, and its spool."""

    name: str
    env: dict[str, str]
    spool: Path
    workers: list[Worker] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def client(self) -> Client:
        client = Client(self.settings)
        self.clients.append(client)
        return client

    def runs(self, agent: str, event: str | None = None) -> list[dict[str, Any]]:
        log = self.spool / f"{agent}.log"
        if not log.exists():
            return []
        lines = [json.loads(line) for line in log.read_text().splitlines() if line]
        return [r for r in lines if event is None or r["event"] == event]


@dataclass
class Worker:
    """A real ``agentpost worker`` process (its own process group, so SIGKILL takes all)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Warm shutdown through the main process, as an operator would do it.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.kill()


def _required(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"{var} is not set")
    return value


def _redis_url() -> str:
    """The test Redis; under pytest-xdist each worker process gets a db of its own, so
    a test that wipes its broker (FLUSHDB) wipes no other test's queues."""
    url = _required("AGENTPOST_TEST_REDIS_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    base, _, db = url.rpartition("/")
    if worker.startswith("gw") and db.isdigit():
        return f"{base}/{int(db) + 1 + int(worker[2:])}"
    return url


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin_url = make_url(_required("AGENTPOST_TEST_DATABASE_URL"))
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"agentpost_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        storage.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    """An engine on a fresh PostgreSQL database with the store's schema."""
    engine = storage.engine_for(pg_database)
    storage.create_schema(engine)
    yield engine
    storage.dispose_engines()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The world of one test on one backend, with every worker stopped at the end."""
    name: str = request.param
    namespace = f"t{uuid.uuid4().hex[:8]}."
    env = {**FAST, "AGENTPOST_HOME": str(tmp_path / "home"), "AGENTPOST_NAMESPACE": namespace}
    if name == "redis":
        env["AGENTPOST_BROKER_URL"] = _redis_url()
        env["AGENTPOST_DATABASE_URL"] = request.getfixturevalue("pg_database")
    elif name == "amqp":
        env["AGENTPOST_BROKER_URL"] = _required("AGENTPOST_TEST_AMQP_URL")
        env["AGENTPOST_DATABASE_URL"] = request.getfixturevalue("pg_database")
    spool = tmp_path / "spool"
    spool.mkdir()
    env["AGENTPOST_TEST_SPOOL"] = str(spool)
    world = Backend(name, env, spool)
    try:
        yield world
    finally:
        # A client's background publishes and handed marks end before the store goes
        # (a connection a thread still held at dispose would be left open).
        for client in world.clients:
            with contextlib.suppress(Exception):
                client.close()
        # All asked to stop at once (each warm shutdown takes seconds), then waited for;
        # one that fails to stop must not leave the others running past the test.
        for worker in world.workers:
            with contextlib.suppress(Exception):
                if worker.proc.poll() is None:
                    worker.proc.send_signal(signal.SIGTERM)
        for worker in world.workers:
            with contextlib.suppress(Exception):
                try:
                    worker.proc.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    worker.kill()
        for worker in world.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)  # pool children too
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            # The workers' own account, shown with the failure (captured teardown output).
            for worker in world.workers:
                print(f"--- {worker.log.name} (last 15,000 characters) ---")
                print(worker.log.read_text(errors="replace")[-15000:])
        _clean_broker(world)
        storage.dispose_engines()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def _clean_broker(world: Backend) -> None:
    """Delete this test's queues (RabbitMQ keeps durable queues otherwise)."""
    if world.name != "amqp":
        return
    settings = world.settings
    with Connection(settings.broker) as conn:
        channel = conn.default_channel
        for queue in (
            "agent.echo",
            "agent.flaky",
            "agent.doomed",
            "agent.rejecter",
            "agent.gate",
            "agent.slow",
            "agent.parent",
            "agentpost.sweeper",
            "agentpost.dead_letter",
            "agentpost.default",
        ):
            try:
                channel.queue_delete(f"{settings.namespace}{queue}")
            except Exception:
                channel = conn.channel()


@pytest.fixture
def start_worker(backend: Backend) -> Callable[..., Worker]:
    """Start a real worker serving ``tests.agents``; wait until it registered its agents."""

    def start(*extra: str, argv: list[str] | None = None, wait: bool = True) -> Worker:
        log = backend.spool.parent / f"worker-{len(backend.workers)}.log"
        cmd = argv or [
            *AGENTPOST,
            "worker",
            "tests.agents",
            "--beat",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            *extra,
        ]
        started = time.time()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, **backend.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log)
        backend.workers.append(worker)
        if wait:
            engine = storage.engine_for(backend.settings.database)

            def registered() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                try:
                    return any(a.last_seen_at >= started for a in storage.list_agents(engine))
                except Exception:
                    return False

            wait_for(registered, 60, "the worker to register its agents")
        return worker

    return start


def publish_future_envelope(app: Any, receiver: str) -> str:
    """Store and publish, as a newer producer would, an envelope of schema 2.0; its id."""
    wire = Envelope.build(receiver, {"x": 1}, sender="future").wire()
    wire["schema_version"] = "2.0"
    storage.insert_messages(
        storage.engine_for(app.settings.database),
        [
            storage.NewMessage(
                id=wire["id"],
                idempotency_key=wire["id"],
                correlation_id=wire["id"],
                parent_id=None,
                sender="future",
                receiver=receiver,
                priority=5,
                envelope=json.dumps(wire),
                created_at=time.time(),
                expires_at=None,
            )
        ],
    )
    publish_delivery(app, message_id=wire["id"], receiver=receiver, priority=5, envelope=wire)
    return str(wire["id"])


def lose_queued_messages(backend: Backend) -> None:
    """What a broker crash does to messages waiting in it."""
    settings = backend.settings
    if backend.name == "redis":
        # Everything in this deployment's db (under xdist each worker has its own db).
        redis.Redis.from_url(settings.broker).flushdb()
    elif backend.name == "amqp":
        with Connection(settings.broker) as conn:
            conn.default_channel.queue_purge(f"{settings.namespace}agent.echo")
    else:
        for path in (settings.home / "broker" / "queue").iterdir():
            path.unlink()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, status: int, **request: Any) -> Callable[[], bool]:
    """A readiness probe: ``url`` answers with ``status`` (for ``serving``)."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=2, **request).status_code == status
        except httpx.HTTPError:
            return False

    return probe


@contextlib.contextmanager
def serving(
    backend: Backend, argv: list[str], up: Callable[[], bool], *, env: dict[str, str] | None = None
) -> Iterator[Path]:
    """Run an ``agentpost`` server command until the block ends; yields its log file."""
    log = backend.spool.parent / f"{argv[0]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*AGENTPOST, *argv],
            cwd=ROOT,
            env={**os.environ, **backend.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{argv[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        return up()

    try:
        wait_for(ready, 60, f"agentpost {argv[0]} to answer")
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


JWT_SECRET = "jwt-test-secret-that-is-long-enough-for-hs256"
GATEWAY_ENV = {
    "AGENTPOST_GATEWAY_SECRET": "gateway-test-secret",
    "AGENTPOST_GATEWAY_AUTH": "api_key,jwt",
    "AGENTPOST_JWT_KEY": JWT_SECRET,
    "AGENTPOST_JWT_ALGORITHMS": "HS256",
    "AGENTPOST_JWT_ISSUER": "agentpost-tests",
    "AGENTPOST_JWT_AUDIENCE": "agentpost",
    "AGENTPOST_RATE_LIMIT_PER_S": "1000",
    "AGENTPOST_RATE_LIMIT_BURST": "1000",
    # The auth matrix fails authentication on purpose, many times from one address
    "AGENTPOST_AUTH_FAILURES_PER_S": "1000",
    "AGENTPOST_AUTH_FAILURES_BURST": "1000",
}


@dataclass
class Gateway:
    """A running ``agentpost serve`` and a key allowed to use ``echo`` and ``doomed``."""

    url: str
    api_key: str
    log: Path


def agentpost_cli(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one ``agentpost`` command the way an operator would."""
    return subprocess.run(
        [*AGENTPOST, *args],
        cwd=ROOT,
        env={**os.environ, **backend.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def create_key(backend: Backend, subject: str, agents: str, ops: str) -> tuple[str, str]:
    """``agentpost keys create``: (key id, key)."""
    done = agentpost_cli(
        backend, "keys", "create", subject, "--agents", agents, "--ops", ops, "--json"
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    return created["id"], created["key"]


@pytest.fixture
def start_gateway(backend: Backend) -> Iterator[Callable[..., Gateway]]:
    """Start ``agentpost serve`` (API keys + JWT) with extra settings; stopped at the end."""
    stack = contextlib.ExitStack()

    def start(**env: str) -> Gateway:
        backend.env.update(GATEWAY_ENV)
        backend.env.update(env)
        _, key = create_key(backend, "caller", "echo,doomed,slow", "invoke,send,read,redrive")
        url = f"http://127.0.0.1:{(port := free_port())}"

        up = answers(f"{url}/healthz", 401)
        log = stack.enter_context(serving(backend, ["serve", "--port", str(port)], up))
        return Gateway(url, key, log)

    with stack:
        yield start


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway], start_worker: Callable[..., Worker]) -> Gateway:
    """A gateway in front of a worker serving ``echo``, ``doomed`` and ``slow``."""
    start_worker("--agents", "echo,doomed,slow")
    return start_gateway()


def new_row(key: str | None = None) -> storage.NewMessage:
    """A message row to insert straight into the store (its own id as key by default)."""
    message_id = str(uuid.uuid4())
    return storage.NewMessage(
        id=message_id,
        idempotency_key=key or message_id,
        correlation_id=message_id,
        parent_id=None,
        sender="a",
        receiver="b",
        priority=5,
        envelope="{}",
        created_at=time.time(),
        expires_at=None,
    )


def stored_row(engine: Engine, key: str | None = None) -> str:
    """Insert ``new_row(key)``; the id that holds the key."""
    [inserted] = storage.insert_messages(engine, [new_row(key)])
    return inserted.message_id


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_final(client: Client, message_id: str, timeout_s: float = 60) -> Any:
    """The message's state once it is delivered or dead."""
    last: list[Any] = []

    def final() -> Any:
        state = client.status(message_id)
        last[:] = [state]
        return state.status in ("delivered", "dead") and state

    try:
        return wait_for(final, timeout_s, f"message {message_id} to be delivered or dead")
    except pytest.fail.Exception:
        # Say where it stopped: the row as the store has it (the worker logs follow).
        print(f"last state of {message_id}: {last[0] if last else 'never read'}")
        raise


def dead_letters_on_broker(backend: Backend) -> list[dict[str, Any]]:
    """Take every message waiting in the dead-letter queue (their payloads)."""
    settings = backend.settings
    app = create_app(settings)
    found = []
    with Connection(settings.broker, transport_options=app.conf.broker_transport_options) as conn:
        queue = conn.SimpleQueue(dead_letter_queue(settings))
        try:
            while True:
                try:
                    message = queue.get(timeout=0.5)
                except queue.Empty:
                    break
                found.append(message.payload)
                message.ack()
        finally:
            queue.close()
    return found
