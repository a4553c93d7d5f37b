"""cProfile of a real agentpost worker (solo pool) draining N no-op messages.

Sends ``--messages`` messages (Redis + a fresh PostgreSQL database), runs
``python -m cProfile -m messaging.cli worker bench.agents --pool solo`` until every
message is delivered, stops it with SIGTERM and prints where the worker's time went:
the share of ``deliver_envelope`` (agentpost's own work) against the Celery machinery
around it (consuming, acking, task events, tracing).

    PYTHONPATH=. python bench/profile_worker.py --messages 1000
"""

from __future__ import annotations

import argparse
import os
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

import storage  # noqa: E402
from bench.throughput import (  # noqa: E402
    add_server_args,
    child_env,
    clean_redis,
    fresh_database,
    start_worker,
    stop_worker,
)
from messaging.client import Client  # noqa: E402
from wire.queues import inbox_name  # noqa: E402
from wire.settings import Settings  # noqa: E402

#: Functions whose cumulative time is reported (file fragment, function name).
WATCH = [
    ("celery/app/trace.py", "trace_task"),
    ("worker/tasks.py", "deliver"),
    ("worker/deliver.py", "deliver_envelope"),
    ("storage/claims.py", "claim"),
    ("storage/completion.py", "complete"),
    ("messaging/envelope.py", "parse_envelope"),
    ("worker/tasks.py", "core"),
    ("celery/worker/request.py", "send_event"),
    ("celery/events/dispatcher.py", "send"),
    ("celery/worker/request.py", "acknowledge"),
    ("kombu/transport/redis.py", "_brpop_read"),
    ("kombu/transport/virtual/base.py", "basic_ack"),
    ("sqlalchemy/pool/base.py", "_checkout"),
    ("psycopg/connection.py", "wait"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=1000)
    add_server_args(parser)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", type=Path, help="keep the cProfile output here")
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
            ns = f"b{token}w."
            settings = Settings(
                broker_url=args.redis_url, database_url=db_url, namespace=ns, home=Path(home)
            )
            engine = storage.engine_for(settings.database)
            storage.create_schema(engine)
            storage.register_agents(
                engine, [("noop", inbox_name("noop", settings))], kind="handler", now=time.time()
            )
            with Client(settings) as client:
                for i in range(n):
                    client.send("noop", {"i": i}, sender="bench")
            prof = Path(home) / "worker.prof"
            log = Path(home) / "worker.log"
            env = child_env(
                {
                    "AGENTPOST_BROKER_URL": args.redis_url,
                    "AGENTPOST_DATABASE_URL": db_url,
                    "AGENTPOST_NAMESPACE": ns,
                    "AGENTPOST_HOME": home,
                }
            )
            proc = start_worker(
                [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    str(prof),
                    "-m",
                    "messaging.cli",
                    "worker",
                    "bench.agents",
                    "--pool",
                    "solo",
                    "--loglevel",
                    "WARNING",
                    "--hostname",
                    f"bench-{token}-profile@%h",
                ],
                env,
                log,
            )
            try:
                deadline = time.monotonic() + 300
                while True:
                    with engine.connect() as conn:
                        done = conn.execute(
                            text(
                                "SELECT count(*) FROM agentpost_messages WHERE status = 'delivered'"
                            )
                        ).scalar_one()
                    if done >= n:
                        break
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker stopped or too slow:\n{log.read_text()}")
                    time.sleep(0.2)
            finally:
                stop_worker(proc, grace_s=30)
            with engine.connect() as conn:
                first, last = conn.execute(
                    text("SELECT min(started_at), max(ended_at) FROM agentpost_attempts")
                ).one()
            print(
                f"solo worker under cProfile: {n} deliveries in {last - first:.2f}s "
                f"({n / (last - first):.0f}/s)"
            )
            if args.save:
                args.save.write_bytes(prof.read_bytes())
            stats = pstats.Stats(str(prof))
            entries = stats.stats  # type: ignore[attr-defined]
            print("\ncumulative time per delivered message (ms), under cProfile:")
            for fragment, name in WATCH:
                calls, total = 0, 0.0
                for (file, _line, func), (_cc, nc, _tt, ct, _callers) in entries.items():
                    if func == name and file.endswith(fragment):
                        calls += nc
                        total += ct
                if calls:
                    print(
                        f"  {fragment}:{name:<22} {calls / n:5.2f} calls/msg "
                        f"{total * 1000 / n:7.3f} ms/msg"
                    )
            print()
            stats.sort_stats("tottime").print_stats(args.top)
        finally:
            clean_redis(args.redis_url, token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
