"""autovacuum settings of the two tables that grow: vacuumed and analysed after a
share of their rows changes that stays small as they grow

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:00:00.000000

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's defaults wait for 20 % of a table's rows to be dead (10 % changed for an
# ANALYZE): at 10M messages, 2M dead rows and their index entries before a VACUUM, and
# statistics that still say "no message is queued" long after a burst. Every message
# is updated two or three times and deleted at retention, so these tables are vacuumed
# after 2 % and analysed after 1 %; a VACUUM after 2 % inserted also keeps the
# visibility map set, which the index-only counts (the dead gauge) read.
_SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.01",
}
_TABLES = ("agentpost_messages", "agentpost_attempts")


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no autovacuum settings
    settings = ", ".join(f"{name} = {value}" for name, value in _SETTINGS.items())
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(_SETTINGS)})")
