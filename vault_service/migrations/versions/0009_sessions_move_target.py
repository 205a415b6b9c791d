"""Add sessions.move_target: during a move, the only node that may take the lease.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import ID

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("move_target", ID, nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "move_target")
