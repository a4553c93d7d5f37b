"""Topics and fan-out: which agents a broadcast or a publish reaches, and their envelopes.

Subscriptions are glob patterns (``orders.*``) stored as rows, so every process sees
them. A publish sends one tracked message per subscribed agent, however many of its
patterns match; each recipient's idempotency key is derived from the publish's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any
from uuid import uuid4

from messaging.envelope import Delivery, Envelope, Priority
from wire.errors import InvalidEnvelope

__all__ = ["fan_out", "match_subscribers", "validate_pattern", "validate_topic"]

_TOPIC = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_PATTERN = re.compile(r"^[A-Za-z0-9_.:*?\[\]!-]{1,255}$")


def validate_topic(topic: str) -> str:
    """A topic name: 1-255 of letters, digits, ``_ . : -``."""
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        raise InvalidEnvelope(f"topic {topic!r} is invalid: use 1-255 letters, digits, '_.:-'")
    return topic


def validate_pattern(pattern: str) -> str:
    """A subscription pattern: a topic with glob characters ``* ? [ ] !``."""
    if not isinstance(pattern, str) or not _PATTERN.match(pattern):
        raise InvalidEnvelope(
            f"topic pattern {pattern!r} is invalid: use a topic with glob characters * ? [ ]"
        )
    return pattern


def match_subscribers(topic: str, subscriptions: Iterable[tuple[str, str]]) -> list[str]:
    """Agents with at least one pattern matching ``topic``, each once, sorted."""
    return sorted({agent for agent, pattern in subscriptions if fnmatchcase(topic, pattern)})


def fan_out(
    recipients: Iterable[str],
    payload: Any,
    *,
    sender: str,
    idempotency_key: str | None,
    correlation_id: str | None,
    priority: Priority,
    ttl_s: float | None,
    metadata: dict[str, Any] | None,
    delivery: Delivery = "at-least-once",
) -> list[Envelope]:
    """One envelope per recipient, sharing a correlation id, keys derived per recipient."""
    base = idempotency_key or str(uuid4())
    correlation = correlation_id or base
    return [
        Envelope.build(
            name,
            payload,
            sender=sender,
            correlation_id=correlation,
            idempotency_key=f"{base}:{name}",
            priority=priority,
            ttl_s=ttl_s,
            metadata=metadata,
            delivery=delivery,
        )
        for name in recipients
    ]
