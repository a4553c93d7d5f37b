"""Agent registration: ``@agent("writer")`` on a handler in the user's own module.

The registry is per process. A worker imports the agent modules it serves, so its
registry knows their handlers and retry options; a client needs none of this (it
learns the agent names from the store, where workers register them).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Table

import storage
from messaging.envelope import validate_agent_name, validation_problems
from wire.errors import ConfigurationError, InvalidEnvelope, PermanentError

if TYPE_CHECKING:
    from messaging.context import Context
    from messaging.envelope import JSON, Envelope

__all__ = ["AgentSpec", "Handler", "agent", "get_agent", "parse_rate", "registered_agents"]

Handler = Callable[["Envelope", "Context"], Any]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """A registered handler agent and its delivery options (``None``: the settings' default)."""

    name: str
    handler: Handler
    max_retries: int | None = None
    backoff_s: float | None = None
    backoff_max_s: float | None = None
    jitter: bool | None = None
    # The agent's own tables in the store's database, made by the worker that serves it.
    tables: tuple[Table, ...] = ()
    # Which handler errors are retried: only ``retry_on`` (None: every one), never
    # ``give_up_on`` (dead at once; it wins where both match).
    retry_on: tuple[type[BaseException], ...] | None = None
    give_up_on: tuple[type[BaseException], ...] = ()
    time_limit_s: float | None = None
    max_backlog: int | None = None
    # Typed handlers: the payload is checked against ``payload`` (by every sender, from
    # its JSON Schema in the store) and handed over parsed; the reply must fit ``reply``.
    payload: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    # Deployment-wide flow control (storage/flow.py): handlers at once, deliveries a
    # second ("100/m" parsed), and the circuit: failures in a row that open it, and
    # how long it stays open before a probe.
    max_concurrency: int | None = None
    rate_limit: str | None = None
    circuit_after: int | None = None
    circuit_cooldown_s: float = 30.0

    @property
    def rate_per_s(self) -> float | None:
        """The rate limit in deliveries a second (None: none)."""
        return None if self.rate_limit is None else parse_rate(self.rate_limit)

    def flow(self) -> storage.FlowLimits:
        """The flow limits as the registry stores them."""
        return storage.FlowLimits(
            self.max_concurrency,
            self.rate_per_s,
            self.circuit_after,
            None if self.circuit_after is None else self.circuit_cooldown_s,
        )

    def schemas(self) -> tuple[str | None, str | None]:
        """The JSON Schemas of the payload and the reply, as stored (None: untyped)."""
        return _schema_json(self.payload), _schema_json(self.reply)

    def parse_payload(self, payload: Any) -> Any:
        """The payload as the handler gets it: the parsed model of a typed agent.

        Raises:
            InvalidEnvelope: it does not fit the agent's payload model.
        """
        if self.payload is None:
            return payload
        try:
            return self.payload.model_validate(payload)
        except ValidationError as exc:
            problems = validation_problems(exc, root="payload")
            raise InvalidEnvelope(
                f"the payload does not fit {self.payload.__name__}: {problems}"
            ) from None

    def reply_json(self, reply: Any) -> Any:
        """The handler's reply in its JSON form (a typed agent's checked against its model).

        Raises:
            PermanentError: it does not fit the agent's reply model.
        """
        if self.reply is not None:
            try:
                reply = self.reply.model_validate(reply)
            except ValidationError as exc:
                problems = validation_problems(exc, root="reply")
                raise PermanentError(
                    f"the reply does not fit {self.reply.__name__}: {problems}"
                ) from None
        if isinstance(reply, BaseModel):
            return reply.model_dump(mode="json")
        return reply


_registry: dict[str, AgentSpec] = {}


def agent(
    name: str,
    *,
    max_retries: int | None = None,
    backoff_s: float | None = None,
    backoff_max_s: float | None = None,
    jitter: bool | None = None,
    tables: Sequence[Any] = (),
    retry_on: Sequence[type[BaseException]] | None = None,
    give_up_on: Sequence[type[BaseException]] = (),
    time_limit_s: float | None = None,
    max_backlog: int | None = None,
    payload: type[BaseModel] | None = None,
    reply: type[BaseModel] | None = None,
    max_concurrency: int | None = None,
    rate_limit: str | None = None,
    circuit_after: int | None = None,
    circuit_cooldown_s: float = 30.0,
) -> Callable[[H], H]:
    """Register ``handler(msg, ctx) -> JSON | None`` as the agent ``name``.

    Args:
        name: the agent's name; its inbox is the queue ``agent.<name>``.
        max_retries: retries after the first attempt before the message is dead.
        backoff_s: first retry delay; doubles each retry (exponential backoff).
        backoff_max_s: ceiling of the retry delay.
        jitter: randomise each delay between half and all of it.
        tables: the agent's own tables in the store's database, for its exactly-once
            writes (SQLModel or SQLAlchemy table models, or Table objects): a worker serving the
            agent creates those missing when it starts, and never alters them.
        retry_on: the handler errors that are retried (and their subclasses); any
            other error is dead at once (reason ``rejected``). Default: every error.
        give_up_on: handler errors that are dead at once, even where ``retry_on``
            matches too (Celery's ``dont_autoretry_for``).
        time_limit_s: a handler running longer is stopped and its attempt recorded
            ``timed-out`` (a failure: retried, then dead). Async handlers are cancelled
            on any pool, sync ones interrupted on prefork; on the threads pool a sync
            handler cannot be interrupted: one that returns late is recorded timed-out.
        max_backlog: undelivered messages the agent accepts; a send past it raises
            ``InboxFull`` in the sending process (stored with the registration).
        payload: a pydantic model the payload must fit. Its JSON Schema is stored with
            the registration and every sending process checks payloads against it
            (``InvalidEnvelope`` naming the field, nothing stored); the handler gets
            ``msg.payload`` as the parsed model.
        reply: a pydantic model the handler's reply must fit (the model itself or a
            dict); one that does not is a permanent failure (dead, ``rejected``).
        max_concurrency: at most this many handlers of the agent run at once in the
            whole deployment, whatever the number of workers; deliveries over it wait
            (held, no attempt counted) without taking a worker's pool slot.
        rate_limit: at most this many deliveries per second, minute or hour in the whole
            deployment: ``"10/s"``, ``"100/m"``, ``"1000/h"`` (Celery's notation).
        circuit_after: after this many failed attempts in a row (handler errors and
            time-outs; not messages refused as ``rejected``/``invalid``) the agent's
            circuit opens: its deliveries are held, no attempt spent, for
            ``circuit_cooldown_s``; then one probe runs, and its success closes the
            circuit (its failure opens it again). The alert hook is called on open.
        circuit_cooldown_s: how long an open circuit holds deliveries before a probe.

    Raises:
        ConfigurationError: a bad name or option, or the name taken by another handler.
    """
    try:
        validate_agent_name(name)
    except InvalidEnvelope as exc:
        raise ConfigurationError(str(exc)) from None
    if max_retries is not None and max_retries < 0:
        raise ConfigurationError(f"agent {name!r}: max_retries must be >= 0, got {max_retries}")
    for option, value in (("backoff_s", backoff_s), ("backoff_max_s", backoff_max_s)):
        if value is not None and value < 0:
            raise ConfigurationError(f"agent {name!r}: {option} must be >= 0, got {value}")
    owned = tuple(_table_of(name, model) for model in tables)
    retried = None if retry_on is None else _errors(name, "retry_on", retry_on)
    given_up = _errors(name, "give_up_on", give_up_on)
    if time_limit_s is not None and not time_limit_s > 0:
        raise ConfigurationError(f"agent {name!r}: time_limit_s must be > 0, got {time_limit_s}")
    if max_backlog is not None and max_backlog < 1:
        raise ConfigurationError(f"agent {name!r}: max_backlog must be >= 1, got {max_backlog}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigurationError(
            f"agent {name!r}: max_concurrency must be >= 1, got {max_concurrency}"
        )
    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise ConfigurationError(f"agent {name!r}: {exc}") from None
    if circuit_after is not None and circuit_after < 1:
        raise ConfigurationError(f"agent {name!r}: circuit_after must be >= 1, got {circuit_after}")
    if not circuit_cooldown_s > 0:
        raise ConfigurationError(
            f"agent {name!r}: circuit_cooldown_s must be > 0, got {circuit_cooldown_s}"
        )
    for option, model in (("payload", payload), ("reply", reply)):
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(
                f"agent {name!r}: {option}= takes a pydantic model class, got {model!r}"
            )

    def register(handler: H) -> H:
        if not callable(handler):
            raise ConfigurationError(f"agent {name!r}: the handler must be callable")
        params = inspect.signature(handler).parameters
        if len(params) != 2:
            raise ConfigurationError(
                f"agent {name!r}: the handler must take (msg, ctx), it takes {list(params)}"
            )
        existing = _registry.get(name)
        if existing is not None and _qualname(existing.handler) != _qualname(handler):
            raise ConfigurationError(
                f"agent {name!r} is already registered by {_qualname(existing.handler)}"
            )
        _registry[name] = AgentSpec(
            name,
            handler,
            max_retries,
            backoff_s,
            backoff_max_s,
            jitter,
            owned,
            retried,
            given_up,
            time_limit_s,
            max_backlog,
            payload,
            reply,
            max_concurrency,
            rate_limit,
            circuit_after,
            circuit_cooldown_s,
        )
        return handler

    return register


def get_agent(name: str) -> AgentSpec | None:
    """The spec of a handler agent registered in this process."""
    return _registry.get(name)


def registered_agents() -> dict[str, AgentSpec]:
    """Every handler agent registered in this process, by name."""
    return dict(_registry)


_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str) -> float:
    """``"100/m"`` as deliveries a second (Celery's ``rate_limit`` notation).

    Raises:
        ValueError: not ``N/s``, ``N/m`` or ``N/h`` with N > 0.
    """
    count, _, per = str(rate).partition("/")
    try:
        number = float(count)
    except ValueError:
        number = 0.0
    if per not in _PER or not number > 0:
        raise ValueError(
            f'rate_limit {rate!r} is not a rate: write N/s, N/m or N/h with N > 0 ("100/m")'
        )
    return number / _PER[per]


def _errors(agent_name: str, option: str, classes: Any) -> tuple[type[BaseException], ...]:
    if isinstance(classes, type):
        classes = (classes,)
    picked = tuple(classes)
    for cls in picked:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(
                f"agent {agent_name!r}: {option}= takes exception classes, got {cls!r}"
            )
    return picked


def _table_of(agent_name: str, model: Any) -> Table:
    table = getattr(model, "__table__", model)
    if not isinstance(table, Table):
        raise ConfigurationError(
            f"agent {agent_name!r}: tables= takes SQLModel/SQLAlchemy table models or Tables, "
            f"got {model!r}"
        )
    if table.name.startswith("agentpost_"):
        raise ConfigurationError(
            f"agent {agent_name!r}: {table.name!r} is one of the store's own tables "
            "(agentpost_*), made by its migrations: name the agent's tables otherwise"
        )
    return table


def _schema_json(model: type[BaseModel] | None) -> str | None:
    if model is None:
        return None
    return json.dumps(model.model_json_schema(), sort_keys=True, separators=(",", ":"))


def _qualname(func: Callable[..., JSON] | Handler) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
