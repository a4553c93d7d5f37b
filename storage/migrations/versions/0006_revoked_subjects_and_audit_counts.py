"""revoked subjects; audit rows count the refusals they stand for

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:45:00.000000

``agentpost keys revoke --subject S`` records S here, and the gateway refuses S's
JWTs issued before then. Refusals are audited one row per kind per window, with
``count`` saying how many that row stands for.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "agentpost_revoked_subjects",
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )
    with op.batch_alter_table("agentpost_audit") as batch:
        batch.add_column(sa.Column("count", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("agentpost_audit") as batch:
        batch.drop_column("count")
    op.drop_table("agentpost_revoked_subjects")
