"""What an agent's contract costs a sender: ``send`` to a typed agent against an untyped one.

One process, Redis + a fresh PostgreSQL database, no worker: the same payload is sent
``--messages`` times to ``plain`` (no payload model) and to ``typed`` (a pydantic model
whose JSON Schema the sender checks each payload against), in interleaved rounds, and
the script prints each rate and their ratio (target of the agent-contracts issue: the
check costs at most 10 % of a send).

    PYTHONPATH=. .venv/bin/python bench/contracts.py --messages 3000
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel, Field  # noqa: E402

import storage  # noqa: E402
from bench.send_many import noop_client  # noqa: E402
from bench.throughput import add_server_args, clean_redis, fresh_database  # noqa: E402
from wire.queues import inbox_name  # noqa: E402


class Brief(BaseModel):
    """A payload of the shape agents take: a few typed fields, one nested list."""

    topic: str
    words: int = Field(gt=0, le=5000)
    audience: str = "general"
    tags: list[str] = []


PAYLOAD = {"topic": "tides", "words": 900, "audience": "kids", "tags": ["sea", "moon"]}


def rate(client: object, receiver: str, n: int) -> float:
    send = client.send  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(n):
        send(receiver, PAYLOAD, sender="bench")
    client.flush()  # type: ignore[attr-defined]
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    add_server_args(parser)
    args = parser.parse_args(argv)
    token = secrets.token_hex(4)
    rates: dict[str, list[float]] = {"plain": [], "typed": []}
    try:
        with (
            fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url,
            tempfile.TemporaryDirectory() as home,
        ):
            client = noop_client(args.redis_url, db_url, f"b{token}c.", Path(home))
            schema = json.dumps(Brief.model_json_schema(), sort_keys=True)
            engine = storage.engine_for(db_url)
            for name, schemas in (("plain", (None, None)), ("typed", (schema, None))):
                storage.register_agents(
                    engine,
                    [(name, inbox_name(name, client.settings))],
                    kind="handler",
                    now=time.time(),
                    schemas={name: schemas},
                )
            for name in rates:  # warm: the registry read, prepared statements
                rate(client, name, 200)
            for _ in range(args.rounds):
                for name in rates:
                    rates[name].append(rate(client, name, args.messages))
            client.close()
    finally:
        clean_redis(args.redis_url, token)
    plain, typed = (statistics.median(rates[k]) for k in ("plain", "typed"))
    cost = plain / typed - 1
    print(f"send to an untyped agent: {plain:,.0f} msg/s (median of {args.rounds})")
    print(f"send to a typed agent:    {typed:,.0f} msg/s")
    print(f"the payload check costs {cost:+.1%} of a send (target <= 10 %)")
    if args.json:
        args.json.write_text(json.dumps({"plain": plain, "typed": typed, "cost": cost}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
