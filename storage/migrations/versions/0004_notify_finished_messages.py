"""PostgreSQL: NOTIFY agentpost_finished with the id of each message that finishes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 19:45:00.000000

A waiter for a reply (``Client.request``, ``Client.result``) listens on the channel
instead of polling. A trigger, not a statement in each code path: every way a message
becomes delivered or dead (completion, mailbox reply, dead-lettering, expiry, a
sweep) notifies, and only when its transaction commits. SQLite has no such channel;
its waiters poll.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
CREATE FUNCTION agentpost_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentpost_finished', NEW.id);
    RETURN NULL;
END
$$""")
    op.execute("""
CREATE TRIGGER agentpost_finished AFTER UPDATE OF status ON agentpost_messages
FOR EACH ROW WHEN (NEW.status IN ('delivered', 'dead') AND OLD.status <> NEW.status)
EXECUTE FUNCTION agentpost_notify_finished()""")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER agentpost_finished ON agentpost_messages")
    op.execute("DROP FUNCTION agentpost_notify_finished()")
