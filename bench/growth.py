"""Does the store's cost stay flat as history grows? The same figures on a store with
almost no history and on one holding ``--rows`` finished messages (1,000,000 by
default), as ratios.

Redis + PostgreSQL. Two fresh databases, filled in SQL with realistic rows (300 agents,
30 days, an envelope of about 1.2 KB, one attempt each, one in 500 dead): the small one
with ``--base-rows`` (1,000: every agent has traffic and ``dlq list`` a full page, so
that only the history differs), the other with ``--rows``; then VACUUM ANALYZE and one
sweep (which folds the counters, as any running deployment's sweeper has). The two are
measured in turn ``--rounds`` times, keeping each figure's best. Retention is
set to 40 days, a deployment that keeps its month: what is measured is the cost of
holding that history, not of deleting it. On each store:

- drain: ``--drain`` no-op messages through a ``-c 2`` prefork worker;
- send: ``Client.send`` from one process;
- mailbox receive + ack;
- a metrics scrape's store read (``storage.agent_totals``);
- ``agentpost agents``' store read (``storage.status_counts`` and the registry);
- ``dlq list`` (the newest 100 dead letters), ``trace`` of one chain;
- one sweep;
- the tables' sizes.

    PYTHONPATH=. .venv/bin/python bench/growth.py --rows 1000000   # about 10 minutes
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

import storage  # noqa: E402
from bench.throughput import (  # noqa: E402
    add_server_args,
    child_env,
    clean_redis,
    fresh_database,
    start_worker,
    stop_worker,
    wait_for,
)
from messaging.client import Client  # noqa: E402
from messaging.envelope import Envelope  # noqa: E402
from wire.app import create_app  # noqa: E402
from wire.queues import inbox_name  # noqa: E402
from wire.settings import Settings  # noqa: E402
from worker.sweeper import sweep  # noqa: E402

_FILL = """
INSERT INTO agentpost_messages (id, idempotency_key, correlation_id, parent_id, sender,
    receiver, priority, status, dead_reason, envelope, reply, error, attempts, redrives,
    created_at, updated_at, due_at, finished_at, handed_at)
SELECT md5(n::text || 'm')::uuid::text, 'k' || n, md5((n / 4)::text)::uuid::text, NULL,
    'sender-' || (n % 50), 'agent-' || (n % 300), 5,
    CASE WHEN n % 500 = 0 OR n <= 100 THEN 'dead' ELSE 'delivered' END,
    CASE WHEN n % 500 = 0 OR n <= 100 THEN 'exhausted' END,
    '{"id": "' || md5(n::text || 'm')::uuid::text || '", "payload": "' || repeat('x', 1100)
        || '"}',
    '{"words": 120}', CASE WHEN n % 500 = 0 OR n <= 100 THEN 'RuntimeError: boom' END, 1, 0,
    :start + n * :step, :start + n * :step + 1, :start + n * :step, :start + n * :step + 1,
    :start + n * :step
FROM generate_series(1, :rows) AS n
"""
_FILL_ATTEMPTS = """
INSERT INTO agentpost_attempts (message_id, receiver, message_created_at, number, redrive,
    worker, started_at, ended_at, outcome, error)
SELECT id, receiver, created_at, 1, 0, 'host:1', created_at, finished_at,
    CASE WHEN status = 'dead' THEN 'dead' ELSE 'delivered' END, error
FROM agentpost_messages WHERE receiver LIKE 'agent-%'
"""
_FILL_KEYS = """
INSERT INTO agentpost_message_keys (idempotency_key, message_id, created_at)
SELECT idempotency_key, id, created_at FROM agentpost_messages WHERE receiver LIKE 'agent-%'
"""
# The partitioned tables' sizes are their partitions'.
_SIZES = """
SELECT CAST(name AS text), CAST(coalesce(
    (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(name)),
    pg_total_relation_size(name)) AS bigint)
FROM unnest(ARRAY['agentpost_messages', 'agentpost_attempts', 'agentpost_message_keys']
            ::regclass[]) AS name
"""


def fill(db_url: str, rows: int) -> float:
    """The history: ``rows`` finished messages over 30 days, with their attempts."""
    started = time.perf_counter()
    engine = create_engine(db_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    span = 30 * 86400.0
    start = time.time() - span - 3600
    storage.ensure_partitions(storage.engine_for(db_url), start, time.time())
    with engine.connect() as conn:
        conn.execute(text(_FILL), {"rows": rows, "start": start, "step": span / max(rows, 1)})
        conn.execute(text(_FILL_ATTEMPTS))
        conn.execute(text(_FILL_KEYS))
        for table in ("agentpost_messages", "agentpost_attempts", "agentpost_message_keys"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    engine.dispose()
    return time.perf_counter() - started


def timed(call: Callable[[], Any], repeats: int = 5) -> float:
    """The median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(args: argparse.Namespace, db_url: str, home: Path, tag: str) -> dict[str, float]:
    """Every figure on one store."""
    namespace = f"g{secrets.token_hex(3)}{tag}."
    keep_s = 40 * 86400.0  # a deployment that keeps its month (the fill spans 30 days)
    settings = Settings(
        broker_url=args.redis_url,
        database_url=db_url,
        namespace=namespace,
        home=home / tag,
        retain_delivered_s=keep_s,
        retain_dead_s=keep_s,
    )
    engine = storage.engine_for(db_url)
    storage.register_agents(
        engine, [("noop", inbox_name("noop", settings))], kind="handler", now=time.time()
    )
    app = create_app(settings)
    sweep(app)  # what a running sweeper has done: the counters folded
    client = Client(settings, app=app)
    figures: dict[str, float] = {}
    # send: one process, one message at a time
    for _ in range(50):
        client.send("noop", {"warm": True}, sender="bench")
    started = time.perf_counter()
    for i in range(args.sends):
        client.send("noop", {"i": i}, sender="bench")
    client.flush()
    figures["send msg/s"] = args.sends / (time.perf_counter() - started)
    # drain: a worker takes the waiting no-op messages
    batch = [Envelope.build("noop", {"i": i}, sender="bench") for i in range(args.drain)]
    client.send_many(batch)
    client.flush()
    figures["drain msg/s"] = drain(args, settings, db_url, home / f"{tag}.log")
    # mailbox receive + ack
    client.register("box")
    box = client.mailbox("box")
    for i in range(200):
        client.send("box", {"i": i}, sender="bench")

    def receive() -> None:
        message = box.receive()
        assert message is not None
        message.ack()

    figures["mailbox receive+ack ms"] = timed(receive, 100) * 1000
    figures["metrics scrape ms"] = (
        timed(lambda: storage.agent_totals(engine, storage.LATENCY_BOUNDS_S)) * 1000
    )
    figures["agents ms"] = (
        timed(lambda: (storage.status_counts(engine), storage.list_agents(engine))) * 1000
    )
    figures["dlq list ms"] = timed(lambda: storage.dead_letters(engine, limit=100)) * 1000
    chain = storage.trace(engine, batch[0].correlation_id)
    assert chain
    figures["trace ms"] = timed(lambda: storage.trace(engine, batch[0].correlation_id)) * 1000
    figures["sweep ms"] = timed(lambda: sweep(app), 3) * 1000
    with engine.connect() as conn:
        sizes = dict(conn.execute(text(_SIZES)).all())
    figures["messages MB"] = sizes.get("agentpost_messages", 0) / 1e6
    figures["attempts MB"] = sizes.get("agentpost_attempts", 0) / 1e6
    figures["keys MB"] = sizes.get("agentpost_message_keys", 0) / 1e6
    client.close()
    return figures


def drain(args: argparse.Namespace, settings: Settings, db_url: str, log: Path) -> float:
    env = {
        "AGENTPOST_BROKER_URL": args.redis_url,
        "AGENTPOST_DATABASE_URL": db_url,
        "AGENTPOST_NAMESPACE": settings.namespace,
        "AGENTPOST_HOME": str(settings.home),
        "AGENTPOST_RETAIN_DELIVERED_S": str(settings.retain_delivered_s),
        "AGENTPOST_RETAIN_DEAD_S": str(settings.retain_dead_s),
    }
    argv = [sys.executable, "-m", "messaging.cli", "worker", "bench.agents", "--agents", "noop"]
    argv += ["-c", "2", "--loglevel", "WARNING", "--hostname", f"g-{secrets.token_hex(3)}@%h"]
    engine = storage.engine_for(db_url)
    done = text(
        "SELECT count(*), min(a.started_at), max(a.ended_at) FROM agentpost_attempts a "
        "JOIN agentpost_messages m ON m.id = a.message_id "
        "WHERE m.receiver = 'noop' AND a.outcome = 'delivered' AND a.started_at >= :since "
        # Through the attempts' ended_at index: a probe every 50 ms that read the whole
        # history would itself be the 1M store's load.
        "AND a.ended_at >= :since"
    )
    total = args.drain + args.sends + 50
    since = {"since": time.time()}  # this drain's deliveries, not an earlier round's

    def probe() -> tuple[bool, bool]:
        with engine.connect() as conn:
            count = conn.execute(done, since).one()[0]
        return count > 0, count >= total

    proc = start_worker(argv, child_env(env), log)
    try:
        wait_for(probe, proc=proc, timeout_s=300, interval_s=0.05, log=log)
    finally:
        stop_worker(proc)
    with engine.connect() as conn:
        count, first, last = conn.execute(done, since).one()
    return float(count / (last - first))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--base-rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--drain", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_server_args(parser)
    args = parser.parse_args(argv)
    token = secrets.token_hex(4)
    results: dict[str, dict[str, float]] = {}
    try:
        with (
            fresh_database(args.pg_admin_url, f"agentpost_growth0_{token}") as empty,
            fresh_database(args.pg_admin_url, f"agentpost_growth1_{token}") as full,
            tempfile.TemporaryDirectory() as home,
        ):
            for url in (empty, full):
                storage.create_schema(storage.engine_for(url))
            fill(empty, args.base_rows)
            print(f"filling {args.rows:,} rows ...", flush=True)
            print(f"  filled in {fill(full, args.rows):.0f} s", flush=True)
            # Alternated, the best of each kept: the host moves a figure more between two
            # minutes than a million rows should.
            for round_ in range(args.rounds):
                for name, url in (("empty", empty), ("full", full)):
                    got = measure(args, url, Path(home), f"{name[0]}{round_}")
                    kept = results.setdefault(name, got)
                    for figure, value in got.items():
                        rate = "/s" in figure
                        better = value > kept[figure] if rate else value < kept[figure]
                        kept[figure] = value if better else kept[figure]
                    print(f"round {round_ + 1} {name}: {got}", flush=True)
    finally:
        clean_redis(args.redis_url, token)
    header = f"{args.base_rows:,} rows"
    print(f"\n{'figure':26} {header:>10} {f'{args.rows:,} rows':>14} {'ratio':>7}")
    for name, empty_value in results["empty"].items():
        full_value = results["full"][name]
        # A rate's ratio is empty/full (a slowdown above 1), a time's full/empty.
        slower = empty_value / full_value if "/s" in name else full_value / max(empty_value, 1e-9)
        shown = "" if name.endswith("MB") else f"{slower:7.2f}"
        print(f"{name:26} {empty_value:10.2f} {full_value:14.2f} {shown}")
    print("target: every ratio within 1.5 (rates: how much slower; times: how much longer)")
    if args.json:
        args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
