"""The JSON of the wire: one strict, compact encoding for envelopes, rows and task bodies."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dump_json", "task_body"]

# Celery's protocol-2 body is ``[args, kwargs, embed]``; a delivery has no callbacks.
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def dump_json(value: Any) -> str:
    """Strict, compact JSON (no NaN), or ``TypeError``/``ValueError`` naming the problem."""
    return _ENCODER.encode(value)


def task_body(envelope_json: str) -> bytes:
    """The body of an ``agentpost.deliver`` task around an envelope already encoded.

    Built around the JSON the store keeps, so a send encodes its payload once (Celery
    would encode the whole envelope again into the task's arguments).
    """
    return f"[[{envelope_json}],{{}},{_EMBED}]".encode()
