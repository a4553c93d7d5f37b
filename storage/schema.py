"""The store's schema as callers see it: create on first use, refuse a stale one."""

from __future__ import annotations

from sqlalchemy import Engine

from storage import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.migrate import ensure_schema

__all__ = ["create_schema"]


def create_schema(engine: Engine) -> None:
    """Bring an empty store to the newest schema (Alembic); refuse one that is behind.

    Raises:
        SchemaBehind: the store is at an older revision: run ``agentpost db upgrade``.
    """
    ensure_schema(engine)
