"""Create audit_log (admin actions and lease changes).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID, TABLE_ARGS, TENANT

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("tenant", TENANT, primary_key=True),
        sa.Column("ts_us", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(32), primary_key=True),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("session_id", ID, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("audit_log")
