"""The one boundary for errors: store and broker failures become agentpost's own.

Code that talks to the database or the broker on a caller's behalf (the client, the
mailbox, the gateway, the CLI, the worker's store calls) runs inside ``store_errors``
or ``broker_errors``, so what a caller catches is ``StoreUnavailable``,
``SchemaOutdated`` or ``BrokerUnavailable`` (the original is kept as ``__cause__``);
nobody has to import ``sqlalchemy.exc``, ``kombu.exceptions`` or ``redis``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

import storage
from wire.errors import BrokerUnavailable, SchemaOutdated, StoreUnavailable
from wire.settings import redact

__all__ = ["BROKER_ERRORS", "broker_errors", "safe_database_url", "store_errors"]

# What a broker client raises when the broker cannot be reached or gives up on us:
# kombu's own (Celery re-raises transport errors as these), and the transports' raw
# ones where kombu lets them through; OSError covers sockets and the embedded broker's
# folders.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    kombu.exceptions.LimitExceeded,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.ChannelError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
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
            f"the store at {safe_database_url(database_url)} failed: {type(exc).__name__}"
        ) from exc


@contextmanager
def broker_errors(broker_url: str) -> Iterator[None]:
    """Translate the broker's failures raised in the block.

    Raises:
        BrokerUnavailable: the broker could not be reached or refused the operation.
    """
    try:
        yield
    except BROKER_ERRORS as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise BrokerUnavailable(
            f"the broker at {redact(broker_url)} did not answer: {type(exc).__name__}"
            + (f": {detail}" if detail else "")
        ) from exc
