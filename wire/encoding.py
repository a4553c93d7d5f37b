"""The JSON of the wire: one strict, compact encoding for envelopes, rows and task bodies."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dump_json", "task_body", "task_kwargs"]

# Celery's protocol-2 body is ``[args, kwargs, embed]``; a delivery has no callbacks.
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dump_json(value: Any) -> str:
    """Strict, compact JSON (no NaN), or ``TypeError``/``ValueError`` naming the problem."""
    return _ENCODER.encode(value)


def task_body(envelope_json: str, created_at: float | None = None) -> bytes:
    """The body of an ``agentpost.deliver`` task around an envelope already encoded.

    Built around the JSON the store keeps, so a send encodes its payload once (Celery
    would encode the whole envelope again into the task's arguments). ``created_at``,
    the row's, goes in the keyword arguments: the claim reads only its week's partition.
    """
    return f"[[{envelope_json}],{task_kwargs(created_at)},{_EMBED}]".encode()


def task_kwargs(created_at: float | None) -> str:
    """The keyword arguments of an ``agentpost.deliver`` task, as JSON."""
    return "{}" if created_at is None else f'{{"created_at":{created_at!r}}}'
