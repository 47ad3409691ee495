"""The network's policy (issue 23, stateful security groups) and the networks a client
may send from besides its own address.

``policy`` holds the current policy as JSON in one row (id 1); a store without the row
has the open policy (everything allowed), so existing networks keep their behaviour
and their documents. ``clients.allowed_json`` is a JSON list of IPv4 networks, "[]" for
every existing client.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("policy_json", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.add_column("clients", sa.Column("allowed_json", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("clients") as batch:  # SQLite: the table is copied without it
        batch.drop_column("allowed_json")
    op.drop_table("policy")
