"""The first schema: invitations, members and the meta counters.

Stores made before the migrations existed hold exactly these tables (with
meta.schema_version = 1); pop/migrate.py stamps them with this revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "invitations",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("client_name", sa.String(63), nullable=False, index=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
        sa.Column("used_by_pop", sa.String(63), nullable=True),
        sa.Column("node_id", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "members",
        sa.Column("node_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("is_pop", sa.Boolean, nullable=False),
        sa.Column("certificate_json", sa.Text, nullable=False),
        sa.Column("enrolled_at", sa.BigInteger, nullable=False),
        sa.Column("enrolled_via", sa.String(63), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("members")
    op.drop_table("invitations")
    op.drop_table("meta")
