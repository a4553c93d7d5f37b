"""The store's schema as callers see it: create on first use, refuse a stale one."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.migrate import VERSION_TABLE, ensure_schema

__all__ = ["create_schema", "drop_schema"]


def create_schema(engine: Engine) -> None:
    """Bring an empty store to the newest schema (Alembic); refuse one that is behind.

    Raises:
        SchemaBehind: the store is at an older revision: run ``agentpost db upgrade``.
    """
    ensure_schema(engine)


def drop_schema(engine: Engine) -> None:
    """Drop the store's tables and its migration record (tests, ``demo``)."""
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
