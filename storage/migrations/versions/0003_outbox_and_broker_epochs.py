"""outbox columns on messages and the broker epochs

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("agentpost_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("handed_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("spare_at", sa.Float(), nullable=True))
    # Messages already waiting were handed to the broker by the code before this one.
    op.execute(
        "UPDATE agentpost_messages SET handed_at = updated_at "
        "WHERE status IN ('queued', 'running', 'retrying')"
    )
    op.create_table(
        "agentpost_broker_epochs",
        sa.Column("broker", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("broker"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("agentpost_broker_epochs")
    with op.batch_alter_table("agentpost_messages", schema=None) as batch_op:
        batch_op.drop_column("spare_at")
        batch_op.drop_column("handed_at")
