"""Create commands (persisted orders for nodes, delivered on their Sync stream).

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID, TABLE_ARGS, TENANT

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("node_id", ID, primary_key=True),
        sa.Column("command_id", sa.String(32), primary_key=True),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_us", sa.BigInteger, nullable=True),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("commands")
