"""Alembic environment of the store: the URL comes from the caller, never from a file."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from storage import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.migrate import include_name

config = context.config
target_metadata = SQLModel.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("agentpost runs its migrations through storage.migrate")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        version_table="agentpost_alembic_version",
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
