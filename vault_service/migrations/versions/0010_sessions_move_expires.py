"""Add sessions.move_expires_us: when a move reservation lapses.

Revision ID: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("move_expires_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "move_expires_us")
