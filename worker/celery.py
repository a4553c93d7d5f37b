"""The app instance for Celery's own command line.

``AGENTPOST_AGENT_MODULES=my.agents celery -A worker.celery worker -Q agent.writer``
runs a worker exactly as ``agentpost worker my.agents --agents writer`` does.
"""

from __future__ import annotations

from wire.app import create_app

__all__ = ["app"]

app = create_app()
