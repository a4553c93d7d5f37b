"""The ``agentpost`` command line (Typer)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from messaging import cli_gateway, cli_ops
from wire.errors import (
    AgentpostError,
    AmbiguousId,
    ConfigurationError,
    DeliveryError,
    InvalidEnvelope,
    MessageNotFound,
    RequestFailed,
    RequestTimeout,
    UnknownAgent,
)

# Each command imports what it needs when it runs (ruff's PLC0415 is off for the CLI
# modules): `agentpost --help` and the inspecting commands start without Celery, the
# store's ORM or the gateway.

__all__ = ["app", "main"]

app = typer.Typer(
    help="agentpost: reliable agent-to-agent messaging on Celery.",
    epilog=(
        "Exit codes: 0 done; 1 a timeout, a dead message or nothing found; 2 a usage error "
        "or input refused; 3 the store, the broker or the gateway failed; 130 Ctrl-C."
    ),
    no_args_is_help=True,
)

# What each error says about the command that raised it (the epilog above).
_EXIT_CODES: tuple[tuple[type[AgentpostError], int], ...] = (
    (RequestTimeout, 1),
    (RequestFailed, 1),
    (DeliveryError, 1),
    (MessageNotFound, 1),
    (InvalidEnvelope, 2),
    (UnknownAgent, 2),
    (AmbiguousId, 2),
    (ConfigurationError, 2),
)


def _load_modules(modules: list[str]) -> None:
    # Like `celery -A`, import user modules relative to the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            hint = ""
            if module.endswith(".py") or "/" in module:
                dotted = module.removesuffix(".py").strip("/").replace("/", ".")
                hint = f" (name the module as Python imports it: {dotted!r})"
            raise typer.BadParameter(f"cannot import agent module {module!r}: {exc}{hint}") from exc


@app.command()
def worker(
    modules: Annotated[list[str], typer.Argument(help="Python modules that define agents.")],
    agents: Annotated[
        str, typer.Option(help="Comma-separated agents to serve (default: all).")
    ] = "",
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
    beat: Annotated[bool, typer.Option("--beat", help="Embed the sweeper schedule.")] = False,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    hostname: Annotated[str, typer.Option(help="Celery node name.")] = "",
) -> None:
    """Start a Celery worker serving the inboxes (agent.<name>) of these agents."""
    import storage
    from messaging.agents import registered_agents
    from wire.app import create_app
    from wire.boundary import store_errors
    from wire.queues import inbox_name, sweeper_queue
    from wire.settings import Settings

    env = Settings()
    settings = Settings(**{**env.model_dump(), "agent_modules": [*env.agent_modules, *modules]})
    _load_modules(settings.agent_modules)
    known = registered_agents()
    wanted = [a.strip() for a in agents.split(",") if a.strip()] or sorted(known)
    unknown = [a for a in wanted if a not in known]
    if not known:
        raise typer.BadParameter(
            f"no agents in {', '.join(settings.agent_modules)}: decorate a handler with "
            '@agent("name") (from messaging import agent) in the module the worker imports'
        )
    if unknown:
        raise typer.BadParameter(
            f"unknown agent(s) {', '.join(unknown)} "
            f"(defined in {', '.join(settings.agent_modules)}: {', '.join(sorted(known))})"
        )
    with store_errors(settings.database):  # fail before Celery starts, saying what fixes it
        storage.create_schema(storage.engine_for(settings.database))
    celery_app = create_app(settings)
    queues = [inbox_name(a, settings) for a in wanted] + [sweeper_queue(settings).name]
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        loglevel,
        "--without-mingle",
        "--without-gossip",
        "-n",
        hostname or f"agentpost.{os.getpid()}@%h",
    ]
    if beat:
        argv += ["-B", "-s", str(settings.home / "beat-schedule")]
    if settings.log_format == "json":
        # Only JSON lines (worker/logs.py): no banner, and warnings go through the logs
        # from the start (Celery's about running as root comes before its log set-up).
        argv = ["--quiet", *argv]
        logging.captureWarnings(True)
    celery_app.worker_main(argv)


db_app = typer.Typer(help="The store's schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the store's migrations (AGENTPOST_DATABASE_URL) up to REVISION."""
    import storage
    from wire.boundary import safe_database_url, store_errors
    from wire.settings import Settings

    settings = Settings()
    with store_errors(settings.database):
        reached = storage.upgrade(storage.engine_for(settings.database), revision)
    typer.echo(f"store at revision {reached} ({safe_database_url(settings.database)})")


@db_app.command("prune")
def db_prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Finished before this long ago (90s, 30m, 12h, 7d) or an ISO time."
        ),
    ],
    status: Annotated[str, typer.Option(help="delivered, dead, or all.")] = "all",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count; delete nothing.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Messages a transaction.")] = 1000,
) -> None:
    """Delete finished messages (delivered, dead) and their attempts, oldest first.

    The sweeper does the same by itself (AGENTPOST_RETAIN_DELIVERED_S, _DEAD_S); this is
    for a window of your own. A pruned message's idempotency key is free again.
    """
    import storage
    from messaging.cli_ops import parse_since
    from wire.boundary import store_errors
    from wire.settings import Settings

    if status not in ("delivered", "dead", "all"):
        raise typer.BadParameter(f"--status {status!r}: use delivered, dead or all")
    before = parse_since(older_than, "--older-than")
    windows = {
        "delivered_before": before if status in ("delivered", "all") else None,
        "dead_before": before if status in ("dead", "all") else None,
    }
    settings = Settings()
    with store_errors(settings.database):
        engine = storage.engine_for(settings.database)
        storage.create_schema(engine)
        if dry_run:
            total = storage.prunable(engine, **windows)
        else:
            total = storage.Pruned()
            lag_s = settings.rollup_lag_s
            while (pruned := storage.prune(engine, limit=batch, lag_s=lag_s, **windows)).messages:
                total += pruned
    when = datetime.fromtimestamp(before or 0, UTC).isoformat(timespec="seconds")
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{verb} {total.messages} message(s) and {total.attempts} attempt(s) finished before {when}"
    )


@db_app.command("current")
def db_current() -> None:
    """Print the store's revision and the one this agentpost needs."""
    import storage
    from wire.boundary import store_errors
    from wire.settings import Settings

    settings = Settings()
    with store_errors(settings.database):
        current = storage.current_revision(storage.engine_for(settings.database))
    head = storage.head_revision()
    state = "up to date" if current == head else "behind: run `agentpost db upgrade`"
    typer.echo(f"store {current or '(none)'}, needed {head}: {state}")


@app.command()
def beat(loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO") -> None:
    """Run the sweeper schedule (Celery beat); run exactly one per deployment."""
    from wire.app import create_app
    from wire.settings import Settings

    settings = Settings()
    settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_app(settings).start(["beat", "-s", str(settings.home / "beat-schedule"), "-l", loglevel])


@app.command()
def flower(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 5555,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    unauthenticated: Annotated[
        bool, typer.Option("--unauthenticated", help="Development only: no basic auth.")
    ] = False,
) -> None:
    """Run Flower on the same broker, with basic auth from AGENTPOST_FLOWER_BASIC_AUTH."""
    from messaging.flower import run_flower
    from wire.app import create_app
    from wire.settings import Settings

    run_flower(create_app(Settings()), port=port, address=address, unauthenticated=unauthenticated)


@app.command()
def metrics(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 9808,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    min_interval: Annotated[
        float, typer.Option(help="Seconds a scrape result is reused (protects the store).")
    ] = 5.0,
    unauthenticated: Annotated[
        bool, typer.Option("--unauthenticated", help="Development only: no bearer token.")
    ] = False,
) -> None:
    """Serve Prometheus metrics at /metrics (bearer token from AGENTPOST_METRICS_TOKEN)."""
    from messaging.client import Client
    from messaging.metrics import serve_metrics
    from wire.settings import Settings

    settings = Settings()
    token = settings.metrics_token.get_secret_value()
    if not token and not unauthenticated:
        raise typer.BadParameter(
            "the metrics endpoint needs AGENTPOST_METRICS_TOKEN "
            "(or --unauthenticated for local development)"
        )
    serve_metrics(
        Client(settings), address=address, port=port, token=token, min_interval_s=min_interval
    )


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Where the embedded broker and store live.")] = Path(
        ".agentpost/demo"
    ),
) -> None:
    """Run the demo on the embedded default: a worker, a correlated chain, a dead letter."""
    from messaging.demo import run_demo

    raise typer.Exit(run_demo(home))


cli_ops.register(app)
cli_gateway.register(app)


def main() -> None:
    """Console entry point: agentpost errors print as one line, not a traceback."""
    try:
        app()
    except AgentpostError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        code = next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), 3)
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
