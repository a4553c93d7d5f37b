"""Migrations of the store (Alembic), and the check that a store is not behind.

Policy: an empty database is brought to the head on first use, so the embedded
default needs no set-up step. A database at an older revision is refused with the
command that fixes it: schema changes on a shared production store are an
operator's decision (``agentpost db upgrade``), never a side effect of a client.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.engine import make_url

from storage.engine import engine_for
from storage.locks import schema_lock

__all__ = [
    "SchemaBehind",
    "current_revision",
    "ensure_schema",
    "has_store",
    "head_revision",
    "include_name",
    "upgrade",
]

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: a process that only reads the store (the CLI's
# inspecting commands) never loads it.

VERSION_TABLE = "agentpost_alembic_version"
_MIGRATIONS = Path(__file__).with_name("migrations")
_FIRST_TABLE = "agentpost_messages"
_PARTITION = re.compile(r"^agentpost_(messages|attempts)_p\d{8}$")


class SchemaBehind(RuntimeError):
    """The store's schema is older than this code (``messaging`` shows it as ``SchemaOutdated``)."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"the store's schema is at revision {current or '(none: created before migrations)'}"
            f" but this agentpost needs {head}: run `agentpost db upgrade`"
        )
        self.current = current
        self.head = head


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Whether Alembic's comparison includes this object: not the weeks' partitions
    (``storage/partitions.py``), which the database makes as time goes by."""
    return not (type_ == "table" and name is not None and _PARTITION.search(name))


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
    # Every process checks once; Alembic's INFO lines about its DDL mode are noise there.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    with engine.connect() as conn:
        return _revision_on(conn)


def _revision_on(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415  (see the imports)

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Apply the migrations up to ``revision``; returns the revision reached.

    A store created before migrations existed (tables, no version) is stamped at
    the first revision, whose tables it already has, then upgraded.
    """
    with schema_lock(engine) as conn:
        _upgrade_on(conn, revision)
    current = current_revision(engine)
    assert current is not None
    return current


def _upgrade_on(conn: Connection, revision: str) -> None:
    """Apply the migrations on ``conn``, whose transaction holds the schema lock."""
    from alembic import command  # noqa: PLC0415  (see the imports)

    config = _config()
    config.attributes["connection"] = conn
    if inspect(conn).has_table(_FIRST_TABLE) and _revision_on(conn) is None:
        command.stamp(config, "0001")
    command.upgrade(config, revision)


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
    if current_revision(engine) == head:
        return
    # Decided under the lock: a process creating the store meanwhile has tables and
    # no version row yet, which must not read as a store made before migrations.
    with schema_lock(engine) as conn:
        current = _revision_on(conn)
        if current == head:
            return
        if current is None and not inspect(conn).has_table(_FIRST_TABLE):
            _upgrade_on(conn, "head")
            return
    raise SchemaBehind(current, head)
