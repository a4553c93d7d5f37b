"""Gateway commands: ``serve``, ``keys create|list|revoke``, ``audit``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from messaging.cli_ops import JsonOpt, emit, parse_since

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from wire.settings import Settings

# What keys may do (messaging.gateway.auth.OPERATIONS, which a test holds this to; not
# imported here, so that the CLI starts without the gateway's modules).
OPERATIONS_HELP = "Comma-separated operations: invoke, send, read, redrive."

__all__ = ["register"]


def _when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _settings() -> Settings:
    from wire.settings import Settings

    return Settings()


@contextmanager
def _store(settings: Settings, *, create: bool = False) -> Iterator[Engine]:
    """The store's engine; an empty database is created only for ``create`` (a key),
    refused otherwise (listing, revoking and the audit change nothing)."""
    import storage
    from wire.boundary import require_store, store_errors

    # The store boundary: a database that fails is one line (StoreUnavailable), not a trace.
    with store_errors(settings.database):
        if create:
            storage.create_schema(storage.engine_for(settings.database))
        else:
            require_store(settings.database)
        yield storage.engine_for(settings.database)


def register(app: typer.Typer) -> None:
    """Add the gateway commands to the ``agentpost`` command line."""
    keys = typer.Typer(help="Gateway API keys (stored only as HMAC digests).", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @app.command()
    def serve(
        port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    ) -> None:
        """Serve the HTTP gateway (OpenAPI at /openapi.json, A2A under /a2a/AGENT)."""
        import uvicorn

        from messaging.gateway.auth import check_gateway_settings
        from messaging.gateway.connections import DeadlineProtocol

        settings = _settings()
        check_gateway_settings(settings)  # refuse before binding the port
        uvicorn.run(
            "messaging.gateway.app:create_gateway",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=False,
            http=DeadlineProtocol,  # a deadline on reading each request
            timeout_keep_alive=settings.gateway_idle_timeout_s,
            limit_concurrency=settings.gateway_max_connections,
        )

    @keys.command("create")
    def keys_create(
        subject: Annotated[str, typer.Argument(help="The caller; it becomes the sender.")],
        agents: Annotated[str, typer.Option(help="Comma-separated agents it may call, or '*'.")],
        ops: Annotated[str, typer.Option(help=OPERATIONS_HELP)] = "invoke,send,read",
        as_json: JsonOpt = False,
    ) -> None:
        """Create a key and print it ONCE (only its digest is stored)."""
        from messaging.gateway.auth import create_api_key

        settings = _settings()
        with _store(settings, create=True) as engine:
            row, key = create_api_key(
                engine,
                settings,
                subject,
                agents=[a.strip() for a in agents.split(",") if a.strip()],
                operations=[o.strip() for o in ops.split(",") if o.strip()],
            )
        info = {"id": row.id, "subject": row.subject, "agents": row.agents, "ops": row.operations}
        if as_json:
            emit({**info, "key": key}, True)
        else:
            typer.echo(key)
            typer.echo(
                f"key {row.id} for {row.subject}: agents {row.agents}, ops {row.operations} "
                "(store it now: it is not shown again)",
                err=True,
            )

    @keys.command("list")
    def keys_list(as_json: JsonOpt = False) -> None:
        """Every key: id, subject, grants, created, revoked (never the key or digest)."""
        import storage

        with _store(_settings()) as engine:
            rows = storage.list_keys(engine)
        data = [
            {
                "id": r.id,
                "subject": r.subject,
                "agents": r.agents,
                "ops": r.operations,
                "created_at": _when(r.created_at),
                "revoked_at": _when(r.revoked_at) or None,
            }
            for r in rows
        ]
        from messaging.render import cells

        table = Table("id", "subject", "agents", "ops", "created", "revoked")
        for d in data:
            table.add_row(*cells(*(d[k] or "" for k in d)))
        emit(data, as_json, table)

    @keys.command("revoke")
    def keys_revoke(
        key_id: Annotated[str | None, typer.Argument(help="The key's id.")] = None,
        subject: Annotated[
            str | None,
            typer.Option(help="Revoke every key of it, and its JWTs issued until now."),
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Revoke a key by id, or every credential of a subject (keys, and JWTs issued
        until now: the JWTs it is issued later are accepted)."""
        import storage

        if (key_id is None) == (subject is None):
            raise typer.BadParameter("give a KEY_ID or --subject")
        with _store(_settings()) as engine:
            count = storage.revoke_keys(
                engine, key_id=key_id, subject=subject, now=datetime.now(UTC).timestamp()
            )
        if count == 0 and subject is None:
            typer.secho("no active key matched", err=True, fg="red")
            raise typer.Exit(1)
        said = f"revoked {count} key(s)"
        if subject is not None:
            said += f"; {subject}'s tokens issued until now are refused"
        emit({"revoked": count, "subject": subject}, as_json, said)

    @app.command()
    def audit(
        subject: Annotated[str | None, typer.Option(help="Only this caller.")] = None,
        since: Annotated[str | None, typer.Option(help="30m, 2h, 1d or an ISO time.")] = None,
        outcome: Annotated[
            str | None, typer.Option(help="ok, denied, limited, failed or timeout.")
        ] = None,
        limit: Annotated[int, typer.Option(min=1)] = 100,
        as_json: JsonOpt = False,
    ) -> None:
        """Who did what through the gateway, newest first (refusals included)."""
        import storage

        with _store(_settings()) as engine:
            rows = storage.audit_entries(
                engine,
                subject=subject,
                since=parse_since(since),
                outcome=outcome,
                limit=limit,
            )
        data = [
            {
                "at": _when(r.at),
                "subject": r.subject,
                "action": r.action,
                "agent": r.agent,
                "message_id": r.message_id,
                "outcome": r.outcome,
                "detail": r.detail,
                "count": r.count,
            }
            for r in rows
        ]
        from messaging.render import cells

        columns = ("at", "subject", "action", "agent", "message", "outcome", "detail", "count")
        table = Table(*columns)
        for d in data:
            table.add_row(*cells(*(d[k] or "" for k in d if k != "count")), str(d["count"]))
        emit(data, as_json, table)
