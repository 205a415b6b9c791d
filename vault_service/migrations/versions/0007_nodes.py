"""Create nodes (heartbeats of session nodes, for pool mode and operators).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID, TABLE_ARGS, TENANT

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("node_id", ID, primary_key=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("session_ids", sa.Text, nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("pool", sa.Boolean, nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("nodes")
