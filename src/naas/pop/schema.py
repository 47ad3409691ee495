"""The PoP store's tables, in one place: what the SQL looks like at the newest revision.

Alembic migrations (pop/migrations/versions/) take an existing store from any earlier
revision to this one; ``naas init`` makes a new store by running all of them, so the
tables below and the migrations must agree (tests/unit/test_migrations.py checks it).
Portable types only (SQLite and PostgreSQL): times are Unix seconds in BigInteger,
JSON is text.

    meta          key/value: next_node_id, document_version
    clients       the desired clients: name, fixed overlay address, groups, the networks
                  it may send from besides its address                        (naas apply)
    invitations   one-time tokens, hashed                                     (naas invite)
    members       enrolled members and their current certificates             (enrollment)
    revocations   members cut off: node id, name, until when their certificate was valid
    documents     every signed version of the network document (model/document.py)
    api_tokens    bearer tokens of the REST API, hashed, with their role
    policy        the network's policy (model/policy.py), one row; none: everything allowed
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Integer, MetaData, String, Table, Text

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

clients = Table(
    "clients",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("ip", String(15), nullable=True),  # a fixed overlay address, else one of the DHCP range
    Column("groups_json", Text, nullable=False),  # JSON list of group names, sorted
    Column("created_at", BigInteger, nullable=False),
    # JSON list of IPv4 networks ("10.9.0.0/24"), sorted: the member may send from them too
    Column("allowed_json", Text, nullable=False, server_default="[]"),
)

invitations = Table(
    "invitations",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # hex SHA-256 of the token
    Column("client_name", String(63), nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),  # Unix seconds
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Column("used_by_pop", String(63), nullable=True),
    Column("node_id", BigInteger, nullable=True),
)

members = Table(
    "members",
    metadata,
    Column("node_id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(63), nullable=False, unique=True),
    Column("is_pop", Boolean, nullable=False),
    Column("certificate_json", Text, nullable=False),  # codec.certificate_to_bytes
    Column("enrolled_at", BigInteger, nullable=False),
    Column("enrolled_via", String(63), nullable=False),  # PoP name, or "init"
)

revocations = Table(
    "revocations",
    metadata,
    Column("node_id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(63), nullable=False, index=True),
    Column("revoked_at", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),  # its certificate's end: listed until then
    Column("certificate_json", Text, nullable=False),
)

documents = Table(
    "documents",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),  # the signed document, as members receive it
    Column("created_at", BigInteger, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # hex SHA-256 of the token
    Column("name", String(63), nullable=False),
    Column("role", String(8), nullable=False),  # admin | read
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=True),
)

policy = Table(
    "policy",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one policy
    Column("policy_json", Text, nullable=False),  # Policy.as_json(), canonical JSON
    Column("updated_at", BigInteger, nullable=False),
)
