"""Example agents for the demo: a research chain, a flaky agent and a poison handler."""

from __future__ import annotations

from typing import Any

from messaging.agents import agent
from messaging.context import Context
from messaging.envelope import Envelope
from wire.errors import PermanentError

__all__ = ["flaky", "researcher", "reviewer", "writer"]


@agent("researcher")
def researcher(msg: Envelope, ctx: Context) -> dict[str, Any]:
    topic = str(msg.payload.get("topic", "?")) if isinstance(msg.payload, dict) else "?"
    notes = [f"{topic}: fact {i}" for i in range(1, 4)]
    ctx.send("writer", {"topic": topic, "notes": notes})
    return {"notes": len(notes)}


@agent("writer")
def writer(msg: Envelope, ctx: Context) -> dict[str, Any]:
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    draft = f"On {payload.get('topic')}: " + "; ".join(payload.get("notes", []))
    ctx.send("reviewer", {"draft": draft})
    ctx.send("flaky", {"draft": draft})
    return {"words": len(draft.split())}


@agent("reviewer", max_retries=2, backoff_s=0.2, backoff_max_s=1.0)
def reviewer(msg: Envelope, ctx: Context) -> dict[str, Any]:
    payload = msg.payload if isinstance(msg.payload, dict) else {}
    if payload.get("poison"):
        raise ValueError(f"cannot review {payload['poison']!r}")
    if payload.get("reject"):
        raise PermanentError("this draft can never be reviewed")
    return {"verdict": "approved", "length": len(str(payload.get("draft", "")))}


@agent("flaky", max_retries=4, backoff_s=0.2, backoff_max_s=1.0)
def flaky(msg: Envelope, ctx: Context) -> dict[str, Any]:
    # Fails on its first two attempts, as an agent behind a shaky API would.
    if ctx.attempt < 3:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return {"published": True, "attempt": ctx.attempt}
