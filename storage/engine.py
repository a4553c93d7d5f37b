"""Engines per database URL, safe across ``fork`` (Celery's prefork pool).

SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` so that concurrent writers from
several processes queue on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.notify import close_watchers

__all__ = ["dispose_engines", "engine_for"]

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The engine of this process for ``url`` (a forked child gets its own)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        with _lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _make_engine(url)
                _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Close the pools of this process (after fork the parent's are dropped unused).

    Its reply listeners stop too: their connections are to the same stores.
    """
    close_watchers()
    pid = os.getpid()
    with _lock:
        for (owner, url), engine in list(_engines.items()):
            if owner == pid:
                engine.dispose()
            else:
                engine.dispose(close=False)
            del _engines[(owner, url)]


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    # No pool_pre_ping: it costs a round trip per checkout on the delivery path. A
    # connection found dead raises once (the deliver task retries) and is replaced.
    # Up to 15 connections, all kept: with overflow, a threads pool of 200 opened and
    # closed a connection (a server process each) for most deliveries. Beyond 15 at
    # once a caller waits for one; an at-least-once delivery holds one only for its
    # statements (an exactly-once one for its handler: its effects commit with it).
    return create_engine(url, pool_size=15, max_overflow=0, pool_recycle=1800)


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made here, owner-only: SQLite gives its journal and WAL files the same mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    # NullPool: a SQLite connection is cheap, and no pooled handle can leak across fork.
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
