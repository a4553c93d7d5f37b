"""Where a send's time goes, stage by stage, on Redis + PostgreSQL (task events off).

A sender's work per message is four stages: checking the envelope and encoding it
(``_check``), the INSERT, the publish and the UPDATE that marks the rows handed. In a
normal send the last two run on a background thread; here every stage runs in the
caller's thread, one after the other, and is timed on its own, for ``send`` (one
message per call) and ``send_many`` (batches of 1,000). Beside them, in the same run:
the same INSERT statement through bare psycopg with a prepared statement (the floor a
one-row commit costs here), and raw Celery's ``send_task`` (``bench/rawapp.py``).

    PYTHONPATH=. python bench/send_parts.py --messages 5000
"""

from __future__ import annotations

import argparse
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

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

import storage  # noqa: E402
from bench.send_many import noop_client, raw_send_task_rate  # noqa: E402
from bench.throughput import add_server_args, clean_redis, fresh_database  # noqa: E402
from messaging import Client, Envelope  # noqa: E402
from storage import postgres, repository  # noqa: E402


def timed(totals: dict[str, float], stage: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            totals[stage] += time.perf_counter() - t0

    return wrapper


def stages(client: Client, n: int, batch: int) -> dict[str, float]:
    """Microseconds per message in each stage, and in all (``total``)."""
    totals = dict.fromkeys(("check", "insert", "publish", "mark handed"), 0.0)
    client._check = timed(totals, "check", client._check)  # type: ignore[method-assign]
    insert = storage.insert_messages
    storage.insert_messages = timed(totals, "insert", insert)
    client._outbox._run_batch = timed(totals, "publish", client._outbox._run_batch)
    marks = client._handed._marks
    marks._run_batch = timed(totals, "mark handed", marks._run_batch)
    envelopes = [Envelope.build("noop", {"i": i}, sender="bench") for i in range(n)]
    try:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            client.send_many(envelopes[start : start + batch])
            client._outbox.flush()  # the background stages, now, in this thread
            client._handed.flush()
        total = time.perf_counter() - t0
    finally:
        storage.insert_messages = insert
    per = {stage: seconds / n * 1e6 for stage, seconds in totals.items()}
    per["total"] = total / n * 1e6
    return per


def bare_insert_us(db_url: str, n: int) -> float:
    """The sender's INSERT through bare psycopg, prepared: microseconds per row."""
    sql = postgres._psycopg_form(postgres._INSERT_ONE)  # the statement a send runs
    url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    rows = [
        storage.NewMessage(
            id=str(env.id),
            idempotency_key=env.idempotency_key,
            correlation_id=env.correlation_id,
            parent_id=None,
            sender=env.sender,
            receiver=env.receiver,
            priority=env.priority,
            envelope=env.wire_json(),
            created_at=time.time(),
            expires_at=None,
        )
        for env in (Envelope.build("noop", {"i": i}, sender="bench") for i in range(n))
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for row in rows:
            conn.execute(sql, repository._values(row), prepare=True).fetchone()
        return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=5000)
    add_server_args(parser)
    args = parser.parse_args()
    token = secrets.token_hex(4)
    lines = []
    try:
        raw = 1e6 / raw_send_task_rate(args.redis_url, token, args.messages)
        with (
            fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url,
            tempfile.TemporaryDirectory() as home,
        ):
            client = noop_client(args.redis_url, db_url, f"b{token}p.", Path(home))
            for label, batch in (("send (1 per call)", 1), ("send_many (1,000)", 1000)):
                per = stages(client, args.messages, batch)
                parts = ", ".join(f"{k} {v:.0f}" for k, v in per.items() if k != "total")
                lines.append(
                    f"{label:18s} {per['total']:6.0f} us/msg = {parts} "
                    f"({raw / per['total']:.2f}x send_task)"
                )
            client.close()
            lines.append(f"bare psycopg INSERT {bare_insert_us(db_url, args.messages):6.0f} us/row")
            lines.append(f"raw send_task       {raw:6.0f} us/msg")
    finally:
        clean_redis(args.redis_url, token)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
