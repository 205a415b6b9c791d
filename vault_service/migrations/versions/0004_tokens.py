"""Create tokens (SHA-256 of bearer tokens, never the tokens themselves).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

from vault_service.storage.schema import TABLE_ARGS, TENANT

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("tenant", TENANT, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        **TABLE_ARGS,
    )


def downgrade() -> None:
    op.drop_table("tokens")
