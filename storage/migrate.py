"""Migrations of the store (Alembic), and the check that a store is not behind.

Policy: an empty database is brought to the head on first use, so the embedded
default needs no set-up step. A database at an older revision is refused with the
command that fixes it: schema changes on a shared production store are an
operator's decision (``agentpost db upgrade``), never a side effect of a client.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

from storage.engine import engine_for
from storage.locks import schema_lock

__all__ = [
    "SchemaBehind",
    "current_revision",
    "ensure_schema",
    "has_store",
    "head_revision",
    "upgrade",
]

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: a process that only reads the store (the CLI's
# inspecting commands) never loads it.

VERSION_TABLE = "agentpost_alembic_version"
_MIGRATIONS = Path(__file__).with_name("migrations")
_FIRST_TABLE = "agentpost_messages"


class SchemaBehind(RuntimeError):
    """The store's schema is older than this code (``messaging`` shows it as ``SchemaOutdated``)."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"the store's schema is at revision {current or '(none: created before migrations)'}"
            f" but this agentpost needs {head}: run `agentpost db upgrade`"
        )
        self.current = current
        self.head = head


def _config() -> Config:
    from alembic.config import Config  # noqa: PLC0415  (see the imports)

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


@cache  # the scripts ship with the code: parse them once per process
def head_revision() -> str:
    """The newest revision this code ships."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415  (see the imports)

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at (``None``: no migrations table)."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415  (see the imports)

    # Every process checks once; Alembic's INFO lines about its DDL mode are noise there.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Apply the migrations up to ``revision``; returns the revision reached.

    A store created before migrations existed (tables, no version) is stamped at
    the first revision, whose tables it already has, then upgraded.
    """
    from alembic import command  # noqa: PLC0415  (see the imports)
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    config = _config()
    with schema_lock(engine) as conn:
        # Under the lock: a process that waited finds the work done and changes nothing.
        config.attributes["connection"] = conn
        has_tables = inspect(conn).has_table(_FIRST_TABLE)
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        if has_tables and context.get_current_revision() is None:
            command.stamp(config, "0001")
        command.upgrade(config, revision)
    current = current_revision(engine)
    assert current is not None
    return current


def has_store(url: str) -> bool:
    """Whether the database at ``url`` holds agentpost's tables, changing nothing (a
    SQLite file that does not exist is not created to find out)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).is_file():
            return False
    # The process's engine (its folder exists: the file does), reused by what follows.
    with engine_for(url).connect() as conn:
        return bool(inspect(conn).has_table(_FIRST_TABLE))


def ensure_schema(engine: Engine) -> None:
    """Create an empty store at the head; refuse one that is behind (``SchemaBehind``)."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    if current is None:
        with engine.connect() as conn:
            empty = not inspect(conn).has_table(_FIRST_TABLE)
        if empty:
            upgrade(engine)
            return
    raise SchemaBehind(current, head)
