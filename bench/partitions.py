"""What time partitions would cost the statements by id, and what they would save retention.

A measurement behind a design choice (docs/architecture.md, "A store whose cost does
not grow with its history"), not a figure of agentpost itself. In a fresh PostgreSQL
database it builds two models of the messages table with the same rows (``--rows``
finished messages over 30 days, the id a random UUID as agentpost's):

- **plain**: one table, the primary key ``id``, the idempotency key unique, the
  partial index of finished rows by ``finished_at`` (what retention deletes through);
- **partitioned**: the same declared ``PARTITION BY RANGE (created_at)``, one partition
  a day (``--partition-days``: agentpost's own are a week). Its primary key must hold
  the partition key, ``(id, created_at)``; the idempotency key moves to a table of its
  own (a unique constraint across partitions must hold the partition key too).

Then it times, each a median over ``--statements`` random ids, on a held connection with
prepared statements: a read by id, an update by id (the shape of a claim or a
completion), the same two with the row's ``created_at`` also given (what lets
PostgreSQL prune to one partition: every by-id statement of the delivery path would
have to carry it), a send (an insert with its idempotency key: one statement on the
plain table, the key table and the row on the partitioned one), and retention of the
oldest partition: batched DELETEs through the finished index against one ``DROP TABLE``.

    PYTHONPATH=. .venv/bin/python bench/partitions.py --rows 1000000
    PYTHONPATH=. .venv/bin/python bench/partitions.py --rows 1000000 --partition-days 7
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.throughput import add_server_args, fresh_database  # noqa: E402

DAY = 86400.0
DAYS = 30

_COLUMNS = """
    id varchar(36) NOT NULL, idempotency_key varchar(255) NOT NULL,
    receiver varchar(64) NOT NULL, status varchar(16) NOT NULL, envelope text NOT NULL,
    created_at double precision NOT NULL, updated_at double precision NOT NULL,
    finished_at double precision
"""
_FILL = """
INSERT INTO {table} (id, idempotency_key, receiver, status, envelope, created_at,
                     updated_at, finished_at)
SELECT md5(n::text || 'm')::uuid::text, 'k' || n, 'agent-' || (n %% 300), 'delivered',
       repeat('x', 1100), %(start)s + n * %(step)s, %(start)s + n * %(step)s + 1,
       %(start)s + n * %(step)s + 1
FROM generate_series(1, %(rows)s) AS n
"""


def build(conn: psycopg.Connection[Any], rows: int, start: float, span_days: int) -> None:
    """Both tables, filled with the same rows, vacuumed and analysed."""
    conn.execute(f"CREATE TABLE plain ({_COLUMNS}, PRIMARY KEY (id))")
    conn.execute("CREATE UNIQUE INDEX plain_key ON plain (idempotency_key)")
    conn.execute(
        "CREATE INDEX plain_finished ON plain (status, finished_at) "
        "WHERE status IN ('delivered', 'dead')"
    )
    conn.execute(
        f"CREATE TABLE parted ({_COLUMNS}, PRIMARY KEY (id, created_at)) "
        "PARTITION BY RANGE (created_at)"
    )
    span = span_days * DAY
    for n in range(-(-(DAYS + 2) // span_days)):
        low, high = start + n * span, start + (n + 1) * span
        conn.execute(
            f"CREATE TABLE parted_{n} PARTITION OF parted FOR VALUES FROM ({low}) TO ({high})"
        )
    conn.execute(
        "CREATE INDEX parted_finished ON parted (status, finished_at) "
        "WHERE status IN ('delivered', 'dead')"
    )
    conn.execute(
        "CREATE TABLE parted_keys (idempotency_key varchar(255) PRIMARY KEY, "
        "message_id varchar(36) NOT NULL, created_at double precision NOT NULL)"
    )
    step = DAYS * DAY / rows
    for table in ("plain", "parted"):
        conn.execute(_FILL.format(table=table), {"rows": rows, "start": start, "step": step})
    conn.execute("INSERT INTO parted_keys SELECT idempotency_key, id, created_at FROM parted")
    for table in ("plain", "parted", "parted_keys"):
        conn.execute(f"VACUUM ANALYZE {table}")


def timed(call: Callable[[int], None], n: int) -> float:
    """The median microseconds of ``n`` calls (a warm-up of 200 first)."""
    for i in range(200):
        call(i)
    times = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def measure(conn: psycopg.Connection[Any], n: int) -> dict[str, float]:
    ids = conn.execute("SELECT id, created_at FROM plain").fetchall()
    sample = random.Random(7).sample(ids, min(len(ids), n + 200))

    def by_id(sql: str) -> Callable[[int], None]:
        def call(i: int) -> None:
            row_id, created = sample[i]
            params = {"id": row_id, "created": created, "now": time.time()}
            conn.execute(sql, params, prepare=True).fetchall()

        return call

    read = "SELECT status, envelope FROM {t} WHERE id = %(id)s"
    update = (
        "UPDATE {t} SET updated_at = %(now)s WHERE id = %(id)s AND status = 'delivered' "
        "RETURNING id"
    )
    pruned = "id = %(id)s AND created_at = %(created)s"
    figures: dict[str, float] = {}
    for name, sql in (("read by id", read), ("update by id", update)):
        figures[f"{name}: plain"] = timed(by_id(sql.format(t="plain")), n)
        parted = sql.format(t="parted")
        figures[f"{name}: partitioned, id only"] = timed(by_id(parted), n)
        with_time = parted.replace("id = %(id)s", pruned)
        figures[f"{name}: partitioned, id and created_at"] = timed(by_id(with_time), n)

    def send_plain(i: int) -> None:
        conn.execute(
            "INSERT INTO plain (id, idempotency_key, receiver, status, envelope, created_at, "
            "updated_at) VALUES (%s, %s, 'agent-1', 'queued', '{}', %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (str(uuid.uuid4()), f"s{i}-{secrets.token_hex(4)}", time.time(), time.time()),
            prepare=True,
        ).fetchall()

    def send_parted(i: int) -> None:
        conn.execute(
            "WITH k AS (INSERT INTO parted_keys VALUES (%(key)s, %(id)s, %(now)s) "
            "ON CONFLICT DO NOTHING RETURNING message_id) "
            "INSERT INTO parted (id, idempotency_key, receiver, status, envelope, created_at, "
            "updated_at) SELECT message_id, %(key)s, 'agent-1', 'queued', '{}', %(now)s, "
            "%(now)s FROM k RETURNING id",
            {"id": str(uuid.uuid4()), "key": f"s{i}-{secrets.token_hex(4)}", "now": time.time()},
            prepare=True,
        ).fetchall()

    figures["send: plain"] = timed(send_plain, n)
    figures["send: partitioned (key table + row)"] = timed(send_parted, n)
    # Retention of the oldest partition: batched DELETEs (as storage/retention.py) vs one
    # DROP.
    last = conn.execute("SELECT max(created_at) FROM parted_0").fetchone()
    assert last is not None
    cutoff = float(last[0])  # each row finished a second after it was sent
    started = time.perf_counter()
    deleted = 0
    while True:
        batch = conn.execute(
            "DELETE FROM plain WHERE id IN (SELECT id FROM plain WHERE status IN "
            "('delivered', 'dead') AND finished_at <= %s + 1 ORDER BY finished_at LIMIT 1000) "
            "RETURNING id",
            (cutoff,),
        ).fetchall()
        deleted += len(batch)
        if not batch:
            break
    figures["retention, oldest partition: plain, batched DELETE (ms)"] = (
        time.perf_counter() - started
    ) * 1000
    started = time.perf_counter()
    conn.execute("DROP TABLE parted_0")
    conn.execute(
        "DELETE FROM parted_keys WHERE created_at <= %s",
        (cutoff,),
    )
    figures["retention, oldest partition: partitioned, DROP + keys DELETE (ms)"] = (
        time.perf_counter() - started
    ) * 1000
    figures["rows in the oldest partition"] = float(deleted)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--statements", type=int, default=3000)
    parser.add_argument("--partition-days", type=int, default=1)
    add_server_args(parser)
    args = parser.parse_args(argv)
    name = f"agentpost_partitions_{secrets.token_hex(4)}"
    with fresh_database(args.pg_admin_url, name) as url:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            started = time.perf_counter()
            build(conn, args.rows, time.time() - DAYS * DAY - 3600, args.partition_days)
            print(f"built {args.rows:,} rows twice in {time.perf_counter() - started:.0f} s")
            figures = measure(conn, args.statements)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        unit = "" if "(ms)" in key or key.startswith("rows") else " us"
        print(f"{key:{width}}  {value:10.1f}{unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
