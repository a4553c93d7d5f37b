"""Operator commands: send, request, status, dlq, trace, agents (``--json`` for scripts)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from wire.errors import RequestTimeout

if TYPE_CHECKING:
    from messaging.client import Client
    from messaging.results import MessageState

__all__ = ["JsonOpt", "emit", "parse_since", "register"]

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _client(*, create_store: bool = True) -> Client:
    """A client from the environment (imported here: start-up time, see cli.py)."""
    from messaging.client import Client

    return Client(create_store=create_store)


def _dump(value: Any) -> Any:
    # A pydantic model (checked by its method: pydantic is not imported for --help).
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def emit(value: Any, as_json: bool, render: Any = None) -> None:
    if as_json:
        data = [_dump(v) for v in value] if isinstance(value, list) else _dump(value)
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        console.print(render if render is not None else value)


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc.msg} (quote it: '{{\"a\": 1}}')") from None


def parse_since(text: str | None, option: str = "--since") -> float | None:
    """``30m``, ``2h``, ``1d`` (that long ago) or an ISO time, as epoch seconds."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].isdigit():
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option} {text!r}: use 30m, 2h, 1d or an ISO time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _status_table(states: list[MessageState]) -> Table:
    from messaging.render import cells

    table = Table("id", "sender → receiver", "status", "reason", "attempts", "finished", "error")
    for s in states:
        finished = s.finished_at.strftime("%Y-%m-%d %H:%M:%S") if s.finished_at else ""
        table.add_row(
            *cells(
                s.message_id,
                f"{s.sender} → {s.receiver}",
                s.status,
                s.dead_reason or "",
                s.attempts,
                finished,
                (s.error or "")[:60],
            )
        )
    return table


def register(app: typer.Typer) -> None:
    """Add the operator commands to the ``agentpost`` command line."""

    @app.command()
    def send(
        receiver: str,
        payload: Annotated[str, typer.Argument(help="The payload, as JSON.")],
        sender: Annotated[str, typer.Option(help="Sending agent's name.")] = "cli",
        correlation: Annotated[str | None, typer.Option(help="Correlation id.")] = None,
        key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
        priority: Annotated[str, typer.Option(help="low|normal|high|urgent or 0-9.")] = "normal",
        ttl: Annotated[float | None, typer.Option(help="Seconds before it expires.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send one message (at-least-once) and print its id."""
        with _client() as client:
            prio: Any = int(priority) if priority.isdigit() else priority
            result = client.send(
                receiver,
                _payload(payload),
                sender=sender,
                correlation_id=correlation,
                idempotency_key=key,
                priority=prio,
                ttl_s=ttl,
            )
        emit(
            result,
            as_json,
            f"{result.message_id} {'(duplicate) ' if result.duplicate else ''}{result.status}",
        )

    @app.command()
    def request(
        receiver: str,
        payload: Annotated[str, typer.Argument(help="The payload, as JSON.")],
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 30.0,
        sender: Annotated[str, typer.Option(help="Sending agent's name.")] = "cli",
        as_json: JsonOpt = False,
    ) -> None:
        """Send a message and print its reply (exit 1 on timeout or dead, 130 on Ctrl-C)."""
        from messaging.envelope import Envelope

        with _client() as client:
            # Built first: its id is known to a Ctrl-C at any moment of the send.
            envelope = Envelope.build(receiver, _payload(payload), sender=sender)
            _print_reply(
                client, str(envelope.id), timeout, as_json, send=lambda: client.send(envelope)
            )

    @app.command()
    def result(
        message_id: str,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 0.0,
        as_json: JsonOpt = False,
    ) -> None:
        """The reply of a message, waiting up to --timeout (exit 1 on timeout or dead)."""
        with _client(create_store=False) as client:
            _print_reply(client, client.complete_id(message_id), timeout, as_json)

    @app.command()
    def status(message_id: str, as_json: JsonOpt = False) -> None:
        """A message's status, reply or error, and every attempt (any unique id prefix)."""
        with _client(create_store=False) as client:
            state = client.status(client.complete_id(message_id))
        from messaging.render import chain_tree

        emit(state, as_json, chain_tree([state]))

    @app.command()
    def trace(
        correlation_id: str,
        mermaid: Annotated[bool, typer.Option("--mermaid", help="A sequence diagram.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """A correlation chain as a tree, with statuses, attempts and timings."""
        with _client(create_store=False) as client:
            states = client.trace(client.complete_id(correlation_id, correlation=True))
        from messaging.render import chain_tree, mermaid_sequence

        if mermaid:
            typer.echo(mermaid_sequence(states))
            return
        emit(states, as_json, chain_tree(states))

    agents_app = typer.Typer(
        help="Registered agents; 'agents show NAME' for one agent's contract.",
        invoke_without_command=True,
    )
    app.add_typer(agents_app, name="agents")

    @agents_app.callback()
    def agents(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        """Registered agents with queue depth, consumers online, message counts and contract."""
        if ctx.invoked_subcommand is not None:
            return
        with _client(create_store=False) as client:
            stats = client.agent_stats()
        from messaging.render import cells

        table = Table(
            "agent",
            "kind",
            "queue depth",
            "consumers",
            "queued",
            "delivered",
            "retrying",
            "dead",
            "contract",
        )
        for row in stats:
            table.add_row(
                *cells(
                    row.name,
                    row.kind,
                    _opt(row.queue_depth),
                    _opt(row.consumers),
                    row.counts.get("queued", 0),
                    row.counts.get("delivered", 0),
                    row.counts.get("retrying", 0),
                    row.counts.get("dead", 0),
                    row.contract,
                )
            )
        emit(stats, as_json, table)

    @agents_app.command("show")
    def agents_show(name: str, as_json: JsonOpt = False) -> None:
        """One agent's contract: its limits and the JSON Schemas of its payload and reply."""
        with _client(create_store=False) as client:
            found = {a.name: a for a in client.agents()}
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            typer.echo(f"no agent {name!r} (registered: {known})", err=True)
            raise typer.Exit(2)
        info = found[name]
        if as_json:
            emit(info, True)
            return
        typer.echo(f"{info.name} ({info.kind}): {info.contract() or 'no contract declared'}")
        for label, schema in (("payload", info.payload_schema), ("reply", info.reply_schema)):
            if schema is not None:
                typer.echo(f"\n{label} schema:\n{json.dumps(schema, indent=2)}")

    dlq = typer.Typer(help="Dead letters: list, show, redrive, purge.", no_args_is_help=True)
    app.add_typer(dlq, name="dlq")

    @dlq.command("list")
    def dlq_list(
        agent: Annotated[str | None, typer.Option(help="Only this receiver.")] = None,
        since: Annotated[str | None, typer.Option(help="30m, 2h, 1d or an ISO time.")] = None,
        reason: Annotated[
            str | None, typer.Option(help="exhausted|expired|invalid|rejected")
        ] = None,
        limit: int = 100,
        as_json: JsonOpt = False,
    ) -> None:
        """Dead letters, newest first."""
        with _client(create_store=False) as client:
            states = client.dead_letters(
                receiver=agent, reason=reason, since=parse_since(since), limit=limit
            )
        emit(states, as_json, _status_table(states))

    @dlq.command("show")
    def dlq_show(message_id: str, as_json: JsonOpt = False) -> None:
        """One dead letter: payload, and the error and traceback of every attempt."""
        with _client(create_store=False) as client:
            state = client.status(client.complete_id(message_id))
        if as_json:
            emit(state, True)
            return
        from messaging.render import dead_letter_panel

        console.print(dead_letter_panel(state))
        for attempt in state.attempt_log:
            if attempt.traceback:
                console.rule(f"attempt {attempt.number} traceback")
                console.print(attempt.traceback)

    def _select(
        client: Client,
        message_id: str | None,
        correlation: str | None,
        agent: str | None,
        all_: bool,
    ) -> list[str]:
        if sum(bool(x) for x in (message_id, correlation, agent, all_)) != 1:
            raise typer.BadParameter("give one of: MESSAGE_ID, --correlation, --agent, --all")
        if message_id:
            return [client.complete_id(message_id)]
        states = client.dead_letters(receiver=agent, correlation_id=correlation, limit=100_000)
        return [s.message_id for s in states]

    @dlq.command("redrive")
    def dlq_redrive(
        message_id: Annotated[str | None, typer.Argument()] = None,
        correlation: Annotated[str | None, typer.Option()] = None,
        agent: Annotated[str | None, typer.Option()] = None,
        all_: Annotated[bool, typer.Option("--all")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Send dead messages again (same id and key, attempt count reset, round recorded)."""
        with _client() as client:
            results = [
                client.redrive(m) for m in _select(client, message_id, correlation, agent, all_)
            ]
        emit(results, as_json, f"redriven: {len(results)}")

    @dlq.command("purge")
    def dlq_purge(
        message_id: Annotated[str | None, typer.Argument()] = None,
        correlation: Annotated[str | None, typer.Option()] = None,
        agent: Annotated[str | None, typer.Option()] = None,
        all_: Annotated[bool, typer.Option("--all")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Delete dead messages and their attempts for good."""
        with _client() as client:
            ids = _select(client, message_id, correlation, agent, all_)
            if not yes and not typer.confirm(f"Delete {len(ids)} dead message(s)?"):
                raise typer.Abort()
            removed = client.purge(ids)
        emit({"purged": removed}, as_json, f"purged: {removed}")


def _print_reply(
    client: Client,
    message_id: str,
    timeout_s: float,
    as_json: bool,
    *,
    send: Callable[[], object] | None = None,
) -> None:
    """(Send, then) wait for the reply of ``message_id`` and print it; a timeout or
    Ctrl-C says how to follow the message, which is delivered all the same."""
    follow = (
        f"follow it with: agentpost status {message_id[:8]}  "
        f"or  agentpost result {message_id[:8]} --timeout 30"
    )
    sent = send is None
    try:
        if send is not None:
            send()
            sent = True
        reply = client.result(message_id, timeout_s=timeout_s)
    except RequestTimeout as exc:
        typer.secho(f"timed out: {exc}; {follow}", err=True, fg="yellow")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        said = "was sent" if sent else "was being sent (the status says whether it was stored)"
        typer.secho(f"\ninterrupted: {message_id} {said}; {follow}", err=True, fg="yellow")
        raise typer.Exit(130) from None
    emit(reply, as_json, json.dumps(reply.payload, indent=2))


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)
