"""The control plane over a real store (SQLite and PostgreSQL): every change comes with
its signed document, revocation makes a new identity possible, tokens are kept hashed,
and the schema migrations take any store to the newest revision.

    naas.toml --apply--> clients --> documents v1, v2, ...  <--revoke-- members
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from naas.control import apply as applying
from naas.control import members
from naas.control.enrollment import enroll
from naas.control.errors import Conflict, Invalid, NotFound
from naas.control.network import PopNetwork
from naas.core.crypto import ed25519_public, x25519_public
from naas.core.network_document import open_document_untrusted
from naas.model.certificate import Certificate
from naas.model.codec import b64e
from naas.model.config import parse_config
from naas.model.document import NetworkDocument
from naas.model.ids import Endpoint
from naas.model.network import NetworkInfo, PopInfo
from naas.pop import migrate
from naas.pop.invitations import parse_url_untrusted, token_hash
from naas.pop.schema import metadata
from naas.pop.store import PopStore

CA_PRIVATE = bytes(range(32))
NOW = 1_800_000_000.0
TOML = """
[network]
name = "acme"
subnet = "10.8.0.0/24"

[[pop]]
name = "master"
address = "10.0.0.1"

[[client]]
name = "web"
groups = ["web"]

[[client]]
name = "db"
ip = "10.8.0.50"
"""


@pytest.fixture
def net(store_url: str, tmp_path: Path) -> Iterator[PopNetwork]:
    store = PopStore(store_url)
    store.create_schema()
    config = parse_config(TOML)
    pin = "sha256:" + b64e(bytes(32))
    pop = PopInfo("master", Endpoint("10.0.0.1", 5640), Endpoint("10.0.0.1", 5641), pin)
    info = NetworkInfo("acme", 5640, ed25519_public(CA_PRIVATE), (pop,), subnet=config.network.subnet)
    network = PopNetwork(config, store, tmp_path, CA_PRIVATE, clock=lambda: NOW, known_info=info)
    applying.apply(network, applying.plan(network, applying.clients_of(config)))
    yield network
    store.close()


def _document(net: PopNetwork) -> NetworkDocument:
    latest = net.store.latest_document()
    assert latest is not None
    return open_document_untrusted(latest[1], ed25519_public(CA_PRIVATE), "acme")


def _enroll(net: PopNetwork, name: str, seed: int) -> Certificate:
    url = members.invite(net, [name])[0].url
    token = parse_url_untrusted(url)
    static, signing = x25519_public(bytes([seed]) * 32), ed25519_public(bytes([seed + 1]) * 32)
    return enroll(net, "master", token_hash(token.token), static, signing).certificate


def test_apply_creates_the_clients_and_a_second_apply_changes_nothing(net: PopNetwork) -> None:
    assert [(c.name, c.ip, c.groups) for c in net.store.clients()] == [
        ("db", IPv4Address("10.8.0.50"), ()),
        ("web", None, ("web",)),
    ]
    assert applying.plan(net, applying.clients_of(net.config)).empty


def test_a_group_change_makes_a_signed_document_and_an_unchanged_one_does_not(net: PopNetwork) -> None:
    cert = _enroll(net, "web", 5)
    assert cert.groups == ("web",)
    before = net.store.document_version()
    members.set_groups(net, "web", ["web", "frontend"])
    document = _document(net)
    assert document.version == before + 1
    assert document.groups[cert.node_id] == ("frontend", "web")
    members.set_groups(net, "web", ["frontend", "web"])
    assert net.store.document_version() == before + 1, "the same groups again: no new version"


def test_a_revocation_is_in_the_next_document_and_a_new_invitation_is_a_new_identity(net: PopNetwork) -> None:
    first = _enroll(net, "web", 7)
    revoked = members.revoke(net, "web")
    assert revoked == first
    document = _document(net)
    assert [(r.node_id, r.name) for r in document.revoked] == [(first.node_id, "web")]
    with pytest.raises(Conflict, match="already revoked"):
        members.revoke(net, "web")
    again = _enroll(net, "web", 9)
    assert again.node_id != first.node_id and again.name == "web"
    assert again.ip == first.ip, "the address is free again"


def test_prune_revokes_a_client_removed_from_the_file(net: PopNetwork) -> None:
    cert = _enroll(net, "db", 11)
    assert cert.ip is not None and str(cert.ip.ip) == "10.8.0.50"
    only_web = [spec for spec in applying.clients_of(net.config) if spec.name == "web"]
    kept = applying.plan(net, only_web)
    assert kept.empty and "--prune" in kept.lines()[0]
    pruned = applying.plan(net, only_web, prune=True)
    applying.apply(net, pruned)
    assert net.store.client("db") is None and net.store.member("db") is None
    assert cert.node_id in _document(net).revoked_ids


def test_bad_requests_are_refused_with_one_line(net: PopNetwork) -> None:
    with pytest.raises(Invalid, match="not a group name"):
        members.set_groups(net, "web", ["Web Servers"])
    with pytest.raises(NotFound, match="no client 'nobody'"):
        members.set_groups(net, "nobody", [])
    with pytest.raises(Conflict, match=r"10\.8\.0\.50 is taken by client 'db'"):
        members.create_client(net, "cache", IPv4Address("10.8.0.50"), [])
    with pytest.raises(Invalid, match="not a host address"):
        members.create_client(net, "cache", IPv4Address("10.9.0.1"), [])
    with pytest.raises(Conflict, match="exists"):
        members.create_client(net, "web", None, [])


def test_tokens_are_stored_hashed_and_know_their_role(net: PopNetwork, store_url: str) -> None:
    admin = members.create_token(net, "ops", "admin")
    read = members.create_token(net, "grafana", "read")
    assert members.token_role(net, admin) == "admin" and members.token_role(net, read) == "read"
    assert members.token_role(net, admin + "x") is None and members.token_role(net, "naas_é") is None
    engine = create_engine(store_url)
    with engine.connect() as conn:
        dump = json.dumps([list(row) for row in conn.execute(text("SELECT * FROM api_tokens"))], default=str)
    engine.dispose()
    assert admin not in dump and read not in dump and token_hash(admin) in dump


def test_the_migrations_make_exactly_the_tables_of_the_schema(store_url: str) -> None:
    store = PopStore(store_url)
    store.create_schema()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert migrate.current_revision(conn) == migrate.head_revision()
    store.close()


def test_a_store_of_before_the_migrations_is_upgraded_with_its_clients(store_url: str) -> None:
    store = PopStore(store_url)
    with store.engine.begin() as conn:  # a store as `naas init` made it before the migrations
        config = migrate._config(conn)
        command.upgrade(config, migrate.LEGACY_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text(
                "INSERT INTO invitations (token_hash, client_name, created_at, expires_at) "
                "VALUES (:h, 'laptop', 1, 2)"
            ),
            {"h": "0" * 64},
        )
    head = migrate.head_revision()
    assert store.revision_problem("naas db upgrade") == (
        f"the store's schema is at revision 0001, this NaaS needs {head}: run `naas db upgrade`"
    )
    assert store.create_schema() == ("0001", migrate.head_revision())
    assert store.revision_problem("naas db upgrade") is None
    assert [client.name for client in store.clients()] == ["laptop"]
    store.close()
