"""One boundary for errors: what the store and the broker raise becomes agentpost's own.

Each underlying error kind is raised inside the boundary and must come out as ours,
with the original as ``__cause__``; then the real paths (a store that is not a
database, a broker that does not answer) on the client and the mailbox alike.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import amqp.exceptions
import kombu.exceptions
import pytest
import redis.exceptions
from sqlalchemy.exc import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

import storage
from messaging import (
    BrokerUnavailable,
    Client,
    ConfigurationError,
    SchemaOutdated,
    Settings,
    StoreUnavailable,
)
from tests.conftest import AGENTPOST, free_port, new_row
from wire import broker_errors, inbox_name, store_errors

DATABASE = "postgresql+psycopg://agentpost:s3cret@db.example:5432/agentpost"
AMQP = "amqp://agentpost:s3cret@mq.example:5672//"
REDIS = "redis://agentpost:s3cret@mq.example:6379/0"

STORE_ERRORS: list[BaseException] = [
    OperationalError("SELECT 1", {}, Exception("connection refused")),
    InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    DatabaseError("SELECT 1", {}, Exception("file is not a database")),
    ProgrammingError("SELECT 1", {}, Exception("relation does not exist")),
    PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
]
BROKER_ERRORS: list[tuple[str, BaseException]] = [
    (AMQP, kombu.exceptions.OperationalError("Error 111 connecting to mq.example. Refused.")),
    (AMQP, kombu.exceptions.ConnectionLimitExceeded("too many connections")),
    (AMQP, amqp.exceptions.ConnectionForced("(0, 0): (320) CONNECTION_FORCED")),
    (AMQP, amqp.exceptions.AccessRefused("(0, 0): (403) ACCESS_REFUSED")),
    (AMQP, ConnectionRefusedError(111, "Connection refused")),
    (REDIS, redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")),
    (REDIS, redis.exceptions.TimeoutError("Timeout reading from socket")),
    (REDIS, redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")),
    (REDIS, TimeoutError("timed out")),  # socket.timeout
]


@pytest.mark.parametrize("error", STORE_ERRORS, ids=lambda e: type(e).__name__)
def test_store_errors_become_store_unavailable(error: BaseException) -> None:
    with pytest.raises(StoreUnavailable) as info, store_errors(DATABASE):
        raise error
    assert info.value.__cause__ is error
    assert type(error).__name__ in str(info.value)
    assert "s3cret" not in str(info.value) and "db.example" in str(info.value)


def test_a_store_behind_becomes_schema_outdated() -> None:
    behind = storage.SchemaBehind("0001", "0002")
    with pytest.raises(SchemaOutdated, match="db upgrade") as info, store_errors(DATABASE):
        raise behind
    assert info.value.__cause__ is behind


def test_a_constraint_passes_through_for_the_caller_to_interpret() -> None:
    conflict = IntegrityError("INSERT", {}, Exception("duplicate key"))
    with pytest.raises(IntegrityError), store_errors(DATABASE):
        raise conflict


@pytest.mark.parametrize(
    ("url", "error"), BROKER_ERRORS, ids=lambda v: v[:4] if isinstance(v, str) else type(v).__name__
)
def test_broker_errors_become_broker_unavailable(url: str, error: BaseException) -> None:
    with pytest.raises(BrokerUnavailable) as info, broker_errors(url):
        raise error
    assert info.value.__cause__ is error
    assert type(error).__name__ in str(info.value)
    assert "s3cret" not in str(info.value) and "mq.example" in str(info.value)


def test_other_errors_are_not_taken_for_an_outage() -> None:
    with pytest.raises(KeyError), broker_errors(REDIS), store_errors(DATABASE):
        raise KeyError("a bug is a bug")


def _ruin(database: Path) -> None:
    """What a broken store looks like to SQLite: a file that is not a database."""
    for leftover in database.parent.glob(database.name + "-*"):
        leftover.unlink()
    database.write_bytes(b"this is not a database" * 100)


def test_a_broken_store_is_store_unavailable_on_the_client_and_the_mailbox(
    tmp_path: Path,
) -> None:
    # Given a client and a mailbox agent on the embedded default
    settings = Settings(home=tmp_path)
    client = Client(settings)
    client.register("inbox")
    box = client.mailbox("inbox")
    sent = client.send("inbox", {"n": 1}, sender="t")
    message = box.receive()
    assert message is not None
    # When the store turns into something that is not a database
    _ruin(tmp_path / "store.db")
    # Then every door says so in our words, with SQLAlchemy's error as the cause
    calls = {
        "send": lambda: client.send("inbox", 2, sender="t"),
        "status": lambda: client.status(sent.message_id),
        "receive": lambda: box.receive(),
        "peek": lambda: box.peek(),
        "ack": lambda: message.ack(),
        "nack": lambda: message.nack("no"),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, DatabaseError), name
    client.close()


def test_a_best_effort_send_to_a_broker_that_does_not_answer_is_broker_unavailable(
    tmp_path: Path,
) -> None:
    # Given a Redis broker URL where nothing listens (the store is fine)
    settings = Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    client = Client(settings)
    storage.register_agents(
        client.engine, [("echo", inbox_name("echo", settings))], kind="handler", now=time.time()
    )
    # When a best-effort message (which has no row to fall back on) is sent
    with pytest.raises(BrokerUnavailable, match="did not answer") as info:
        client.send("echo", 1, sender="t", delivery="best-effort")
    assert isinstance(info.value.__cause__, kombu.exceptions.OperationalError)
    # An at-least-once one is accepted all the same: stored, published by the sweeper later
    assert client.send("echo", 2, sender="t").status == "queued"
    client.close()


def test_a_store_error_names_the_database_s_cause_never_the_statement() -> None:
    error = OperationalError(
        "INSERT INTO agentpost_messages VALUES (%(payload)s)",
        {"payload": "secret payload"},
        Exception('connection to server failed: FATAL:  database "nope" does not exist\nDETAIL'),
    )
    with pytest.raises(StoreUnavailable) as info, store_errors(DATABASE):
        raise error
    said = str(info.value)
    assert 'OperationalError: connection to server failed: FATAL:  database "nope"' in said
    assert "secret payload" not in said and "INSERT" not in said and "DETAIL" not in said


def test_a_missing_database_and_an_unwritable_home_are_one_line_naming_them() -> None:
    runs = {
        "a missing database": {
            "AGENTPOST_DATABASE_URL": "sqlite:////proc/agentpost-nope/store.db",
            "needle": "cannot be opened (No such file or directory: /proc/agentpost-nope)",
        },
        "an unwritable home": {
            "AGENTPOST_HOME": "/proc/agentpost-nope",
            "needle": "/proc/agentpost-nope",
        },
    }
    if database := os.environ.get("AGENTPOST_TEST_DATABASE_URL"):
        runs["a PostgreSQL database that does not exist"] = {
            "AGENTPOST_DATABASE_URL": database.rsplit("/", 1)[0] + "/agentpost_never_created",
            "needle": 'database "agentpost_never_created" does not exist',
        }
    for what, run in runs.items():
        needle = run.pop("needle")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPOST_")}
        done = subprocess.run(
            [*AGENTPOST, "send", "echo", "{}"],  # a command that would create the store
            env={**env, **run},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3, (what, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, (what, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (what, done.stderr)


@pytest.mark.parametrize(
    "broker", ["redis://127.0.0.1:{port}/0", "amqp://guest:guest@127.0.0.1:{port}//"]
)
def test_a_send_with_the_broker_down_is_accepted_with_one_warning_naming_it(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker address nothing listens on
    port = free_port()
    url = broker.format(port=port)
    client = Client(Settings(home=tmp_path, broker_url=url))
    storage.register_agents(
        client.engine, [("echo", inbox_name("echo", client.settings))], kind="handler", now=0
    )
    # When a message is sent, and the client closed (which waits for the publish)
    with caplog.at_level("WARNING", logger="agentpost.client"):
        sent = client.send("echo", 1, sender="t")
        client.close()
    # Then it is accepted, stored for the sweeper, and one warning names the broker
    assert sent.status == "queued"
    assert client.status(sent.message_id).status == "queued"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "not published" in warnings[0] and f"127.0.0.1:{port}" in warnings[0], warnings
    assert "the sweeper will republish" in warnings[0] and "guest:guest" not in warnings[0]


def test_the_embedded_store_and_broker_are_the_owner_s_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = Client(Settings(home=home))
    storage.register_agents(
        client.engine, [("echo", inbox_name("echo", client.settings))], kind="handler", now=0
    )
    client.send("echo", 1, sender="t")
    client.close()
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "store.db").stat().st_mode & 0o777 == 0o600
    folders = [p for p in home.rglob("*") if p.is_dir()]
    assert folders and all(p.stat().st_mode & 0o077 == 0 for p in folders), [
        (p, oct(p.stat().st_mode)) for p in folders
    ]


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"gateway_secret": "short"}, "at least 16 characters"),
        (
            {"gateway_auth": ["jwt"], "jwt_key": "k" * 40, "jwt_algorithms": ["RS256", "HS256"]},
            "mixes HMAC and public-key",
        ),
        (
            {"gateway_auth": ["jwt"], "jwt_key": "1", "jwt_algorithms": ["HS256"]},
            "at least 32 bytes",
        ),
    ],
)
def test_weak_gateway_secrets_are_refused_at_start(
    settings: dict[str, object], refusal: str, tmp_path: Path
) -> None:
    from messaging.gateway.auth import check_gateway_settings  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match=refusal):
        check_gateway_settings(Settings(home=tmp_path, **settings))


def test_a_jwt_living_longer_than_the_maximum_is_refused(tmp_path: Path) -> None:
    import jwt  # noqa: PLC0415

    from messaging.gateway.auth import Authenticator, AuthFailed  # noqa: PLC0415

    key = "k" * 40
    settings = Settings(home=tmp_path, gateway_auth=["jwt"], jwt_key=key, jwt_algorithms=["HS256"])
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)  # (the gateway makes it when it starts)
    auth = Authenticator(settings, engine)
    now = int(time.time())

    def bearer(**claims: object) -> dict[str, str]:
        token = jwt.encode({"sub": "caller", **claims}, key, algorithm="HS256")
        return {"authorization": f"Bearer {token}"}

    assert auth.authenticate(bearer(iat=now, exp=now + 3600)).subject == "caller"
    for claims in ({"iat": now, "exp": now + 3601}, {"exp": now + 86400}):
        with pytest.raises(AuthFailed, match="lives longer than AGENTPOST_JWT_MAX_LIFETIME_S"):
            auth.authenticate(bearer(**claims))


def test_a_rate_bucket_take_with_an_older_clock_refills_nothing_and_drains_nothing(
    tmp_path: Path,
) -> None:
    engine = storage.engine_for(f"sqlite:///{tmp_path / 'store.db'}")
    storage.create_schema(engine)

    def take(now: float) -> float:
        return storage.take_token(engine, "caller", rate_per_s=1000, burst=3, now=now)

    # Three callers read their clocks, then reached the row out of order
    assert [take(100.0), take(99.95), take(99.9)] == [0.0, 0.0, 0.0]
    # The bucket holds 0 now: empty, not -100 (which 50 ms of negative refill would make)
    assert take(99.9) > 0
    assert take(100.002) == 0.0  # 2 ms later at 1000/s: refilled


def test_unhand_for_a_receiver_leaves_other_agents_rows_alone(tmp_path: Path) -> None:
    engine = storage.engine_for(f"sqlite:///{tmp_path / 'store.db'}")
    storage.create_schema(engine)
    [row] = storage.insert_messages(engine, [new_row()])  # a message to agent "b"
    storage.mark_handed(engine, [row.message_id], now=100.0)
    # A task naming another agent (forged) clears nothing; one naming "b" clears the mark
    storage.unhand(engine, [row.message_id], receiver="writer")
    assert storage.get_message(engine, row.message_id).handed_at == 100.0
    storage.unhand(engine, [row.message_id], receiver="b")
    assert storage.get_message(engine, row.message_id).handed_at is None
