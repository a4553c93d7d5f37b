"""The one boundary for errors: store and broker failures become agentpost's own.

Code that talks to the database or the broker on a caller's behalf (the client, the
mailbox, the gateway, the CLI) runs inside ``store_errors`` or ``broker_errors``, so
what a caller catches is ``StoreUnavailable``, ``SchemaOutdated`` or
``BrokerUnavailable`` (the original kept as ``__cause__``); nobody has to import
``sqlalchemy.exc``, ``kombu.exceptions`` or ``redis``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import kombu
import kombu.exceptions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

import storage
from wire.brokers import profile_for
from wire.errors import BrokerUnavailable, ConfigurationError, SchemaOutdated, StoreUnavailable
from wire.settings import redact

__all__ = [
    "broker_error_kinds",
    "broker_errors",
    "require_store",
    "safe_database_url",
    "store_errors",
]


@cache
def broker_error_kinds(broker_url: str) -> tuple[type[BaseException], ...]:
    """What a client of this broker raises when the broker cannot be reached or refuses.

    kombu's own kinds (Celery re-raises transport errors as these), and the kinds the
    URL's transport declares (kombu's ``connection_errors`` and ``channel_errors``:
    redis-py's for Redis, py-amqp's for RabbitMQ, OSError for sockets and the
    embedded broker's folders). Asked of kombu, so no transport is imported before its
    broker is used.
    """
    connection = kombu.Connection(broker_url, transport=profile_for(broker_url).transport_class)
    declared = (*connection.connection_errors, *connection.channel_errors)
    # Builtins aside (OSError is kept above): the Redis transport counts KeyError among
    # its errors, and a KeyError in our code is a bug, not an outage.
    return (
        kombu.exceptions.OperationalError,
        kombu.exceptions.LimitExceeded,
        kombu.exceptions.BatchPublishError,  # type: ignore[attr-defined]  # (stubs predate 5.7)
        OSError,
        *(kind for kind in declared if kind.__module__ != "builtins"),
    )


def safe_database_url(url: str) -> str:
    """A database URL fit for a message: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return redact(url)


@contextmanager
def store_errors(database_url: str) -> Iterator[None]:
    """Translate the store's failures raised in the block.

    ``IntegrityError`` passes through: a constraint is for the caller to interpret
    (the sender turns a reused message id into ``InvalidEnvelope``).

    Raises:
        SchemaOutdated: the store's schema is behind this agentpost.
        StoreUnavailable: the database could not be reached or refused the statement.
    """
    try:
        yield
    except storage.SchemaBehind as exc:
        raise SchemaOutdated(str(exc)) from exc
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise StoreUnavailable(
            f"the store at {safe_database_url(database_url)} failed: {_cause(exc)}"
        ) from exc
    except OSError as exc:  # a SQLite store's folder that cannot be made
        raise StoreUnavailable(
            f"the store at {safe_database_url(database_url)} cannot be opened "
            f"({exc.strerror}: {exc.filename}): point AGENTPOST_DATABASE_URL or "
            "AGENTPOST_HOME at a folder this process can write"
        ) from exc


def require_store(database_url: str) -> None:
    """Refuse, changing nothing, a database that holds no agentpost store (a read-only
    caller: the CLI's inspecting commands).

    Raises:
        ConfigurationError: an empty or foreign database, or a SQLite file not there.
    """
    if not storage.has_store(database_url):
        raise ConfigurationError(
            f"no agentpost store at {safe_database_url(database_url)}: "
            "is AGENTPOST_DATABASE_URL (or AGENTPOST_HOME) the deployment's? "
            "A worker or a send creates it; so does `agentpost db upgrade`"
        )


def _cause(exc: SQLAlchemyError) -> str:
    """The database's own first line (never the statement or its parameters, which
    SQLAlchemy's message carries: they may hold payloads)."""
    orig = getattr(exc, "orig", None)
    first = str(orig).strip().splitlines()[0][:300] if orig is not None and str(orig) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextmanager
def broker_errors(broker_url: str) -> Iterator[None]:
    """Translate the broker's failures raised in the block.

    Raises:
        BrokerUnavailable: the broker could not be reached or refused the operation.
    """
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, broker_error_kinds(broker_url)):
            raise
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise BrokerUnavailable(
            f"the broker at {redact(broker_url)} did not answer: {type(exc).__name__}"
            + (f": {detail}" if detail else "")
        ) from exc
