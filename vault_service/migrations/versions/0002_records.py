"""Create records (one row per committed version).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID, RECORD_ID, TABLE_ARGS, TENANT

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "records",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("session_id", ID, primary_key=True),
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("record_id", RECORD_ID, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("node_id", ID, nullable=False),
        sa.Column("lease_epoch", sa.BigInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("records")
