"""Who is calling, and what they may do: API keys, JWTs, and the development allow-all.

API keys look like ``ap_<id>_<secret>``; the store keeps only
HMAC-SHA256(``AGENTPOST_GATEWAY_SECRET``, key), found by ``id`` and compared in
constant time. JWTs are checked for signature (algorithms pinned, never ``none``),
``exp``, and ``iss``/``aud`` when configured; their ``sub`` is the subject, the
``agents`` claim (a list, or ``"*"``) and ``ops`` claim say what it may do; a token
issued (``iat``) before its subject was revoked (``keys revoke --subject``) is refused.
Authorization is default deny: an operation on an agent needs both granted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from sqlalchemy import Engine

import storage
from messaging.envelope import validate_agent_name
from wire.boundary import store_errors
from wire.errors import ConfigurationError, InvalidEnvelope
from wire.settings import Settings

__all__ = [
    "OPERATIONS",
    "AuthFailed",
    "Authenticator",
    "Operation",
    "Principal",
    "check_gateway_settings",
    "create_api_key",
    "key_digest",
]

log = logging.getLogger("agentpost.gateway")

Operation = Literal["invoke", "send", "read", "redrive"]
OPERATIONS: tuple[Operation, ...] = ("invoke", "send", "read", "redrive")
_KEY_PREFIX = "ap"


class AuthFailed(Exception):
    """No valid credentials (401); the message says which check failed, never the secret."""

    def __init__(self, reason: str, *, subject: str = "anonymous") -> None:
        super().__init__(reason)
        self.subject = subject


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    agents: frozenset[str]
    operations: frozenset[str]
    via: Literal["api_key", "jwt", "allow_all"]

    def may(self, operation: Operation, agent: str) -> bool:
        """Default deny: the operation and the agent must both be granted."""
        return operation in self.operations and ("*" in self.agents or agent in self.agents)


def key_digest(secret: str, key: str) -> str:
    """HMAC-SHA256 of an API key under the server secret, hex."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def create_api_key(
    engine: Engine,
    settings: Settings,
    subject: str,
    *,
    agents: Iterable[str],
    operations: Iterable[str],
) -> tuple[storage.ApiKey, str]:
    """Store a new key for ``subject``; returns its row and the key (shown once).

    Raises:
        ConfigurationError: no ``AGENTPOST_GATEWAY_SECRET`` to key the digest.
        InvalidEnvelope: a subject, agent or operation that is not valid.
    """
    secret = settings.gateway_secret.get_secret_value()
    if not secret:
        raise ConfigurationError("set AGENTPOST_GATEWAY_SECRET before creating API keys")
    subject = validate_agent_name(subject)
    granted = sorted({"*" if a == "*" else validate_agent_name(a) for a in agents})
    ops = sorted(set(operations))
    unknown = [op for op in ops if op not in OPERATIONS]
    if unknown or not ops:
        raise InvalidEnvelope(
            f"operations {unknown or '(none)'} are not valid: use {', '.join(OPERATIONS)}"
        )
    if not granted:
        raise InvalidEnvelope("a key needs at least one agent (or '*')")
    key_id = secrets.token_hex(6)
    key = f"{_KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    row = storage.ApiKey(
        id=key_id,
        subject=subject,
        digest=key_digest(secret, key),
        agents=",".join(granted),
        operations=",".join(ops),
        created_at=time.time(),
    )
    storage.add_key(engine, row)
    return row, key


def check_gateway_settings(settings: Settings) -> None:
    """Refuse to serve with a provider that is not safely configured.

    Raises:
        ConfigurationError: allow-all without the dev flag, API keys without a
            secret, JWTs without a key.
    """
    providers = settings.gateway_auth
    if not providers:
        raise ConfigurationError("AGENTPOST_GATEWAY_AUTH names no provider")
    if "allow_all" in providers and not settings.dev_allow_all:
        raise ConfigurationError(
            "AGENTPOST_GATEWAY_AUTH=allow_all needs AGENTPOST_DEV_ALLOW_ALL=1 "
            "(development only: anyone can call every agent)"
        )
    if "api_key" in providers and not settings.gateway_secret.get_secret_value():
        raise ConfigurationError("API keys need AGENTPOST_GATEWAY_SECRET (the digest key)")
    if "api_key" in providers and len(settings.gateway_secret.get_secret_value()) < _MIN_SECRET:
        raise ConfigurationError(
            f"AGENTPOST_GATEWAY_SECRET must be at least {_MIN_SECRET} characters (make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if "jwt" in providers:
        _check_jwt(settings.jwt_key.get_secret_value(), settings.jwt_algorithms)
    if "allow_all" in providers:
        log.warning(
            "!!! AGENTPOST_DEV_ALLOW_ALL is on: the gateway authenticates NOBODY; "
            "every caller may invoke, send to, read and redrive every agent !!!"
        )


_MIN_SECRET = 16  # characters of the gateway secret
_MIN_HMAC_KEY = 32  # bytes of an HS* JWT key: RFC 7518 asks for the hash's size


def _check_jwt(key: str, algorithms: Sequence[str]) -> None:
    if not key:
        raise ConfigurationError("JWT auth needs AGENTPOST_JWT_KEY (secret or public key)")
    hmac_algorithms = [a for a in algorithms if a.upper().startswith("HS")]
    if hmac_algorithms and len(hmac_algorithms) != len(algorithms):
        # One key for both families: a public key would be accepted as an HMAC secret.
        raise ConfigurationError(
            f"AGENTPOST_JWT_ALGORITHMS={','.join(algorithms)} mixes HMAC and public-key "
            "algorithms: pin one family (HS256, or RS256/ES256...)"
        )
    if hmac_algorithms and len(key.encode()) < _MIN_HMAC_KEY:
        raise ConfigurationError(
            f"AGENTPOST_JWT_KEY must be at least {_MIN_HMAC_KEY} bytes for "
            f"{','.join(hmac_algorithms)}"
        )


class Authenticator:
    """Turns request headers into a ``Principal``, trying the configured providers."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller, or ``AuthFailed`` saying which check failed."""
        providers = self._settings.gateway_auth
        api_key = headers.get("x-api-key", "")
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        bearer = bearer.strip() if scheme.lower() == "bearer" else ""
        if not bearer and scheme and not api_key:
            raise AuthFailed("unsupported Authorization scheme (use Bearer or X-API-Key)")
        if "api_key" in providers:
            if api_key:
                return self._api_key(api_key)
            if bearer.startswith(f"{_KEY_PREFIX}_"):
                return self._api_key(bearer)
        if "jwt" in providers and bearer:
            return self._jwt(bearer)
        if "allow_all" in providers and self._settings.dev_allow_all:
            return Principal("dev", frozenset({"*"}), frozenset(OPERATIONS), "allow_all")
        if api_key or bearer:
            raise AuthFailed("credentials of a kind this gateway does not accept")
        raise AuthFailed("no credentials: send X-API-Key or Authorization: Bearer")

    def _api_key(self, key: str) -> Principal:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != _KEY_PREFIX:
            raise AuthFailed("malformed API key")
        with store_errors(self._settings.database):
            row = storage.find_key(self._engine, parts[1])
        secret = self._settings.gateway_secret.get_secret_value()
        # Compare even when the id is unknown, so timing does not tell ids apart.
        expected = row.digest if row is not None else "0" * 64
        if not hmac.compare_digest(key_digest(secret, key), expected) or row is None:
            raise AuthFailed("unknown API key")
        if row.revoked_at is not None:
            raise AuthFailed("revoked API key", subject=row.subject)
        return Principal(
            row.subject,
            frozenset(row.agents.split(",")),
            frozenset(row.operations.split(",")),
            "api_key",
        )

    def _jwt(self, token: str) -> Principal:
        settings = self._settings
        required = ["exp", "sub"]
        if settings.jwt_issuer:
            required.append("iss")
        if settings.jwt_audience:
            required.append("aud")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                settings.jwt_key.get_secret_value(),
                algorithms=settings.jwt_algorithms,
                issuer=settings.jwt_issuer or None,
                audience=settings.jwt_audience or None,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("expired token") from None
        except jwt.InvalidAudienceError:
            raise AuthFailed("token for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthFailed("token from another issuer") from None
        except jwt.PyJWTError as exc:  # a bad token, or a key unfit for its algorithm
            raise AuthFailed(f"invalid token ({type(exc).__name__})") from None
        issued = claims.get("iat")
        born = float(issued) if isinstance(issued, int | float) else time.time()
        if float(claims["exp"]) - born > settings.jwt_max_lifetime_s:
            # A long-lived token outlives any revocation: the issuer must mint short ones.
            raise AuthFailed(
                f"token lives longer than AGENTPOST_JWT_MAX_LIFETIME_S "
                f"({settings.jwt_max_lifetime_s:g} s)"
            )
        try:
            subject = validate_agent_name(str(claims["sub"]))
        except InvalidEnvelope:
            raise AuthFailed("token subject is not a valid agent name") from None
        with store_errors(settings.database):
            revoked_at = storage.subject_revoked_at(self._engine, subject)
        if revoked_at is not None and (not isinstance(issued, int | float) or issued <= revoked_at):
            # `keys revoke --subject` ends the subject's tokens minted until then.
            raise AuthFailed("token of a revoked subject", subject=subject)
        return Principal(subject, _claim(claims, "agents"), _claim(claims, "ops"), "jwt")


def _claim(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return frozenset(str(v) for v in value) if isinstance(value, list | tuple) else frozenset()
