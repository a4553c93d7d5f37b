"""Gateway API keys: rows hold the HMAC digest, the subject and what it may do.

A subject's revocation is kept beside its keys: the gateway refuses the subject's
JWTs issued up to that moment (it cannot revoke a token it never stored).
"""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from storage.sql import API_KEYS, REVOKED_SUBJECTS, dialect_insert
from storage.tables import ApiKey

__all__ = ["add_key", "find_key", "list_keys", "revoke_keys", "subject_revoked_at"]


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
    """Revoke one key by id, or every credential of a subject (its keys, and its JWTs
    issued until ``now``); returns how many keys were revoked."""
    stmt = update(API_KEYS).where(API_KEYS.c.revoked_at.is_(None)).values(revoked_at=now)
    if key_id is not None:
        stmt = stmt.where(API_KEYS.c.id == key_id)
    with engine.begin() as conn:
        if subject is not None:
            stmt = stmt.where(API_KEYS.c.subject == subject)
            insert = dialect_insert(conn)(REVOKED_SUBJECTS).values(subject=subject, revoked_at=now)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[REVOKED_SUBJECTS.c.subject], set_={"revoked_at": now}
                )
            )
        return int(conn.execute(stmt).rowcount)


def subject_revoked_at(engine: Engine, subject: str) -> float | None:
    """When the subject's credentials were last revoked, if ever."""
    query = select(REVOKED_SUBJECTS.c.revoked_at).where(REVOKED_SUBJECTS.c.subject == subject)
    with engine.connect() as conn:
        value = conn.execute(query).scalar_one_or_none()
    return None if value is None else float(value)
