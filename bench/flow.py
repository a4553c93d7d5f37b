"""What an agent's flow limits cost a delivery: the no-op drain with and without them.

Redis + a fresh PostgreSQL database, one ``-c 2`` prefork worker: ``--messages`` no-op
messages are drained from ``noop`` (no limits) and from the same handler declared with
``max_concurrency=64`` (``noop_limited``), ``rate_limit="100000/s"`` (``noop_metered``)
and ``circuit_after=1000`` (``noop_circuit``): limits it never reaches, so what is
measured is the checks themselves (the claim's count behind the agent's row lock, the
slot taken, the circuit read). Variants are interleaved in every round, each round in
another order; the script prints each drain rate and CPU a message (medians of
``--rounds``) and their cost against ``noop``, the median of each round's own ratio
(target of the agent-contracts issue: at most 10 % each for the concurrency and rate
limits). A single drain moves 30 % with the host here: use 9 rounds or more.

    PYTHONPATH=. .venv/bin/python bench/flow.py --messages 2000 --rounds 9
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

from sqlalchemy import text  # noqa: E402

import storage  # noqa: E402
from bench.throughput import (  # noqa: E402
    add_server_args,
    child_env,
    clean_redis,
    cpu_per_message,
    fresh_database,
    start_worker,
    stop_worker,
    wait_for,
)
from messaging.client import Client  # noqa: E402
from messaging.envelope import Envelope  # noqa: E402
from wire.queues import inbox_name  # noqa: E402
from wire.settings import Settings  # noqa: E402

AGENTS = ("noop", "noop_limited", "noop_metered", "noop_circuit")
_DRAIN = text(
    "SELECT min(a.started_at), max(a.ended_at), count(*) FROM agentpost_attempts a "
    "JOIN agentpost_messages m ON m.id = a.message_id "
    "WHERE m.receiver = :r AND a.outcome = 'delivered'"
)


def drain(
    args: argparse.Namespace, env: dict[str, str], agent: str, log: Path
) -> tuple[float, float]:
    """Send ``--messages`` to ``agent``, drain them with a fresh worker: messages a second,
    and CPU ms a message of the worker's processes and PostgreSQL's."""
    settings = Settings(
        broker_url=args.redis_url,
        database_url=env["AGENTPOST_DATABASE_URL"],
        namespace=env["AGENTPOST_NAMESPACE"],
        home=Path(env["AGENTPOST_HOME"]),
    )
    engine = storage.engine_for(settings.database)
    storage.create_schema(engine)
    with engine.begin() as conn:  # every drain starts from an empty store
        conn.execute(text("TRUNCATE agentpost_messages, agentpost_attempts RESTART IDENTITY"))
    storage.register_agents(
        engine, [(agent, inbox_name(agent, settings))], kind="handler", now=time.time()
    )
    client = Client(settings)
    batch = [Envelope.build(agent, {"i": i}, sender="bench") for i in range(args.messages)]
    for start in range(0, len(batch), 500):
        client.send_many(batch[start : start + 500])
    client.close()
    argv = [sys.executable, "-m", "messaging.cli", "worker", "bench.agents", "--agents", agent]
    argv += ["-c", "2", "--loglevel", "WARNING", "--hostname", f"{agent}-{secrets.token_hex(3)}@%h"]
    proc = start_worker(argv, child_env(env), log)

    def probe() -> tuple[bool, bool]:
        with engine.connect() as conn:
            done = conn.execute(_DRAIN, {"r": agent}).one()[2]
        return done > 0, done >= args.messages

    try:
        before, after = wait_for(probe, proc=proc, timeout_s=args.timeout, interval_s=0.05, log=log)
    finally:
        stop_worker(proc)
    with engine.connect() as conn:
        first, last, done = conn.execute(_DRAIN, {"r": agent}).one()
    cpu = cpu_per_message(before, after, done)
    return float(done / (last - first)), cpu["worker"] + cpu["postgres"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0, help="per drain, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--agents", default=",".join(AGENTS), help="which, in this order (noop first)"
    )
    add_server_args(parser)
    args = parser.parse_args(argv)
    token = secrets.token_hex(4)
    agents = args.agents.split(",")
    rates: dict[str, list[float]] = {agent: [] for agent in agents}
    cpus: dict[str, list[float]] = {agent: [] for agent in agents}
    try:
        with (
            fresh_database(args.pg_admin_url, f"agentpost_bench_{token}") as db_url,
            tempfile.TemporaryDirectory() as home,
        ):
            env = {
                "AGENTPOST_BROKER_URL": args.redis_url,
                "AGENTPOST_DATABASE_URL": db_url,
                "AGENTPOST_NAMESPACE": f"b{token}f.",
                "AGENTPOST_HOME": home,
            }
            for round_ in range(args.rounds):
                # Each round in another order: a drain's place in a round is no figure.
                shift = round_ % len(agents)
                for agent in agents[shift:] + agents[:shift]:
                    log = Path(home) / f"{agent}{round_}.log"
                    rate, cpu = drain(args, env, agent, log)
                    rates[agent].append(rate)
                    cpus[agent].append(cpu)
                    print(
                        f"round {round_ + 1} {agent}: {rate:,.0f} msg/s, {cpu:.2f} ms CPU/msg",
                        flush=True,
                    )
    finally:
        clean_redis(args.redis_url, token)
    medians = {agent: statistics.median(values) for agent, values in rates.items()}
    cpu_medians = {agent: statistics.median(values) for agent, values in cpus.items()}
    print(f"\nno-op drain, -c 2 prefork, {args.messages} messages, median of {args.rounds}:")
    print(f"  {'agent':13} {'msg/s':>8} {'cost':>7}   {'CPU ms/msg':>10} {'cost':>7}")
    costs, cpu_costs = {}, {}
    for agent in agents:
        # The median of each round's own ratio: rounds drift with the host together.
        pairs = zip(rates[agents[0]], rates[agent], strict=True)
        costs[agent] = statistics.median(b / a for b, a in pairs) - 1
        cpu_pairs = zip(cpus[agent], cpus[agents[0]], strict=True)
        cpu_costs[agent] = statistics.median(a / b for a, b in cpu_pairs) - 1
        print(
            f"  {agent:13} {medians[agent]:8,.0f} {costs[agent]:+7.1%}   "
            f"{cpu_medians[agent]:10.2f} {cpu_costs[agent]:+7.1%}"
        )
    print("cost: time (1/rate) and CPU (worker processes + PostgreSQL) a delivery against")
    print(f"{agents[0]}, the median of the rounds' own ratios; target: max_concurrency and")
    print("rate_limit each cost at most 10 %")
    if args.json:
        figures = {"rates": rates, "medians": medians, "costs": costs}
        figures |= {"cpu_ms": cpus, "cpu_medians": cpu_medians, "cpu_costs": cpu_costs}
        args.json.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
