"""The Prometheus exporter: the store's per-agent totals and the broker's queue depths.

One small process (``agentpost metrics``) serves the whole deployment, like Celery's
event exporters do: the figures come from the store, so they count every worker and
every sender, and survive restarts. Scrapes are cached for ``min_interval_s`` so a
busy Prometheus cannot turn into a load on the database.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

import storage
from messaging.client import Client
from wire.boundary import broker_errors, store_errors
from wire.inbox import inbox_depths

__all__ = ["LATENCY_BOUNDS_S", "StoreCollector", "metrics_app", "serve_metrics"]

log = logging.getLogger("agentpost.metrics")

LATENCY_BOUNDS_S = storage.LATENCY_BOUNDS_S
# Attempt outcomes as the counters name them.
_OUTCOMES = {
    "delivered": "delivered",
    "retry": "retried",
    "postponed": "postponed",
    "dead": "dead",
    "lost": "lost",
}


class StoreCollector(Collector):
    """Reads the store and the broker when Prometheus scrapes."""

    def __init__(self, client: Client, *, min_interval_s: float = 5.0) -> None:
        self._client = client
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._cached_at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._cached_at >= self._min_interval_s:
                self._cached = list(self._read())
                self._cached_at = time.monotonic()
            return list(self._cached)

    def _read(self) -> Iterator[Metric]:
        client = self._client
        with store_errors(client.settings.database):
            totals = storage.agent_totals(client.engine, LATENCY_BOUNDS_S)
        registered = client.agents()
        handlers = [a.name for a in registered if a.kind == "handler"]
        with broker_errors(client.settings.broker):
            depths = inbox_depths(client.app, handlers) if handlers else {}

        sent = CounterMetricFamily(
            "agentpost_messages_sent", "Messages accepted for an agent.", labels=["agent"]
        )
        attempts = {
            name: CounterMetricFamily(
                f"agentpost_messages_{name}",
                f"Delivery attempts that ended {name}.",
                labels=["agent"],
            )
            for name in _OUTCOMES.values()
        }
        current = GaugeMetricFamily(
            "agentpost_messages", "Messages in the store by status.", labels=["agent", "status"]
        )
        latency = HistogramMetricFamily(
            "agentpost_delivery_latency_seconds",
            "From acceptance to delivery (retries included), by agent.",
            labels=["agent"],
        )
        for agent, row in sorted(totals.items()):
            sent.add_metric([agent], row.sent)
            for outcome, name in _OUTCOMES.items():
                attempts[name].add_metric([agent], row.attempts.get(outcome, 0))
            for status, count in sorted(row.by_status.items()):
                current.add_metric([agent, status], count)
            bounds = zip(LATENCY_BOUNDS_S, row.latency_buckets, strict=True)
            buckets = [(repr(float(bound)), n) for bound, n in bounds]
            latency.add_metric([agent], [*buckets, ("+Inf", row.latency_count)], row.latency_sum_s)
        yield sent
        yield from attempts.values()
        yield current
        yield latency

        depth = GaugeMetricFamily(
            "agentpost_queue_depth", "Tasks waiting in an agent's broker inbox.", labels=["agent"]
        )
        for agent, waiting in sorted(depths.items()):
            if waiting is not None:
                depth.add_metric([agent], waiting)
        yield depth

        circuit = GaugeMetricFamily(
            "agentpost_circuit_open",
            "1 while an agent's circuit is open or half-open (its deliveries held), else 0.",
            labels=["agent"],
        )
        for info in registered:
            if info.circuit_after is not None:
                circuit.add_metric([info.name], 0 if info.circuit == "closed" else 1)
        yield circuit


def metrics_app(client: Client, *, token: str, min_interval_s: float = 5.0) -> Callable[..., Any]:
    """The WSGI app serving ``/metrics``; ``token`` empty means no authentication (dev)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(client, min_interval_s=min_interval_s))
    inner = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if token:
            given = environ.get("HTTP_AUTHORIZATION", "").encode()
            # Constant time: the comparison must not tell how much of a guess was right.
            if not hmac.compare_digest(given, expected):
                start_response(
                    "401 Unauthorized",
                    [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
                )
                return [b"unauthorized\n"]
        return inner(environ, start_response)  # type: ignore[no-any-return]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def serve_metrics(
    client: Client, *, address: str, port: int, token: str, min_interval_s: float = 5.0
) -> None:
    """Serve ``/metrics`` until interrupted."""
    app = metrics_app(client, token=token, min_interval_s=min_interval_s)
    with make_server(
        address, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    ) as server:
        log.info("agentpost metrics on http://%s:%d/metrics", address, port)
        server.serve_forever()
