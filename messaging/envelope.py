"""The envelope: one message, a frozen pydantic model, and its wire format.

``schema_version`` is the envelope protocol's ``major.minor``. A reader accepts any
minor of a major it knows (new optional fields are ignored) and refuses an unknown
major instead of guessing: workers dead-letter such a message as ``invalid``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from messaging.ids import new_id
from wire.encoding import dump_json
from wire.errors import InvalidEnvelope, PayloadTooLarge

__all__ = [
    "JSON",
    "PRIORITIES",
    "SCHEMA_VERSION",
    "Delivery",
    "Envelope",
    "Priority",
    "parse_envelope",
    "validate_agent_name",
    "validation_problems",
]

JSON: TypeAlias = JsonValue
SCHEMA_VERSION = "1.2"
KNOWN_MAJORS = frozenset({1})
PRIORITIES: dict[str, int] = {"low": 2, "normal": 5, "high": 7, "urgent": 9}
Delivery: TypeAlias = Literal["best-effort", "at-least-once", "exactly-once"]
Priority: TypeAlias = Literal["low", "normal", "high", "urgent"] | int

_AGENT_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")


def validate_agent_name(name: str) -> str:
    """Return ``name`` if it is a valid agent name, else raise ``InvalidEnvelope``."""
    if not isinstance(name, str) or not _AGENT_NAME.match(name):
        raise InvalidEnvelope(
            f"agent name {name!r} is invalid: use 1-64 lower-case letters, digits, '_', '.' or '-'"
        )
    return name


def _agent_name(value: str) -> str:
    try:
        return validate_agent_name(value)
    except InvalidEnvelope as exc:
        raise ValueError(str(exc)) from None


def _priority(value: object) -> int:
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        return value
    raise ValueError(
        f"{value!r} is not a priority: use low, normal, high, urgent or 0-9 (9 most urgent)"
    )


def _strict_json(what: str) -> Any:
    def check(value: Any) -> Any:
        if not value:  # {}, the usual metadata: nothing to encode
            return value
        # Strict JSON (no NaN/Infinity) that is also valid UTF-8 (no lone surrogates).
        try:
            dump_json(value).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
        return value

    return AfterValidator(check)


def _text(value: str) -> str:
    # Stored in text columns: PostgreSQL refuses NUL, UTF-8 refuses lone surrogates.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (lone surrogate)") from None
    return value


AgentName = Annotated[
    str,
    AfterValidator(_agent_name),
    WithJsonSchema({"type": "string", "pattern": _AGENT_NAME.pattern}),
]
Text = Annotated[str, AfterValidator(_text)]


class Envelope(BaseModel):
    """One message from ``sender`` to ``receiver``.

    ``correlation_id`` and ``idempotency_key`` default to ``id``; ``attempt`` is set
    by the worker (1 on the first delivery). ``priority`` takes ``low``, ``normal``,
    ``high``, ``urgent`` or 0-9 (9 most urgent) and is stored as the number.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: UUID = Field(default_factory=new_id)
    sender: AgentName
    receiver: AgentName
    payload: Any = None  # strict JSON: checked (and encoded, once) by _encode_payload
    correlation_id: Text = Field(default="", max_length=255)
    parent_id: UUID | None = None
    idempotency_key: Text = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    attempt: int = Field(default=0, ge=0)
    priority: Annotated[int, BeforeValidator(_priority)] = PRIORITIES["normal"]
    expires_at: datetime | None = None
    metadata: Annotated[dict[Text, JsonValue], _strict_json("metadata")] = Field(
        default_factory=dict
    )
    delivery: Delivery = "at-least-once"
    # W3C trace context (``traceparent``) of the sender, when OpenTelemetry is on.
    trace: dict[str, str] = Field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION
    # The payload's JSON, made once when the envelope is validated: the size check, the
    # stored row, the task body and Flower's summary all use it.
    _payload_json: str | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        # Constructing an envelope directly refuses bad input with our error, too.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidEnvelope(_problems(exc)) from None

    @field_validator("schema_version")
    @classmethod
    def _known_major(cls, value: str) -> str:
        if value == SCHEMA_VERSION:  # this version's own envelopes: nothing to check
            return value
        match = re.fullmatch(r"(\d+)\.(\d+)", value)
        if match is None:
            raise ValueError(f"schema_version {value!r} is not 'major.minor'")
        if int(match.group(1)) not in KNOWN_MAJORS:
            raise ValueError(
                f"schema_version {value!r} has an unknown major version "
                f"(this agentpost reads {SCHEMA_VERSION})"
            )
        return value

    @field_validator("created_at", "expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _encode_payload(self) -> Envelope:
        # Strict JSON (no NaN/Infinity) that is also valid UTF-8 (no lone surrogates).
        try:
            encoded = dump_json(self.payload)
            encoded.encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload is not JSON-serialisable: {exc}") from None
        self._payload_json = encoded
        return self

    @model_validator(mode="after")
    def _defaults_from_id(self) -> Envelope:
        # Frozen model: fill the id-derived defaults through object.__setattr__.
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", str(self.id))
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", str(self.id))
        return self

    @classmethod
    def build(
        cls,
        receiver: str,
        payload: Any = None,
        *,
        sender: str,
        correlation_id: str | None = None,
        parent_id: UUID | str | None = None,
        idempotency_key: str | None = None,
        priority: Priority = "normal",
        ttl_s: float | None = None,
        expires_at: datetime | None = None,
        metadata: dict[str, Any] | None = None,
        delivery: Delivery = "at-least-once",
    ) -> Envelope:
        """Build and validate an envelope, raising ``InvalidEnvelope`` with every problem."""
        if ttl_s is not None:
            if ttl_s <= 0:
                raise InvalidEnvelope(f"ttl_s must be positive, got {ttl_s!r}")
            expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
        fields: dict[str, Any] = {
            "sender": sender,
            "receiver": receiver,
            "payload": payload,
            "correlation_id": correlation_id or "",
            "parent_id": parent_id,
            "idempotency_key": idempotency_key or "",
            "priority": priority,
            "expires_at": expires_at,
            "metadata": metadata or {},
            "delivery": delivery,
        }
        return cls(**fields)  # every key a field: nothing for parse_envelope to drop

    def wire(self) -> dict[str, Any]:
        """The JSON-ready form that travels in the task and is stored."""
        return self.model_dump(mode="json")

    def payload_json(self) -> str:
        """The payload as strict, compact JSON (encoded once per envelope)."""
        # One read of the private attribute: pydantic serves each through __getattr__.
        encoded = self._payload_json
        if encoded is None:  # built without validation (model_construct)
            encoded = self._payload_json = dump_json(self.payload)
        return encoded

    def wire_json(self) -> str:
        """``wire()`` encoded, around the payload's JSON already made (not encoded again)."""
        # pydantic's own JSON (compact, UTF-8 as is): the fields are checked strict JSON
        # already, and it is 3.5x faster than dumping model_dump's dict.
        rest = self.model_dump_json(exclude={"payload"})
        return f'{{"payload":{self.payload_json()},{rest[1:]}'

    def payload_bytes(self) -> int:
        """Size of the serialised payload, the figure AGENTPOST_MAX_PAYLOAD_BYTES limits."""
        return len(self.payload_json().encode())

    def check_size(self, max_bytes: int) -> None:
        """Raise ``PayloadTooLarge`` if the payload is over ``max_bytes``."""
        size = self.payload_bytes()
        if size > max_bytes:
            raise PayloadTooLarge(
                f"payload is {size} bytes, over AGENTPOST_MAX_PAYLOAD_BYTES={max_bytes}: "
                "send a reference to the data instead"
            )


# The field names, read once: ``Envelope.model_fields`` is a property computed per read.
_FIELDS = frozenset(Envelope.model_fields)


def parse_envelope(data: Any) -> Envelope:
    """Validate a mapping (or a wire dict) into an ``Envelope`` or raise ``InvalidEnvelope``.

    Fields this version does not know are dropped: a newer minor version only adds
    optional fields (an unknown major is refused by ``schema_version``).
    """
    if isinstance(data, dict):
        known = {key: value for key, value in data.items() if key in _FIELDS}
        # Through __init__ (which raises InvalidEnvelope): with a custom __init__,
        # pydantic's model_validate runs it and then the model validators once more.
        return Envelope(**known)
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise InvalidEnvelope(_problems(exc)) from None


def _problems(exc: ValidationError) -> str:
    return f"invalid envelope: {validation_problems(exc)}"


def validation_problems(exc: ValidationError, *, root: str | None = None) -> str:
    """Each field pydantic refused and why, ``root.field: message; …``."""
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (*((root,) if root else ()), *err["loc"]))
        # A check of the whole envelope (the payload's encoding) has no field to name.
        problems.append(path + ": " * bool(path) + err["msg"].removeprefix("Value error, "))
    return "; ".join(problems)
