"""Create sessions (one DDL per revision: TiDB auto-commits each DDL).

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID, SALT, TABLE_ARGS, TENANT

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("session_id", ID, primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("salt", SALT, nullable=False),
        sa.Column("head_version", sa.BigInteger, nullable=False),
        sa.Column("snapshot_version", sa.BigInteger, nullable=False),
        sa.Column("snapshot_bytes", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", ID, nullable=True),
        sa.Column("lease_epoch", sa.BigInteger, nullable=False),
        sa.Column("lease_expires_us", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("last_sync_us", sa.BigInteger, nullable=True),
        sa.Column("deleted_us", sa.BigInteger, nullable=True),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("sessions")
