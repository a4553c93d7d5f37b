"""Per-caller token buckets shared by every gateway process.

On a Redis broker the bucket is a Redis hash updated by one Lua script (atomic, and
timed by Redis's clock so gateway hosts need not agree on theirs); on any other
broker it is a row in the store, updated by one upsert.
"""

from __future__ import annotations

import time
from typing import Any

import redis

import storage
from wire.boundary import broker_errors, store_errors
from wire.settings import Settings

__all__ = ["RateLimiter"]

# Refill by the time passed (Redis TIME), take a token if there is one; returns the
# seconds to wait, "0" when taken. The key expires once a full bucket would be back.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter:
    """``wait_s(subject)``: 0 if the call may go ahead, else seconds until it may."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._script: Any = None
        if settings.broker.startswith(("redis://", "rediss://")):
            client = redis.Redis.from_url(settings.broker)
            self._script = client.register_script(_TAKE)

    def wait_s(self, subject: str) -> float:
        """Take a token for ``subject`` (seconds to wait if there was none)."""
        settings = self._settings
        return self._take(subject, settings.rate_limit_per_s, settings.rate_limit_burst)

    def failure_wait_s(self, address: str) -> float:
        """Take a token for one failed authentication from ``address``: a guesser is
        slowed, and its refusals write a bounded number of audit rows."""
        settings = self._settings
        return self._take(
            f"authfail:{address}"[:64],
            settings.auth_failures_per_s,
            settings.auth_failures_burst,
        )

    def _take(self, bucket: str, rate_per_s: float, burst: float) -> float:
        """Raises ``BrokerUnavailable`` / ``StoreUnavailable`` if the buckets are down."""
        settings = self._settings
        if self._script is not None:
            key = f"{settings.namespace}agentpost:rate:{bucket}"
            with broker_errors(settings.broker):
                return float(self._script(keys=[key], args=[rate_per_s, burst]))
        with store_errors(settings.database):
            return storage.take_token(
                storage.engine_for(settings.database),
                bucket,
                rate_per_s=rate_per_s,
                burst=burst,
                now=time.time(),
            )
