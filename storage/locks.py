"""The sweep lock: one sweep at a time per store, released when its holder dies.

Two sweeps that overlap (beat fires every interval; a sweep after a broker loss can
take longer) would each judge the same rows from a state the other is changing, and
publish copies twice. PostgreSQL holds a session advisory lock on a connection of
its own; SQLite an ``flock`` on a file beside the database. Both go with the process
that held them, so a sweeper killed mid-sweep never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["schema_lock", "sweep_lock"]

# Any constants; they name the locks among this database's advisory locks.
_SWEEP_LOCK_KEY = 0x61676E74
_SCHEMA_LOCK_KEY = 0x61677363


@contextmanager
def sweep_lock(engine: Engine) -> Iterator[bool]:
    """Take the sweep lock if free; yields whether this sweep holds it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            held = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": _SWEEP_LOCK_KEY}
                ).scalar_one()
            )
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    _unlock(conn)
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield True  # one process's private store: nobody to overlap with
        return
    fd = os.open(f"{database}.sweep-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the flock


def _unlock(conn: Connection) -> None:
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SWEEP_LOCK_KEY})
        conn.commit()
    except SQLAlchemyError:
        # Never back to the pool holding the lock: closing the session releases it.
        conn.invalidate()


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the schema lock until it has committed: processes
    creating an empty store take turns (an advisory lock on PostgreSQL, an ``flock``
    beside a SQLite file)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            yield conn
        return
    database = engine.url.database
    if not database or database == ":memory:":
        with engine.begin() as conn:
            yield conn
        return
    fd = os.open(f"{database}.schema-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with engine.begin() as conn:  # committed before the flock is released
            yield conn
    finally:
        os.close(fd)
