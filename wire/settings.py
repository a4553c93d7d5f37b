"""Typed settings, read from ``AGENTPOST_*`` environment variables.

With nothing set, everything lives under ``./.agentpost/``: a ``filesystem://``
broker and a SQLite store, so one laptop runs the whole system with no servers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from wire.errors import ConfigurationError

__all__ = ["Settings", "redact"]

AuthProvider = Literal["api_key", "jwt", "allow_all"]
_BROKER_SCHEMES = {"filesystem", "redis", "rediss", "amqp", "pyamqp", "amqps"}
_DATABASE_BACKENDS = {"sqlite", "postgresql"}
_NAMESPACE = re.compile(r"^[a-z0-9_.-]{0,32}$")


class Settings(BaseSettings):
    """Every knob of agentpost; pass one explicitly, nothing reads globals deep inside."""

    model_config = SettingsConfigDict(env_prefix="AGENTPOST_", frozen=True, extra="ignore")

    home: Path = Path(".agentpost")
    broker_url: str = Field(default="", description="empty: filesystem:// under home")
    database_url: str = Field(default="", description="empty: sqlite under home")
    result_backend: str = Field(default="", description="empty: derived (failures only)")
    namespace: str = Field(default="", description="prefix of every queue and exchange")
    max_payload_bytes: int = Field(default=1024 * 1024, gt=0)
    lease_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=30.0, gt=0)
    publish_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="an accepted message not handed to the broker by then "
        "is published by the sweeper (its sender died, or the broker refused it)",
    )
    redeliver_after_s: float = Field(
        default=120.0,
        gt=0,
        description="a message still waiting this long after it was due "
        "gets one spare copy of its task (never more)",
    )
    retain_delivered_s: float = Field(
        default=7 * 86400.0,
        ge=0,
        description="delivered messages and their attempts are deleted this long after "
        "they finished (0: kept for ever); their idempotency keys are free again then",
    )
    retain_dead_s: float = Field(
        default=30 * 86400.0,
        ge=0,
        description="dead messages (expired included) are deleted this long after they "
        "died (0: kept for ever)",
    )
    rollup_lag_s: float = Field(
        default=300.0,
        gt=0,
        description="the counters fold what happened before this long ago; no message "
        "finished more recently is pruned (longer than hosts' clocks are apart)",
    )
    prune_batch: int = Field(
        default=1000, gt=0, description="most messages of each status a sweep deletes"
    )
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=600.0, ge=0)
    backoff_jitter: bool = True
    task_events: bool = Field(
        default=False,
        description="Celery task events from the start (Flower turns them on at run time)",
    )
    filesystem_polling_s: float = Field(default=0.1, gt=0)
    agent_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    alert_hook: str = Field(default="", description="'module:callable' called on dead letters")
    alert_webhook_url: SecretStr = Field(
        default=SecretStr(""), description="URL that gets a JSON POST per dead letter"
    )
    alert_webhook_retries: int = Field(default=3, ge=0)
    flower_basic_auth: SecretStr = Field(
        default=SecretStr(""), description="'user:password[,user2:password2]' for Flower"
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""), description="bearer token the metrics exporter requires"
    )
    gateway_auth: Annotated[list[AuthProvider], NoDecode] = Field(
        default_factory=lambda: list[AuthProvider](["api_key"]),
        description="gateway authentication providers, tried in order: api_key, jwt, allow_all",
    )
    gateway_secret: SecretStr = Field(
        default=SecretStr(""), description="server secret keying the API key digests"
    )
    dev_allow_all: bool = Field(
        default=False, description="development only: lets gateway_auth use allow_all"
    )
    jwt_key: SecretStr = Field(
        default=SecretStr(""), description="HMAC secret or PEM public key checking JWTs"
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256"], description="accepted JWT algorithms (never none)"
    )
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_max_lifetime_s: float = Field(
        default=3600.0, gt=0, description="longest life a JWT may have (exp - iat, or exp - now)"
    )
    rate_limit_per_s: float = Field(default=10.0, gt=0, description="gateway calls per caller")
    rate_limit_burst: float = Field(default=20.0, ge=1)
    auth_failures_per_s: float = Field(
        default=1.0, gt=0, description="failed authentications per client address"
    )
    auth_failures_burst: float = Field(default=10.0, ge=1)
    audit_window_s: float = Field(
        default=60.0, gt=0, description="refusals of one kind write one audit row per window"
    )
    audit_refusal_kinds: int = Field(
        default=100, ge=1, description="kinds of refusal with a row of their own per window"
    )
    gateway_max_body_bytes: int = Field(default=0, ge=0, description="0: payload limit + 64 KiB")
    gateway_max_timeout_s: float = Field(default=300.0, gt=0)
    gateway_max_in_flight: int = Field(
        default=64, ge=1, description="requests one caller may have in flight at once"
    )
    gateway_read_timeout_s: float = Field(
        default=10.0, gt=0, description="a request's headers and body must arrive within this"
    )
    gateway_idle_timeout_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    gateway_max_connections: int = Field(
        default=1000, ge=1, description="connections one gateway process holds (then 503)"
    )
    gateway_wait_threads: int = Field(
        default=256,
        ge=1,
        description="threads for blocking invokes, apart from those answering everything else",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per log line, with delivery fields"
    )

    def __init__(self, **values: Any) -> None:
        # Bad configuration is our ConfigurationError, and its message must not
        # echo the input (pydantic's would print a URL's password).
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid agentpost settings: {problems}") from None

    @field_validator("agent_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gateway_auth", "jwt_algorithms", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        if not value or any(a.lower() == "none" for a in value):
            raise ConfigurationError(
                "AGENTPOST_JWT_ALGORITHMS must name signing algorithms; 'none' is never accepted"
            )
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ConfigurationError(
                f"AGENTPOST_NAMESPACE {value!r} is invalid: use at most 32 lower-case "
                "letters, digits, '_', '.' or '-'"
            )
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"AGENTPOST_ALERT_WEBHOOK_URL {redact(url)!r} must be an http(s) URL"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if value:
            scheme = value.split("://", 1)[0] if "://" in value else ""
            if scheme not in _BROKER_SCHEMES:
                raise ConfigurationError(
                    f"AGENTPOST_BROKER_URL {redact(value)!r} is not supported: use "
                    "redis://, amqp:// or filesystem://"
                )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database(cls, value: str) -> str:
        if not value:
            return value
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ConfigurationError(
                f"AGENTPOST_DATABASE_URL {redact(value)!r} is not a database URL"
            ) from exc
        if url.get_backend_name() not in _DATABASE_BACKENDS:
            raise ConfigurationError(
                f"AGENTPOST_DATABASE_URL {redact(value)!r} is not supported: use "
                "sqlite:///path or postgresql+psycopg://"
            )
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            # Default to psycopg 3, the driver agentpost installs.
            value = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        elif url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            # The delivery path's statements run on psycopg's own connections.
            raise ConfigurationError(
                f"AGENTPOST_DATABASE_URL {redact(value)!r}: the {url.get_driver_name()} driver "
                "is not supported: use postgresql+psycopg:// (psycopg 3)"
            )
        return value

    @property
    def gateway_body_limit(self) -> int:
        """Largest request body the gateway reads."""
        return self.gateway_max_body_bytes or self.max_payload_bytes + 64 * 1024

    @property
    def broker(self) -> str:
        """The broker URL in force."""
        return self.broker_url or "filesystem://localhost//"

    @property
    def database(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{self.home / 'store.db'}"

    @property
    def results(self) -> str:
        """Celery's result backend (it only keeps failures, for Flower and inspection)."""
        if self.result_backend:
            return self.result_backend
        if self.broker.startswith(("redis://", "rediss://")):
            return self.broker
        if self.database_url:
            return f"db+{self.database}"
        return f"db+sqlite:///{self.home / 'results.db'}"


def redact(url: str) -> str:
    """A URL with its password hidden: settings errors must not log secrets."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
