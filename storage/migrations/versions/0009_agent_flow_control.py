"""an agent's deployment-wide limits and circuit, and a message's reserved rate slot

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 03:20:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AGENT_COLUMNS = (
    ("max_concurrency", sa.Integer()),
    ("rate_per_s", sa.Float()),
    ("rate_tat", sa.Float()),
    ("circuit_after", sa.Integer()),
    ("circuit_cooldown_s", sa.Float()),
    ("circuit_state", sa.String(length=16)),
    ("circuit_failures", sa.Integer()),
    ("circuit_until", sa.Float()),
    ("circuit_error", sa.Text()),
)


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("agentpost_agents") as batch:
        for name, type_ in _AGENT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("agentpost_messages") as batch:
        batch.add_column(sa.Column("slot_at", sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("agentpost_messages") as batch:
        batch.drop_column("slot_at")
    with op.batch_alter_table("agentpost_agents") as batch:
        for name, _ in reversed(_AGENT_COLUMNS):
            batch.drop_column(name)
