"""Async handlers share one event loop per worker process, and run concurrently on it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Backend, Worker, wait_final

pytestmark = pytest.mark.slow


def test_async_handlers_share_one_loop_and_run_at_once(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    # Given one worker process with a threads pool of 3
    start_worker("--agents", "rendezvous", "--pool", "threads", "--concurrency", "3")
    client = backend.client()
    # When three deliveries each wait until all three are running
    sent = [client.send("rendezvous", {"parties": 3}, sender="t").message_id for _ in range(3)]
    # Then all three met on their first attempt (which needs them to run at once)
    for message_id in sent:
        state = wait_final(client, message_id)
        assert (state.status, state.attempts, state.reply) == ("delivered", 1, {"met": 3})
    # on one event loop of one process
    runs = backend.runs("rendezvous")
    assert len({(r["pid"], r["event"]) for r in runs}) == 1
