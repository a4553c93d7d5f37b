"""retention and counters without scans: finished messages by (status, finished_at),
recent ones by created_at and attempts by ended_at, the agents' folded totals; the
status index goes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 03:40:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Retention deletes the oldest finished messages of a status first.
    op.create_index(
        "ix_agentpost_messages_finished", "agentpost_messages", ["status", "finished_at"]
    )
    # (status, due_at) serves every query by status; this one only cost each update.
    op.drop_index("ix_agentpost_messages_status", table_name="agentpost_messages")
    # The counters read what happened since the watermark by time.
    op.create_index("ix_agentpost_messages_created_at", "agentpost_messages", ["created_at"])
    op.create_index("ix_agentpost_attempts_ended_at", "agentpost_attempts", ["ended_at"])
    # What happened before it, folded (storage/stats.py).
    op.create_table(
        "agentpost_agent_totals",
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "kind"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("agentpost_agent_totals")
    op.drop_index("ix_agentpost_attempts_ended_at", table_name="agentpost_attempts")
    op.drop_index("ix_agentpost_messages_created_at", table_name="agentpost_messages")
    op.create_index("ix_agentpost_messages_status", "agentpost_messages", ["status"])
    op.drop_index("ix_agentpost_messages_finished", table_name="agentpost_messages")
