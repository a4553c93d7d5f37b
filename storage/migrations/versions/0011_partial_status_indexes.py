"""partial indexes by status: waiting rows by receiver and by due time, finished rows by
time, dead rows by receiver; the indexes that held every row by status or receiver go

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 07:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration keeps the schema of its own day.
_WAITING = "status IN ('queued', 'retrying')"
_FINISHED = "status IN ('delivered', 'dead')"
_TABLE = "agentpost_messages"


def _partial(name: str, where: str, *columns: str) -> None:
    op.create_index(
        name,
        _TABLE,
        list(columns),
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    """Upgrade schema."""
    # An update that moves a row to another status now touches only that status's
    # index, and no read of the rows on their way walks the finished history.
    _partial("ix_agentpost_messages_waiting", _WAITING, "receiver", "due_at")
    _partial("ix_agentpost_messages_due", _WAITING, "due_at")
    _partial("ix_agentpost_messages_dead", "status = 'dead'", "receiver")
    op.drop_index("ix_agentpost_messages_finished", table_name=_TABLE)
    _partial("ix_agentpost_messages_finished", _FINISHED, "status", "finished_at")
    op.drop_index("ix_agentpost_messages_status_due", table_name=_TABLE)
    op.drop_index("ix_agentpost_messages_receiver", table_name=_TABLE)


def downgrade() -> None:
    """Downgrade schema."""
    op.create_index("ix_agentpost_messages_receiver", _TABLE, ["receiver"])
    op.create_index("ix_agentpost_messages_status_due", _TABLE, ["status", "due_at"])
    op.drop_index("ix_agentpost_messages_finished", table_name=_TABLE)
    op.create_index("ix_agentpost_messages_finished", _TABLE, ["status", "finished_at"])
    op.drop_index("ix_agentpost_messages_dead", table_name=_TABLE)
    op.drop_index("ix_agentpost_messages_due", table_name=_TABLE)
    op.drop_index("ix_agentpost_messages_waiting", table_name=_TABLE)
