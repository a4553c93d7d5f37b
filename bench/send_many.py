"""``send_many`` from one process on Redis + PostgreSQL, against raw Celery's ``send_task``.

For each batch size, N fresh messages go to the ``noop`` inbox in batches, timed two
ways: building the envelopes included (what a caller pays), and ``send_many`` alone
(envelopes built beforehand). Both with task events on and off (the default). In the
same run, raw Celery's ``send_task`` loop on the same Redis (``bench/rawapp.py``, its
defaults) gives the per-message publish rate to compare with. Nothing consumes: the
messages stay queued, then the run's database is dropped and its Redis keys deleted.

    PYTHONPATH=. python bench/send_many.py --messages 20000

Target (issue: the engine at scale): ``send_many`` >= 10,000 msg/s in batches of
100-1,000.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import storage  # noqa: E402
from bench import rawapp  # noqa: E402
from bench.throughput import add_server_args, clean_redis, fresh_database  # noqa: E402
from messaging import Client, Envelope, Settings  # noqa: E402
from wire import inbox_name  # noqa: E402


def raw_send_task_rate(redis_url: str, token: str, n: int) -> float:
    app = rawapp.make_app(redis_url)
    try:
        app.send_task(rawapp.NOOP_TASK, queue=f"bench.{token}.raw")  # connect first
        t0 = time.perf_counter()
        for _ in range(n):
            app.send_task(rawapp.NOOP_TASK, queue=f"bench.{token}.raw")
        return n / (time.perf_counter() - t0)
    finally:
        app.close()


def noop_client(
    redis_url: str, db_url: str, namespace: str, home: Path, *, task_events: bool = False
) -> Client:
    """A client of a fresh store where the ``noop`` agent is registered, warmed up."""
    settings = Settings(
        broker_url=redis_url,
        database_url=db_url,
        namespace=namespace,
        home=home,
        task_events=task_events,
    )
    client = Client(settings)
    storage.register_agents(
        client.engine, [("noop", inbox_name("noop", settings))], kind="handler", now=time.time()
    )
    client.send("noop", "warm", sender="bench")
    client.flush()
    return client


def send_many_rates(client: Client, n: int, batch: int) -> tuple[float, float]:
    """(msg/s building included, msg/s send_many alone)."""
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        client.send_many(
            [Envelope.build("noop", {"i": i}, sender="bench") for i in range(start, start + batch)]
        )
    client.flush()  # timed until every task is on the broker, as send_task's are
    with_building = n / (time.perf_counter() - t0)
    envelopes = [Envelope.build("noop", {"i": i}, sender="bench") for i in range(n)]
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        client.send_many(envelopes[start : start + batch])
    client.flush()
    return with_building, n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=20000)
    parser.add_argument("--batches", default="100,1000", help="comma-separated batch sizes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_server_args(parser)
    args = parser.parse_args()
    token = secrets.token_hex(4)
    batches = [int(b) for b in args.batches.split(",")]
    lines = []
    figures: dict[str, float] = {}
    try:
        raw = raw_send_task_rate(args.redis_url, token, min(args.messages, 5000))
        lines.append(f"raw Celery send_task loop: {raw:,.0f} msg/s")
        figures["send_task"] = raw
        for events in (True, False):
            with (
                fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url,
                tempfile.TemporaryDirectory() as home,
            ):
                client = noop_client(
                    args.redis_url, db_url, f"b{token}s.", Path(home), task_events=events
                )
                for batch in batches:
                    built, alone = send_many_rates(client, args.messages, batch)
                    figures[f"batch_{batch}_events_{'on' if events else 'off'}"] = built
                    lines.append(
                        f"send_many batch {batch:>5}, task events {'on ' if events else 'off'}: "
                        f"{built:>7,.0f} msg/s with building ({built / raw:.2f}x send_task), "
                        f"{alone:>7,.0f} msg/s send_many alone ({alone / raw:.2f}x)"
                    )
                client.close()
    finally:
        clean_redis(args.redis_url, token)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
