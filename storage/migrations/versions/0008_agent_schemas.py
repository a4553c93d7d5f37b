"""an agent's payload and reply JSON Schemas, checked by every sender

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 01:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("agentpost_agents") as batch:
        batch.add_column(sa.Column("payload_schema", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reply_schema", sa.Text(), nullable=True))
        batch.add_column(sa.Column("schema_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("agentpost_agents") as batch:
        batch.drop_column("schema_version")
        batch.drop_column("reply_schema")
        batch.drop_column("payload_schema")
