"""Add sessions.head_epoch: the lease epoch the head version was written under.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("head_epoch", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("sessions", "head_epoch")
