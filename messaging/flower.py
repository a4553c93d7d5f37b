"""Flower under agentpost's rule that every HTTP endpoint is authenticated."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wire.errors import ConfigurationError

if TYPE_CHECKING:
    from wire.app import AgentpostCelery

__all__ = ["run_flower"]


def _protect_open_views() -> None:
    # Flower 2 serves /metrics and /healthcheck to anyone, even with basic auth on;
    # give them the same check as every other view (Prometheus and probes send auth).
    # Imported here: Flower and Tornado load only in the process that serves Flower.
    from flower.views import monitor  # noqa: PLC0415
    from tornado import web  # noqa: PLC0415

    for view in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(view.get, "__wrapped__", None):
            view.get = web.authenticated(view.get)


def run_flower(app: AgentpostCelery, *, port: int, address: str, unauthenticated: bool) -> None:
    """Run Flower on the app's broker, with basic auth from ``AGENTPOST_FLOWER_BASIC_AUTH``."""
    auth = app.settings.flower_basic_auth.get_secret_value()
    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line, where ps shows it
        _protect_open_views()
    elif unauthenticated:
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise ConfigurationError(
            "Flower needs AGENTPOST_FLOWER_BASIC_AUTH=user:password "
            "(or --unauthenticated for local development)"
        )
    app.start(["flower", f"--port={port}", f"--address={address}"])
