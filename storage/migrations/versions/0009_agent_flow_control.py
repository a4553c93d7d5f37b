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


# The claim under a concurrency limit, one round trip (storage/postgres.py): each
# statement of a PL/pgSQL function reads a fresh snapshot, so the count, taken after the
# agent's row is locked, sees every claim committed before it. Its commit does not wait
# for the WAL flush (storage/flow.py says why that is safe).
_CLAIM_LIMITED = """
CREATE OR REPLACE FUNCTION agentpost_claim_limited(
    p_id varchar, p_receiver varchar, p_limit integer, p_worker varchar,
    p_now double precision, p_lease_until double precision, p_lost_error text
) RETURNS TABLE (
    running bigint, attempts integer, redrives integer, recovered_from varchar,
    envelope text, expires_at double precision
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM agentpost_agents WHERE name = p_receiver FOR UPDATE;
    SELECT count(*) INTO n FROM agentpost_messages
    WHERE receiver = p_receiver AND status = 'running' AND lease_until >= p_now;
    IF n < p_limit THEN
        RETURN QUERY
        WITH c AS (
            UPDATE agentpost_messages SET
                status = 'running',
                attempts = attempts + 1,
                lease_until = p_lease_until,
                claimed_by = p_worker,
                recovered_from = CASE WHEN status = 'running'
                                      THEN coalesce(claimed_by, '?') END,
                updated_at = p_now
            WHERE id = p_id AND receiver = p_receiver
              AND (status IN ('queued', 'retrying')
                   OR (status = 'running' AND lease_until < p_now))
            RETURNING attempts, redrives, recovered_from, envelope, expires_at
        ), lost AS (
            INSERT INTO agentpost_attempts
                (message_id, number, redrive, worker, ended_at, outcome, error)
            SELECT p_id, attempts - 1, redrives, recovered_from, p_now, 'lost', p_lost_error
            FROM c WHERE recovered_from IS NOT NULL
        )
        SELECT n, c.attempts, c.redrives, c.recovered_from, c.envelope, c.expires_at FROM c;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    running := n;
    RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("agentpost_agents") as batch:
        for name, type_ in _AGENT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("agentpost_messages") as batch:
        batch.add_column(sa.Column("slot_at", sa.Float(), nullable=True))
    # The running handlers of an agent, counted by every claim under a concurrency
    # limit: a few rows, whatever the backlog.
    op.create_index(
        "ix_agentpost_messages_running",
        "agentpost_messages",
        ["receiver"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CLAIM_LIMITED)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS agentpost_claim_limited("
            "varchar, varchar, integer, varchar, double precision, double precision, text)"
        )
    op.drop_index("ix_agentpost_messages_running", table_name="agentpost_messages")
    with op.batch_alter_table("agentpost_messages") as batch:
        batch.drop_column("slot_at")
    with op.batch_alter_table("agentpost_agents") as batch:
        for name, _ in reversed(_AGENT_COLUMNS):
            batch.drop_column(name)
