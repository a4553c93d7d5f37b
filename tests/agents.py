"""Agents the behaviour suite runs in real worker processes.

Each handler run appends a line to ``$AGENTPOST_TEST_SPOOL/<agent>.log`` so a test
can count exactly how many times a handler ran, across processes and crashes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from messaging import Context, Envelope, PermanentError, Retry, agent

log = logging.getLogger("tests.agents")


def _trace_to_file(path: str) -> None:
    """Export this worker's spans as JSON lines, so a test can check their parents."""
    from opentelemetry import trace  # noqa: PLC0415  (only when the test asks for it)
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            with open(path, "a") as fh:
                for span in spans:
                    assert isinstance(span, ReadableSpan) and span.context is not None
                    record = {
                        "name": span.name,
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "attributes": dict(span.attributes or {}),
                    }
                    fh.write(json.dumps(record) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


if os.environ.get("AGENTPOST_TEST_TRACE_FILE"):
    _trace_to_file(os.environ["AGENTPOST_TEST_TRACE_FILE"])


def _spool() -> Path:
    return Path(os.environ["AGENTPOST_TEST_SPOOL"])


def _record(msg: Envelope, ctx: Context, event: str) -> None:
    line = json.dumps(
        {
            "id": str(msg.id),
            "attempt": ctx.attempt,
            "event": event,
            "pid": os.getpid(),
            "at": time.time(),
        }
    )
    with (_spool() / f"{msg.receiver}.log").open("a") as fh:
        fh.write(line + "\n")


def _payload(msg: Envelope) -> dict[str, Any]:
    return msg.payload if isinstance(msg.payload, dict) else {}


@agent("echo")
def echo(msg: Envelope, ctx: Context) -> Any:
    _record(msg, ctx, "run")
    log.info("echo handled")  # a handler's own line carries the delivery fields too
    return msg.payload


@agent("flaky", max_retries=5)
def flaky(msg: Envelope, ctx: Context) -> dict[str, int]:
    _record(msg, ctx, "run")
    if ctx.attempt < int(_payload(msg).get("succeed_on", 3)):
        raise ConnectionError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@agent("doomed", max_retries=2)
def doomed(msg: Envelope, ctx: Context) -> None:
    _record(msg, ctx, "run")
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


@agent("rejecter")
def rejecter(msg: Envelope, ctx: Context) -> None:
    _record(msg, ctx, "run")
    raise PermanentError("this message can never be handled")


@agent(
    "picky", max_retries=2, backoff_s=0.05, retry_on=[TimeoutError, OSError], give_up_on=[KeyError]
)
def picky(msg: Envelope, ctx: Context) -> None:
    """Raises the builtin error its payload names: ``{"raise": "KeyError"}``."""
    _record(msg, ctx, "run")
    import builtins  # noqa: PLC0415

    raise getattr(builtins, _payload(msg)["raise"])("raised on purpose")


@agent("patient", max_retries=0)
def patient(msg: Envelope, ctx: Context) -> str:
    """Asks to be tried again later until it has run ``{"postpone": N}`` times."""
    _record(msg, ctx, "run")
    if len([r for r in _runs("patient") if r["id"] == str(msg.id)]) <= _payload(msg)["postpone"]:
        raise Retry("not yet", after_s=0.2)
    return "done at last"


@agent("sleepy", max_retries=1, backoff_s=0.05, time_limit_s=0.5)
def sleepy(msg: Envelope, ctx: Context) -> str:
    """Sleeps ``{"sleep": S}`` seconds, past its time limit when S > 0.5."""
    _record(msg, ctx, "run")
    time.sleep(_payload(msg)["sleep"])
    _record(msg, ctx, "woke")
    return "rested"


@agent("sleepy_async", max_retries=1, backoff_s=0.05, time_limit_s=0.5)
async def sleepy_async(msg: Envelope, ctx: Context) -> str:
    _record(msg, ctx, "run")
    await asyncio.sleep(_payload(msg)["sleep"])
    _record(msg, ctx, "woke")
    return "rested"


@agent("bounded", max_backlog=3)
def bounded(msg: Envelope, ctx: Context) -> str:
    _record(msg, ctx, "run")
    time.sleep(_payload(msg).get("sleep", 0))
    return "ok"


class Brief(BaseModel):
    """What the typed agent accepts."""

    topic: str
    words: int = Field(gt=0)


class Draft(BaseModel):
    """What the typed agent answers."""

    title: str
    words: int


@agent("typed", payload=Brief, reply=Draft)
def typed(msg: Envelope, ctx: Context) -> Draft | dict[str, Any]:
    brief = msg.payload
    assert isinstance(brief, Brief), f"the handler got {type(brief).__name__}"
    if brief.topic == "bad reply":
        return {"title": brief.topic}  # no words: not a Draft
    return Draft(title=f"{type(brief).__name__}: {brief.topic}", words=brief.words)


def _runs(agent_name: str) -> list[dict[str, Any]]:
    log = _spool() / f"{agent_name}.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line]


@agent("unencodable", max_retries=5)
def unencodable(msg: Envelope, ctx: Context) -> Any:
    """Replies with a set, which JSON has no form for."""
    _record(msg, ctx, "run")
    return {"tags": {"a", "b"}}


@agent("needs_session", max_retries=5)
def needs_session(msg: Envelope, ctx: Context) -> int:
    """Writes through ctx.session, which only exactly-once messages have."""
    _record(msg, ctx, "run")
    return int(ctx.session.execute(text("SELECT 1")).scalar_one())


@agent("gate", max_retries=0)
def gate(msg: Envelope, ctx: Context) -> str:
    _record(msg, ctx, "run")
    if not (_spool() / "gate-open").exists():
        raise RuntimeError("gate closed")
    return "passed"


@agent("limited", max_concurrency=2)
def limited(msg: Envelope, ctx: Context) -> None:
    """Two at once in the whole deployment; sleeps ``{"sleep_s": S}`` between its stamps."""
    _record(msg, ctx, "start")
    time.sleep(float(_payload(msg).get("sleep_s", 0.3)))
    _record(msg, ctx, "end")


@agent("metered", rate_limit="4/s")
def metered(msg: Envelope, ctx: Context) -> None:
    _record(msg, ctx, "run")


@agent("breaker", max_retries=20, backoff_s=0.05, circuit_after=3, circuit_cooldown_s=10)
def breaker(msg: Envelope, ctx: Context) -> str:
    """Fails while the spool holds ``breaker-broken``."""
    broken = (_spool() / "breaker-broken").exists()
    _record(msg, ctx, "failed" if broken else "ok")
    if broken:
        raise ConnectionError("upstream down")
    return "ok"


@agent("slow")
def slow(msg: Envelope, ctx: Context) -> dict[str, int]:
    _record(msg, ctx, "start")
    if ctx.attempt == 1:
        time.sleep(float(_payload(msg).get("sleep_s", 2.0)))
    _record(msg, ctx, "done")
    return {"attempt": ctx.attempt}


@agent("parent", max_retries=3)
def parent(msg: Envelope, ctx: Context) -> str:
    _record(msg, ctx, "run")
    ctx.send("echo", {"child": 1})
    ctx.send("echo", {"child": 2})
    if ctx.attempt == 1:
        raise ConnectionError("fails after sending its children")
    return "sent"


def alert(letter: Any) -> None:
    """The alert hook the suite configures: it records each dead letter."""
    with (_spool() / "alerts.log").open("a") as fh:
        fh.write(json.dumps({"id": letter.message_id, "reason": letter.reason}) + "\n")


@agent("asyncecho")
async def asyncecho(msg: Envelope, ctx: Context) -> Any:
    _record(msg, ctx, "run")
    await asyncio.sleep(0.01)
    return {"async": msg.payload}


class _OwnTables(DeclarativeBase):
    """An agent's own tables (not the store's metadata: nothing ever creates them)."""


class NeverCreated(_OwnTables):
    __tablename__ = "test_never_created"
    id: Mapped[int] = mapped_column(primary_key=True)


@agent("unmade_table", max_retries=1, backoff_s=0.1)
def unmade_table(msg: Envelope, ctx: Context) -> str:
    """Adds an ORM row to a table nobody created: the error comes at the flush."""
    _record(msg, ctx, "run")
    ctx.session.add(NeverCreated(id=ctx.attempt))
    return "added"


class Invoice(_OwnTables):
    __tablename__ = "test_invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(unique=True)


@agent("invoicer", tables=[Invoice])
def invoicer(msg: Envelope, ctx: Context) -> str:
    """Writes to a table of its own, which the worker serving it creates."""
    _record(msg, ctx, "run")
    ctx.session.add(Invoice(message_id=str(msg.id)))
    return "billed"


@agent("slow_async")
async def slow_async(msg: Envelope, ctx: Context) -> dict[str, int]:
    """Sleeps past any time limit on its first attempt; records being cancelled."""
    _record(msg, ctx, "start")
    if ctx.attempt == 1:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            _record(msg, ctx, "cancelled")
            raise
    return {"attempt": ctx.attempt}


@agent("ledger", max_retries=5)
def ledger(msg: Envelope, ctx: Context) -> int:
    # The effect: one ledger row per handler run, written through the store's session.
    ctx.session.execute(
        text("INSERT INTO test_ledger (message_id, attempt) VALUES (:m, :a)"),
        {"m": str(msg.id), "a": ctx.attempt},
    )
    ctx.session.flush()
    _record(msg, ctx, "wrote")
    if _payload(msg).get("crash_on") == ctx.attempt:
        os.kill(os.getpid(), signal.SIGKILL)  # between the handler's write and completion
    return ctx.attempt


@agent("rendezvous", max_retries=0)
async def rendezvous(msg: Envelope, ctx: Context) -> dict[str, int]:
    """Waits until ``parties`` deliveries of it are running at once: only concurrency ends it."""
    loop = id(asyncio.get_running_loop())
    _record(msg, ctx, f"run:{loop}")
    parties = int(_payload(msg).get("parties", 2))
    deadline = time.monotonic() + 20
    log = _spool() / "rendezvous.log"
    while sum(1 for _ in log.open()) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(1 for _ in log.open())} of {parties} ran at once")
        await asyncio.sleep(0.02)
    return {"met": parties}
