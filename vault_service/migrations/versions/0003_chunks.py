"""Create chunks (encrypted record bytes, <= 1 MiB + 28 bytes per row).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import CIPHERTEXT, ID, RECORD_ID, TABLE_ARGS, TENANT

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunks",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("session_id", ID, primary_key=True),
        sa.Column("record_id", RECORD_ID, primary_key=True),
        sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", CIPHERTEXT, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("chunks")
