"""the receiver copied onto each attempt: the counters group recent attempts by agent
without a lookup in the messages' key for each

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 09:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_A, _M = "agentpost_attempts", "agentpost_messages"


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(_A, sa.Column("receiver", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"UPDATE {_A} a SET receiver = m.receiver FROM {_M} m WHERE m.id = a.message_id")
    else:
        op.execute(
            f"UPDATE {_A} SET receiver = "
            f"(SELECT m.receiver FROM {_M} m WHERE m.id = {_A}.message_id)"
        )
    # An attempt whose message was deleted by hand: no trace shows it and the counters
    # (an inner join until now) never counted it.
    op.execute(f"DELETE FROM {_A} WHERE receiver IS NULL")
    with op.batch_alter_table(_A) as batch:
        batch.alter_column("receiver", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table(_A) as batch:
        batch.drop_column("receiver")
