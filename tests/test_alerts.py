"""Alerts on dead-lettering: the Python hook and the webhook, never blocking delivery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tests.conftest import Backend, Worker, wait_final, wait_for

pytestmark = pytest.mark.slow


class _Hook(BaseHTTPRequestHandler):
    posts: ClassVar[list[tuple[int, dict[str, Any]]]] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        status = 500 if cls.failures_left > 0 else 200
        cls.failures_left -= 1
        cls.posts.append((status, body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_alerts_fire_once_per_dead_letter_and_a_failing_webhook_never_blocks(
    backend: Backend, start_worker: Callable[..., Worker]
) -> None:
    _Hook.posts, _Hook.failures_left = [], 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=s3cret-token"
    backend.env.update(
        {"AGENTPOST_ALERT_WEBHOOK_URL": url, "AGENTPOST_ALERT_HOOK": "tests.agents:alert"}
    )
    worker = start_worker("--agents", "doomed,echo")
    client = backend.client()
    try:
        # Given two dead letters, and a webhook that fails its first two calls
        dead = [client.send("doomed", {"n": n}, sender="t").message_id for n in range(2)]
        for message_id in dead:
            assert wait_final(client, message_id).dead_reason == "exhausted"

        def accepted() -> list[str]:
            ids = [body["message_id"] for status, body in _Hook.posts if status == 200]
            return ids if len(ids) == 2 else []

        # Then the webhook got each one (after retries), and the hook fired once per letter
        assert sorted(wait_for(accepted, 30, "both webhook posts")) == sorted(dead)
        assert [s for s, _ in _Hook.posts].count(500) == 2
        assert all(body["reason"] == "exhausted" for _, body in _Hook.posts)
        alerts = wait_for(
            lambda: len(backend.runs("alerts")) == 2 and backend.runs("alerts"),
            10,
            "the Python alert hook",
        )
        assert sorted(a["id"] for a in alerts) == sorted(dead)
    finally:
        server.shutdown()
        server.server_close()
    # When the webhook is down, delivery goes on and the failure is logged without the token
    late = client.send("doomed", None, sender="t").message_id
    echoed = client.send("echo", "still here", sender="t").message_id
    assert wait_final(client, echoed).status == "delivered"
    assert wait_final(client, late).status == "dead"
    log = wait_for(
        lambda: "alert webhook on 127.0.0.1 failed" in (text := worker.log.read_text()) and text,
        30,
        "the webhook failure in the worker log",
    )
    assert "s3cret-token" not in log
