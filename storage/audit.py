"""The gateway's audit trail: who did what, when, to which agent, and how it ended."""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from storage.sql import AUDIT
from storage.tables import AuditEntry

__all__ = ["audit_entries", "count_audited", "record_audit"]


def record_audit(engine: Engine, entry: AuditEntry) -> int:
    """Append one entry (its own short transaction: a refused call stores nothing else);
    returns its id."""
    with engine.begin() as conn:
        inserted = conn.execute(
            AUDIT.insert().values(**entry.model_dump(exclude={"id"})).returning(AUDIT.c.id)
        )
        return int(inserted.scalar_one())


def count_audited(engine: Engine, counts: dict[int, int]) -> None:
    """Add to the ``count`` of entries by id: the refusals a row stands for."""
    with engine.begin() as conn:
        for entry_id, more in counts.items():
            conn.execute(
                update(AUDIT).where(AUDIT.c.id == entry_id).values(count=AUDIT.c.count + more)
            )


def audit_entries(
    engine: Engine,
    *,
    subject: str | None = None,
    since: float | None = None,
    outcome: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries, newest first, filtered."""
    stmt = select(AUDIT).order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc()).limit(limit)
    if subject is not None:
        stmt = stmt.where(AUDIT.c.subject == subject)
    if since is not None:
        stmt = stmt.where(AUDIT.c.at >= since)
    if outcome is not None:
        stmt = stmt.where(AUDIT.c.outcome == outcome)
    with engine.connect() as conn:
        return [AuditEntry.model_validate(row._mapping) for row in conn.execute(stmt)]
