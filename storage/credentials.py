"""Gateway API keys: rows hold the HMAC digest, the subject and what it may do."""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from storage.sql import API_KEYS
from storage.tables import ApiKey

__all__ = ["add_key", "find_key", "list_keys", "revoke_keys"]


def add_key(engine: Engine, row: ApiKey) -> None:
    """Store a new key's row (its digest, never the key)."""
    with engine.begin() as conn:
        conn.execute(API_KEYS.insert().values(**row.model_dump()))


def find_key(engine: Engine, key_id: str) -> ApiKey | None:
    """The key with this id, revoked or not (the caller checks both)."""
    with engine.connect() as conn:
        row = conn.execute(select(API_KEYS).where(API_KEYS.c.id == key_id)).one_or_none()
    return None if row is None else ApiKey.model_validate(row._mapping)


def list_keys(engine: Engine) -> list[ApiKey]:
    """Every key, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(API_KEYS).order_by(API_KEYS.c.created_at.desc())).all()
    return [ApiKey.model_validate(row._mapping) for row in rows]


def revoke_keys(engine: Engine, *, key_id: str | None, subject: str | None, now: float) -> int:
    """Revoke one key by id, or every key of a subject; returns how many were revoked."""
    stmt = update(API_KEYS).where(API_KEYS.c.revoked_at.is_(None)).values(revoked_at=now)
    if key_id is not None:
        stmt = stmt.where(API_KEYS.c.id == key_id)
    if subject is not None:
        stmt = stmt.where(API_KEYS.c.subject == subject)
    with engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)
