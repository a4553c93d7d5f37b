"""idempotency keys in a table of their own; on PostgreSQL, messages and attempts
partitioned by week of the message's creation

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 15:00:00.000000

A partitioned table's unique constraints must hold its partition key, so the key
(and the message id, unique across partitions) move to ``agentpost_message_keys``,
on SQLite too: one way to accept a message on both databases. Each attempt carries
its message's ``created_at``, so a message's attempts sit in the attempts partition
of the same week, and retention drops the two together.

On PostgreSQL the tables are rebuilt in place: renamed, re-created partitioned, the
rows copied, the old tables dropped. ``agentpost_ensure_partitions`` makes the weeks'
partitions; the rows already stored get one for each week they use.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported: a migration keeps the schema of its own day.
_M, _A, _K = "agentpost_messages", "agentpost_attempts", "agentpost_message_keys"
_WAITING = "status IN ('queued', 'retrying')"
_FINISHED = "status IN ('delivered', 'dead')"
# 0012's settings, now per partition (a partitioned table has no storage of its own).
_AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_insert_scale_factor = 0.02, "
    "autovacuum_analyze_scale_factor = 0.01"
)

# Weeks start on Monday 00:00 UTC (1970-01-05 is 4 days after the epoch); a week's
# partitions are named after that Monday: agentpost_messages_p20261207.
_ENSURE_PARTITIONS = f"""
CREATE FUNCTION agentpost_ensure_partitions(p_from double precision, p_to double precision)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    week bigint;
    lo double precision;
    monday text;
    parent text;
    made integer := 0;
BEGIN
    IF p_to - p_from > 370 * 86400 THEN
        RAISE EXCEPTION 'agentpost_ensure_partitions: % to % is more than a year', p_from, p_to;
    END IF;
    FOR week IN floor((p_from - 345600) / 604800)::bigint
             .. floor((p_to - 345600) / 604800)::bigint LOOP
        lo := week * 604800 + 345600;
        monday := to_char(to_timestamp(lo) AT TIME ZONE 'UTC', 'YYYYMMDD');
        FOREACH parent IN ARRAY ARRAY['{_M}', '{_A}'] LOOP
            IF to_regclass(parent || '_p' || monday) IS NULL THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s) '
                        'WITH ({_AUTOVACUUM})',
                        parent || '_p' || monday, parent, lo, lo + 604800);
                    made := made + 1;
                EXCEPTION WHEN duplicate_table THEN
                    NULL;  -- another process made it meanwhile
                END;
            END IF;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$"""

# 0009's function, its lost attempt now with the receiver (0013 made it required) and
# the message's creation time.
_CLAIM_LIMITED = f"""
CREATE FUNCTION agentpost_claim_limited(
    p_id varchar, p_receiver varchar, p_limit integer, p_worker varchar,
    p_now double precision, p_lease_until double precision, p_lost_error text
) RETURNS TABLE (
    running bigint, attempts integer, redrives integer, recovered_from varchar,
    envelope text, expires_at double precision, created_at double precision
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM agentpost_agents WHERE name = p_receiver FOR UPDATE;
    SELECT count(*) INTO n FROM {_M}
    WHERE receiver = p_receiver AND status = 'running' AND lease_until >= p_now;
    IF n < p_limit THEN
        RETURN QUERY
        WITH c AS (
            UPDATE {_M} SET
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
            RETURNING attempts, redrives, recovered_from, envelope, expires_at, created_at
        ), lost AS (
            INSERT INTO {_A} (message_id, receiver, message_created_at, number, redrive,
                              worker, ended_at, outcome, error)
            SELECT p_id, p_receiver, created_at, attempts - 1, redrives, recovered_from,
                   p_now, 'lost', p_lost_error
            FROM c WHERE recovered_from IS NOT NULL
        )
        SELECT n, c.attempts, c.redrives, c.recovered_from, c.envelope, c.expires_at,
               c.created_at
        FROM c;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    running := n;
    RETURN NEXT;
END
$$"""

_NOTIFY_TRIGGER = f"""
CREATE TRIGGER agentpost_finished AFTER UPDATE OF status ON {_M}
FOR EACH ROW WHEN (NEW.status IN ('delivered', 'dead') AND OLD.status <> NEW.status)
EXECUTE FUNCTION agentpost_notify_finished()"""


def _message_indexes() -> None:
    def partial(name: str, where: str, *columns: str) -> None:
        op.create_index(
            name, _M, list(columns), postgresql_where=sa.text(where), sqlite_where=sa.text(where)
        )

    op.create_index("ix_agentpost_messages_correlation_id", _M, ["correlation_id"])
    op.create_index("ix_agentpost_messages_parent_id", _M, ["parent_id"])
    op.create_index("ix_agentpost_messages_created_at", _M, ["created_at"])
    partial("ix_agentpost_messages_waiting", _WAITING, "receiver", "due_at")
    partial("ix_agentpost_messages_due", _WAITING, "due_at")
    partial("ix_agentpost_messages_running", "status = 'running'", "receiver")
    partial("ix_agentpost_messages_finished", _FINISHED, "status", "finished_at")
    partial("ix_agentpost_messages_dead", "status = 'dead'", "receiver")


def _attempt_indexes() -> None:
    op.create_index("ix_agentpost_attempts_message_id", _A, ["message_id"])
    op.create_index("ix_agentpost_attempts_ended_at", _A, ["ended_at"])


def _partition() -> None:
    """Rebuild messages and attempts as tables partitioned by week, rows and all."""
    op.execute(_ENSURE_PARTITIONS)
    op.execute(f"ALTER TABLE {_M} RENAME TO {_M}_plain")
    op.execute(f"ALTER TABLE {_A} RENAME TO {_A}_plain")
    # The attempts' id sequence outlives the old table.
    op.execute(f"ALTER SEQUENCE {_A}_id_seq OWNED BY NONE")
    op.execute(
        f"CREATE TABLE {_M} (LIKE {_M}_plain INCLUDING DEFAULTS, PRIMARY KEY (id, created_at)) "
        "PARTITION BY RANGE (created_at)"
    )
    op.execute(
        f"CREATE TABLE {_A} (LIKE {_A}_plain INCLUDING DEFAULTS, "
        "PRIMARY KEY (id, message_created_at)) PARTITION BY RANGE (message_created_at)"
    )
    # A partition for each week the stored rows use, and this week's and the next two.
    op.execute(
        f"SELECT agentpost_ensure_partitions(w, w) FROM ("
        f"SELECT DISTINCT floor((created_at - 345600) / 604800) * 604800 + 345600 AS w "
        f"FROM {_M}_plain) AS weeks"
    )
    op.execute(
        "SELECT agentpost_ensure_partitions("
        "extract(epoch FROM now()), extract(epoch FROM now()) + 14 * 86400)"
    )
    op.execute(f"INSERT INTO {_M} SELECT * FROM {_M}_plain")
    op.execute(f"INSERT INTO {_A} SELECT * FROM {_A}_plain")
    op.execute(f"DROP TABLE {_M}_plain")  # its indexes and trigger with it
    op.execute(f"DROP TABLE {_A}_plain")
    op.execute(f"ALTER SEQUENCE {_A}_id_seq OWNED BY {_A}.id")
    _message_indexes()
    _attempt_indexes()
    op.execute(_NOTIFY_TRIGGER)
    # Its result gains a column: a new function, not a replaced one.
    op.execute(
        "DROP FUNCTION agentpost_claim_limited(varchar, varchar, integer, varchar, "
        "double precision, double precision, text)"
    )
    op.execute(_CLAIM_LIMITED)


def upgrade() -> None:
    """Upgrade schema."""
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        _K,
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key"),
    )
    op.create_index("ix_agentpost_message_keys_message_id", _K, ["message_id"], unique=True)
    op.create_index("ix_agentpost_message_keys_created_at", _K, ["created_at"])
    op.execute(f"INSERT INTO {_K} SELECT idempotency_key, id, created_at FROM {_M}")
    op.add_column(_A, sa.Column("message_created_at", sa.Float(), nullable=True))
    op.execute(
        f"UPDATE {_A} SET message_created_at = "
        f"(SELECT m.created_at FROM {_M} m WHERE m.id = {_A}.message_id)"
    )
    op.execute(f"DELETE FROM {_A} WHERE message_created_at IS NULL")  # orphans (0013)
    with op.batch_alter_table(_A) as batch:
        batch.alter_column("message_created_at", existing_type=sa.Float(), nullable=False)
    if postgres:
        _partition()
        return
    # SQLite: the key's unique constraint (unnamed in 0001) leaves the messages table.
    naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
    with op.batch_alter_table(_M, naming_convention=naming) as batch:
        batch.drop_constraint("uq_agentpost_messages_idempotency_key", type_="unique")


def downgrade() -> None:
    """Downgrade schema."""
    raise NotImplementedError("0014 (time partitions) has no downgrade: restore a backup")
