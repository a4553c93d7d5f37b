"""The embedded broker under concurrent producers and consumers (real processes)."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from messaging import Settings
from wire.brokers import FILESYSTEM

# Big enough that a write takes a while: a consumer listing a half-written file is the race.
PAYLOAD = "x" * 256 * 1024
TRANSPORT = FILESYSTEM.transport_class


def _connection(root: Path, transport: str) -> Connection:
    # The folders the app uses, polled faster so the consumers race harder.
    settings = Settings(home=root, filesystem_polling_s=0.01)
    options = FILESYSTEM.transport_options(settings)
    return Connection("filesystem://", transport=transport, transport_options=options)


def _produce(root: str, transport: str, start: int, count: int) -> None:
    with _connection(Path(root), transport) as conn:
        producer = conn.Producer(serializer="json")
        for n in range(start, start + count):
            producer.publish({"n": n, "pad": PAYLOAD}, routing_key="inbox", declare=[_queue()])


def _consume(root: str, transport: str, out: str, stop_after_idle_s: float) -> None:
    seen: list[int] = []
    with _connection(Path(root), transport) as conn:

        def on_message(body: dict[str, Any], message: Any) -> None:
            seen.append(body["n"])
            message.ack()

        with conn.Consumer([_queue()], callbacks=[on_message], accept=["json"]):
            while True:
                try:
                    conn.drain_events(timeout=stop_after_idle_s)
                except TimeoutError:
                    break
    Path(out).write_text(json.dumps(seen))


def _queue() -> Queue:
    return Queue("inbox", Exchange("inbox", type="direct"), routing_key="inbox")


def _run(root: Path, transport: str) -> tuple[list[int], list[int | None]]:
    ctx = multiprocessing.get_context("spawn")
    producers = [
        ctx.Process(target=_produce, args=(str(root), transport, p * 150, 150)) for p in range(2)
    ]
    outs = [root / f"seen-{c}.json" for c in range(3)]
    consumers = [
        ctx.Process(target=_consume, args=(str(root), transport, str(o), 3.0)) for o in outs
    ]
    for proc in [*consumers, *producers]:
        proc.start()
    for proc in [*producers, *consumers]:
        proc.join(timeout=120)
    seen = [n for o in outs if o.exists() for n in json.loads(o.read_text())]
    return seen, [proc.exitcode for proc in [*producers, *consumers]]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX renames and locks")
def test_concurrent_consumers_take_every_message_once_and_never_a_partial_file(
    tmp_path: Path,
) -> None:
    # Given two producers and three consumers racing on one queue folder
    seen, exit_codes = _run(tmp_path, TRANSPORT)
    # Then no consumer died on a half-written file, and each message arrived exactly once
    assert exit_codes == [0] * 5
    assert sorted(seen) == list(range(300))
    assert list((tmp_path / "broker" / "queue").iterdir()) == []
