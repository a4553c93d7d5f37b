"""Tables an agent owns in the store's database, for its exactly-once writes.

An agent declares them (``@agent(..., tables=[Invoice])``) and the worker that serves
it creates the missing ones when it starts, after the store's own schema. They are the
agent's: agentpost never alters or drops them (a changed model needs the agent's own
migration), and the store's ``agentpost_*`` tables stay Alembic's alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, Table, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import sort_tables

__all__ = ["create_owned_tables"]

# Any constant; it names this lock among the database's advisory locks.
_OWNED_TABLES_LOCK_KEY = 0x61676F74


def create_owned_tables(engine: Engine, tables: Sequence[Table]) -> list[str]:
    """Create those of ``tables`` that do not exist yet; returns the names created.

    Workers starting together take turns (a PostgreSQL advisory lock held by the
    transaction; SQLite's own write lock), so a table is created once.
    """
    if not tables:
        return []
    created: list[str] = []
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _OWNED_TABLES_LOCK_KEY})
        for table in sort_tables(tables):
            if inspect(conn).has_table(table.name, schema=table.schema):
                continue
            try:
                table.create(conn)
            except SQLAlchemyError:
                # Another process made it between the look and the create (SQLite).
                if not inspect(conn).has_table(table.name, schema=table.schema):
                    raise
                continue
            created.append(table.name)
    return created
