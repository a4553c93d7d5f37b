"""Bad input gets an error naming the problem, and nothing is stored or enqueued."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import func, select

import storage
from messaging import (
    Client,
    Envelope,
    InvalidEnvelope,
    PayloadTooLarge,
    UnknownAgent,
)
from storage.tables import Message, table_of
from tests.conftest import Backend, Worker
from wire import create_app, inbox_queue

CASES: list[tuple[str, Callable[[Client], Any], type[Exception], str]] = [
    (
        "bad receiver",
        lambda c: c.send("Echo!", 1, sender="t"),
        InvalidEnvelope,
        "agent name 'Echo!' is invalid",
    ),
    (
        "bad sender",
        lambda c: c.send("echo", 1, sender="a" * 65),
        InvalidEnvelope,
        "is invalid: use 1-64",
    ),
    ("no sender", lambda c: c.send("echo", 1), InvalidEnvelope, "sender is required"),
    (
        "set payload",
        lambda c: c.send("echo", {1, 2}, sender="t"),
        InvalidEnvelope,
        "payload is not JSON-serialisable: Object of type set",
    ),
    (
        "object payload",
        lambda c: c.send("echo", {"x": object()}, sender="t"),
        InvalidEnvelope,
        "payload is not JSON-serialisable",
    ),
    (
        "nan payload",
        lambda c: c.send("echo", [math.nan], sender="t"),
        InvalidEnvelope,
        "Out of range float values",
    ),
    (
        "nan in metadata",
        lambda c: c.send("echo", 1, sender="t", metadata={"x": math.inf}),
        InvalidEnvelope,
        "metadata is not JSON-serialisable",
    ),
    (
        "lone surrogate payload",
        lambda c: c.send("echo", "\ud800", sender="t"),
        InvalidEnvelope,
        "payload is not JSON-serialisable",
    ),
    (
        "NUL in correlation id",
        lambda c: c.send("echo", 1, sender="t", correlation_id="a\x00b"),
        InvalidEnvelope,
        "correlation_id: must not contain NUL",
    ),
    (
        "too large",
        lambda c: c.send("echo", "x" * 2000, sender="t"),
        PayloadTooLarge,
        "over AGENTPOST_MAX_PAYLOAD_BYTES=1024",
    ),
    (
        "unknown receiver",
        lambda c: c.send("ehco", 1, sender="t"),
        UnknownAgent,
        "unknown agent 'ehco' (registered: ",
    ),
    (
        "bad priority",
        lambda c: c.send("echo", 1, sender="t", priority="asap"),
        InvalidEnvelope,
        "priority: 'asap' is not a priority",
    ),
    (
        "bad ttl",
        lambda c: c.send("echo", 1, sender="t", ttl_s=-1),
        InvalidEnvelope,
        "ttl_s must be positive",
    ),
    (
        "unknown schema",
        lambda c: c.send(Envelope(sender="t", receiver="echo", schema_version="3.1")),
        InvalidEnvelope,
        "unknown major version",
    ),
    (
        "batch with one bad",
        lambda c: c.send_many(
            [
                Envelope(sender="t", receiver="echo", payload=1),
                Envelope(sender="t", receiver="nobody", payload=2),
            ]
        ),
        UnknownAgent,
        "'nobody'",
    ),
]


@pytest.mark.slow
def test_bad_input_is_refused_and_leaves_nothing(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    backend.env["AGENTPOST_MAX_PAYLOAD_BYTES"] = "1024"
    start_worker().stop()  # registers the agents, then nothing consumes the inbox
    client = backend.client()
    for label, call, error, text in CASES:
        with pytest.raises(error) as info:
            call(client)
        assert text in str(info.value), label
    engine = storage.engine_for(backend.settings.database)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table_of(Message))).scalar() == 0
    settings = backend.settings
    app = create_app(settings)
    with Connection(settings.broker, transport_options=app.conf.broker_transport_options) as conn:
        queue = inbox_queue("echo", settings)(conn.default_channel)
        assert queue.queue_declare().message_count == 0
