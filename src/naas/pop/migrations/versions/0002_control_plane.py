"""The control plane: clients, revocations, network documents, API tokens.

Clients used to live only in naas.toml; the store now holds them (``naas apply`` keeps
them in step with the file). The data step seeds them from what the store already
knows: every enrolled client, with the groups of its certificate, and every client an
invitation was made for.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    clients = op.create_table(
        "clients",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("ip", sa.String(15), nullable=True),
        sa.Column("groups_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "revocations",
        sa.Column("node_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(63), nullable=False, index=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
        sa.Column("certificate_json", sa.Text, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.BigInteger, nullable=True),
    )
    _seed_clients(clients)


def _seed_clients(clients: sa.Table) -> None:
    conn = op.get_bind()
    now = int(time.time())
    seeded: dict[str, list[str]] = {}
    for is_pop, text in conn.execute(sa.text("SELECT is_pop, certificate_json FROM members")):
        if not is_pop:
            cert = json.loads(text)
            seeded[cert["name"]] = sorted(set(cert.get("groups", [])))
    for (name,) in conn.execute(sa.text("SELECT DISTINCT client_name FROM invitations")):
        seeded.setdefault(name, [])
    if seeded:
        op.bulk_insert(
            clients,
            [
                {"name": name, "ip": None, "groups_json": json.dumps(groups), "created_at": now}
                for name, groups in sorted(seeded.items())
            ],
        )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_table("documents")
    op.drop_table("revocations")
    op.drop_table("clients")
