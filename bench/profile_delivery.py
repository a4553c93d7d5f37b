"""Where one agentpost send and one delivery spend their time, in one process.

No Celery worker: the script sends ``--messages`` messages with ``Client.send`` (to
Redis + a fresh PostgreSQL database) and then calls ``worker.deliver.deliver_envelope``
on each stored envelope, the function the ``agentpost.deliver`` task wraps. It reports
per message: wall time, SQL statements by kind (and their round-trip time), and the
top functions by cumulative time. It then times, without cProfile and on fresh
messages each time (nothing in the core code is changed):

* ``deliver_envelope`` as it is;
* the same with ``synchronous_commit = off`` on the bench database (what the fsync of
  each committing statement costs);
* a lower bound: the delivery's store path as two prebuilt autocommit statements
  (claim: ``UPDATE .. RETURNING``; completion: ``WITH u AS (UPDATE ..) INSERT ..``) on
  one held connection, with the same envelope parsing and handler call: what is left
  once SQLAlchemy's per-call statement building and pool checkouts are gone.

    PYTHONPATH=. python bench/profile_delivery.py --messages 500
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

import storage  # noqa: E402
from bench import agents  # noqa: E402, F401  (registers the noop agent in this process)
from bench.throughput import (  # noqa: E402
    add_server_args,
    clean_redis,
    fresh_database,
)
from messaging.agents import get_agent  # noqa: E402
from messaging.client import Client  # noqa: E402
from messaging.context import Context  # noqa: E402
from messaging.envelope import parse_envelope  # noqa: E402
from wire.queues import inbox_name  # noqa: E402
from wire.settings import Settings  # noqa: E402
from worker.deliver import deliver_envelope  # noqa: E402


class SqlCounter:
    """Counts statements (and time in ``cursor.execute``) on every engine of the process."""

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.wire: collections.Counter[str] = collections.Counter()
        self.seconds = 0.0
        self._t0: dict[int, float] = {}
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        event.listen(Engine, "begin", self._begin)
        event.listen(Engine, "commit", self._commit)
        self._count_round_trips()

    def _count_round_trips(self) -> None:
        """Count what psycopg sends: cursor queries (incl. pool pings) and BEGIN/COMMIT."""
        import psycopg  # noqa: PLC0415
        from psycopg import _connection_base  # noqa: PLC0415

        wire = self.wire
        execute = psycopg.Cursor.execute
        exec_command = _connection_base.BaseConnection._exec_command

        def counted_execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text_ = query if isinstance(query, str) else str(query)
            wire["pool pre-ping" if text_.strip().lower() in (";", "select 1") else "query"] += 1
            return execute(cursor, query, *args, **kwargs)

        def counted_command(conn: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            name = command.decode() if isinstance(command, bytes) else str(command)
            wire[name.split()[0].upper()] += 1
            return exec_command(conn, command, *args, **kwargs)

        psycopg.Cursor.execute = counted_execute  # type: ignore[method-assign]
        _connection_base.BaseConnection._exec_command = counted_command  # type: ignore[method-assign]

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        kind = " ".join(words[:2]) if words else "?"
        if kind.startswith(("UPDATE", "INSERT INTO")):
            kind = " ".join(words[:3]) if kind.startswith("INSERT") else " ".join(words[:2])
        self.kinds[kind] += 1
        self._t0[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._t0.pop(id(cursor), time.perf_counter())

    def _begin(self, conn: Any) -> None:
        self.kinds["BEGIN (implicit)"] += 1

    def _commit(self, conn: Any) -> None:
        self.kinds["COMMIT"] += 1

    def reset(self) -> None:
        self.kinds.clear()
        self.wire.clear()
        self.seconds = 0.0


def measure(
    label: str, n: int, fn: Callable[[int], None], sql: SqlCounter, top: int
) -> dict[str, Any]:
    sql.reset()
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    for i in range(n):
        fn(i)
    profile.disable()
    wall = time.perf_counter() - t0
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
    per = {k: v / n for k, v in sorted(sql.kinds.items())}
    print(
        f"\n== {label}: {n} calls, {wall * 1000 / n:.2f} ms/call wall (under cProfile), "
        f"{sum(per.values()):.1f} SQL statements/call, "
        f"{sql.seconds * 1000 / n:.2f} ms/call inside cursor.execute"
    )
    for kind, count in per.items():
        print(f"   {count:5.2f}  {kind}")
    wire = {k: v / n for k, v in sorted(sql.wire.items())}
    print(
        f"  PostgreSQL round trips/call: {sum(wire.values()):.1f} "
        + ", ".join(f"{k} {v:.2f}" for k, v in wire.items())
    )
    print(out.getvalue().split("\n", 6)[-1][:6000])
    return {
        "wall_ms": wall * 1000 / n,
        "sql_per_call": per,
        "round_trips": wire,
        "sql_ms": sql.seconds * 1000 / n,
    }


def what_if(engine: Engine, pending: list[dict[str, Any]]) -> Callable[[int], None]:
    """A lean delivery: parse, claim (1 statement), handler, complete (1 statement)."""
    claim = text(
        "UPDATE agentpost_messages SET status = 'running', attempts = attempts + 1, "
        "lease_until = :lease, claimed_by = :worker, updated_at = :now, "
        "recovered_from = CASE WHEN status = 'running' THEN coalesce(claimed_by, '?') END "
        "WHERE id = :id AND (status IN ('queued', 'retrying') "
        "OR (status = 'running' AND lease_until < :now)) "
        "RETURNING attempts, redrives, recovered_from"
    )
    complete = text(
        "WITH u AS (UPDATE agentpost_messages SET status = 'delivered', reply = :reply, "
        "finished_at = :now, error = NULL, updated_at = :now, lease_until = NULL "
        "WHERE id = :id AND status = 'running' AND attempts = :attempt "
        "RETURNING receiver, created_at) "
        "INSERT INTO agentpost_attempts (message_id, receiver, message_created_at, number, "
        "redrive, worker, started_at, ended_at, outcome) SELECT :id, receiver, created_at, "
        ":attempt, :redrive, :worker, :started, :now, 'delivered' FROM u"
    )
    conn = engine.connect()

    def deliver(i: int) -> None:
        now = time.time()
        envelope = parse_envelope(pending[i])
        spec = get_agent(envelope.receiver)
        assert spec is not None
        row = conn.execute(
            claim,
            {"id": str(envelope.id), "lease": now + 300, "now": now, "worker": "bench:what-if"},
        ).one()
        delivered = envelope.model_copy(update={"attempt": row.attempts})
        spec.handler(delivered, Context(delivered, sender=None, worker="bench:what-if"))  # type: ignore[arg-type]
        conn.execute(
            complete,
            {
                "id": str(envelope.id),
                "reply": None,
                "now": time.time(),
                "attempt": row.attempts,
                "redrive": row.redrives,
                "worker": "bench:what-if",
                "started": now,
            },
        )

    return deliver


def plain_time(n: int, fn: Callable[[int], None]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) * 1000 / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=500)
    add_server_args(parser)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for key in [k for k in os.environ if k.startswith("AGENTPOST_")]:
        del os.environ[key]

    token = secrets.token_hex(4)
    n = args.messages
    with (
        fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url,
        tempfile.TemporaryDirectory() as home,
    ):
        try:
            settings = Settings(
                broker_url=args.redis_url,
                database_url=db_url,
                namespace=f"b{token}p.",
                home=Path(home),
            )
            engine = storage.engine_for(settings.database)
            storage.create_schema(engine)
            storage.register_agents(
                engine, [("noop", inbox_name("noop", settings))], kind="handler", now=time.time()
            )
            client = Client(settings)
            client.send("noop", {"warm": True}, sender="bench")  # connections, caches
            sql = SqlCounter()

            def send(i: int) -> None:
                client.send("noop", {"i": i}, sender="bench")

            results: dict[str, Any] = {}
            results["send"] = measure("Client.send", n, send, sql, args.top)
            results["send_plain_ms"] = plain_time(n, send)

            def envelopes() -> list[dict[str, Any]]:
                with engine.connect() as conn:
                    rows = (
                        conn.execute(
                            text(
                                "SELECT envelope FROM agentpost_messages WHERE status = 'queued' "
                                "ORDER BY created_at"
                            )
                        )
                        .scalars()
                        .all()
                    )
                return [json.loads(r) for r in rows]

            pending = envelopes()
            deliver_envelope(client, pending.pop())  # warm

            def deliver(i: int) -> None:
                outcome = deliver_envelope(client, pending[i])
                assert outcome.kind == "delivered", outcome

            results["deliver"] = measure("deliver_envelope", len(pending), deliver, sql, args.top)

            def refill() -> list[dict[str, Any]]:
                for i in range(n):
                    send(i)
                return envelopes()

            # Timings without cProfile, each on n fresh messages.
            pending = refill()
            results["deliver_plain_ms"] = plain_time(len(pending), deliver)

            # The same deliveries with synchronous_commit off (new connections see it).
            pending = refill()
            db_name = make_url(db_url).database
            with engine.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{db_name}" SET synchronous_commit = off'))
                conn.commit()
            storage.dispose_engines()
            engine = storage.engine_for(settings.database)
            try:
                results["deliver_async_commit_ms"] = plain_time(len(pending), deliver)
            finally:
                with engine.connect() as conn:
                    conn.execute(text(f'ALTER DATABASE "{db_name}" RESET synchronous_commit'))
                    conn.commit()
                storage.dispose_engines()
                engine = storage.engine_for(settings.database)

            # Lower bound: two prebuilt autocommit statements on one held connection.
            pending = refill()
            lean = create_engine(db_url, isolation_level="AUTOCOMMIT", pool_size=2)
            results["what_if_ms"] = plain_time(len(pending), what_if(lean, pending))
            lean.dispose()
            client.close()
            print("\nsummary (ms per call, without cProfile):")
            print(f"  Client.send                                  {results['send_plain_ms']:.2f}")
            print(
                f"  deliver_envelope                             {results['deliver_plain_ms']:.2f}"
            )
            print(
                "  deliver_envelope, synchronous_commit=off     "
                f"{results['deliver_async_commit_ms']:.2f}"
            )
            print(f"  lower bound: 2 prebuilt statements, 1 conn   {results['what_if_ms']:.2f}")
        finally:
            clean_redis(args.redis_url, token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
