"""Creating the store's tables (migrations with Alembic come with the operations work)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables on SQLModel.metadata)

__all__ = ["create_schema", "drop_schema"]


def create_schema(engine: Engine) -> None:
    """Create every missing table and index; existing ones are left as they are."""
    SQLModel.metadata.create_all(engine)


def drop_schema(engine: Engine) -> None:
    """Drop the store's tables (tests and ``agentpost demo --fresh``)."""
    SQLModel.metadata.drop_all(engine)
