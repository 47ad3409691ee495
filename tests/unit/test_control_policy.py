"""The policy and the members' allowed addresses over a real store (SQLite and
PostgreSQL): naas.toml -> apply -> one signed document; the policy row; a client's
addresses reach the document under its node id when it enrolls; traces of flows.

    naas.toml [policy], allowed_addresses --apply--> store: policy row, clients.allowed_json
        --> document sections "policy", "addresses" (node id -> networks)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from naas.control import apply as applying
from naas.control import members
from naas.control import policy as policies
from naas.control.enrollment import enroll
from naas.control.errors import ControlError, Invalid, NotFound
from naas.control.network import PopNetwork
from naas.control.setup import make_network
from naas.core.crypto import ed25519_public, x25519_public
from naas.core.network_document import open_document_untrusted
from naas.model.certificate import Certificate
from naas.model.codec import b64e
from naas.model.config import parse_config
from naas.model.document import NetworkDocument
from naas.model.ids import Endpoint
from naas.model.network import NetworkInfo, PopInfo
from naas.model.policy import OPEN_POLICY, Action
from naas.pop import migrate
from naas.pop.invitations import parse_url_untrusted, token_hash
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
name = "ops"
groups = ["ops"]

[[client]]
name = "router"
allowed_addresses = ["192.168.50.0/24", "10.77.0.0/16"]
"""
POLICY = """
[policy]
default = "deny"

[[policy.rule]]
name = "ssh-from-ops"
from = ["group:ops"]
to = ["group:web"]
proto = "tcp"
ports = ["22"]
action = "allow"

[[policy.rule]]
name = "lan-to-web"
from = ["cidr:192.168.50.0/24"]
to = ["group:web"]
proto = "tcp"
ports = ["80", "443"]
action = "allow"
"""


def _network(store_url: str, tmp_path: Path, toml: str) -> PopNetwork:
    store = PopStore(store_url)
    store.create_schema()
    config = parse_config(toml)
    pin = "sha256:" + b64e(bytes(32))
    pop = PopInfo("master", Endpoint("10.0.0.1", 5640), Endpoint("10.0.0.1", 5641), pin)
    info = NetworkInfo("acme", 5640, ed25519_public(CA_PRIVATE), (pop,), subnet=config.network.subnet)
    return PopNetwork(config, store, tmp_path, CA_PRIVATE, clock=lambda: NOW, known_info=info)


@pytest.fixture
def net(store_url: str, tmp_path: Path) -> Iterator[PopNetwork]:
    """The network of TOML (no policy yet), applied: its clients in the store."""
    network = _network(store_url, tmp_path, TOML)
    applying.apply(network, applying.plan(network, applying.clients_of(network.config)))
    yield network
    network.store.close()


def _document(net: PopNetwork) -> NetworkDocument:
    latest = net.store.latest_document()
    assert latest is not None
    return open_document_untrusted(latest[1], ed25519_public(CA_PRIVATE), "acme")


def _sections(net: PopNetwork) -> dict[str, object]:
    latest = net.store.latest_document()
    assert latest is not None
    sections: dict[str, object] = json.loads(latest[1])["sections"]
    return sections


def _enroll(net: PopNetwork, name: str, seed: int) -> tuple[Certificate, bytes | None]:
    url = members.invite(net, [name])[0].url
    token = parse_url_untrusted(url)
    static, signing = x25519_public(bytes([seed]) * 32), ed25519_public(bytes([seed + 1]) * 32)
    done = enroll(net, "master", token_hash(token.token), static, signing)
    return done.certificate, done.document


def _apply_file(net: PopNetwork, toml: str) -> applying.Plan:
    config = parse_config(toml)
    chosen = applying.plan(net, applying.clients_of(config), policy=config.policy)
    applying.apply(net, chosen)
    return chosen


# -- the store ---------------------------------------------------------------------------------


def test_clients_keep_their_allowed_addresses(net: PopNetwork) -> None:
    router = net.store.client("router")
    assert router is not None
    assert router.allowed_addresses == (IPv4Network("10.77.0.0/16"), IPv4Network("192.168.50.0/24"))
    assert net.store.client("web").allowed_addresses == ()  # type: ignore[union-attr]
    assert applying.plan(net, applying.clients_of(net.config)).empty
    members.set_groups(net, "router", ["edge"])  # a change of groups leaves the addresses
    assert net.store.client("router").allowed_addresses == router.allowed_addresses  # type: ignore[union-attr]
    assert applying.plan(net, applying.clients_of(net.config)).lines() == [
        "~ client router: groups [edge] -> []"
    ]


def test_no_policy_and_no_enrolled_router_leave_the_document_as_it_was(net: PopNetwork) -> None:
    assert net.store.policy() == OPEN_POLICY
    assert set(_sections(net)) == {"groups", "revoked"}
    assert _document(net).policy == OPEN_POLICY and _document(net).allowed_addresses == {}


def test_a_router_enrolling_gets_its_addresses_into_the_document_it_is_given(net: PopNetwork) -> None:
    before = net.store.document_version()
    web, _ = _enroll(net, "web", 3)
    assert net.store.document_version() == before, "no addresses: no new document"
    router, document_body = _enroll(net, "router", 5)
    assert net.store.document_version() == before + 1
    assert document_body is not None and json.loads(document_body)["version"] == before + 1
    document = _document(net)
    assert document.allowed_addresses == {
        router.node_id: (IPv4Network("10.77.0.0/16"), IPv4Network("192.168.50.0/24"))
    }
    assert web.node_id not in document.allowed_addresses
    narrower = applying.ClientSpec("router", None, (), (IPv4Network("10.77.0.0/16"),))
    wanted = [spec if spec.name != "router" else narrower for spec in applying.clients_of(net.config)]
    chosen = applying.plan(net, wanted)
    assert chosen.lines() == [
        "~ client router: allowed addresses [10.77.0.0/16, 192.168.50.0/24] -> [10.77.0.0/16]"
    ]
    assert applying.apply(net, chosen) == before + 2
    assert _sections(net)["addresses"] == {str(router.node_id): ["10.77.0.0/16"]}
    members.revoke(net, "router")
    assert "addresses" not in _sections(net), "a revoked member's addresses leave with it"


def test_set_policy_makes_a_document_and_the_same_policy_again_does_not(net: PopNetwork) -> None:
    before = net.store.document_version()
    policy = parse_config(TOML + POLICY).policy
    assert net.store.set_policy(policy, NOW, net.sign) == before + 1
    assert net.store.policy() == policy
    assert _document(net).policy == policy
    assert _sections(net)["policy"] == policy.as_json()
    assert net.store.set_policy(policy, NOW, net.sign) is None
    assert net.store.document_version() == before + 1
    assert net.store.set_policy(OPEN_POLICY, NOW, net.sign) == before + 2
    assert "policy" not in _sections(net) and net.store.policy() == OPEN_POLICY


def test_apply_of_a_policy_and_clients_is_one_document(net: PopNetwork) -> None:
    _enroll(net, "web", 3)
    before = net.store.document_version()
    changed = (TOML + POLICY).replace('groups = ["web"]', 'groups = ["web", "public"]')
    changed = changed.replace('name = "ops"\n', 'name = "ops"\nallowed_addresses = ["10.8.0.128/25"]\n')
    dry = applying.plan(net, applying.clients_of(parse_config(changed)), policy=parse_config(changed).policy)
    assert dry.lines() == [
        "~ client web: groups [web] -> [public, web]",
        "~ client ops: allowed addresses [] -> [10.8.0.128/25]",
        "~ policy: 2 rules, default deny (was 0 rules, default allow): "
        "+ rule ssh-from-ops, + rule lan-to-web",
    ]
    assert dry.to_dict()["policy_changed"] is True
    _apply_file(net, changed)
    assert net.store.document_version() == before + 1, "one document for the whole apply"
    document = _document(net)
    assert document.policy.default is Action.DENY and len(document.policy.rules) == 2
    assert set(document.groups.values()) == {("public", "web")}
    assert _apply_file(net, changed).empty
    assert net.store.document_version() == before + 1
    reordered = TOML + POLICY.replace('name = "ssh-from-ops"', 'name = "ssh"')
    assert _apply_file(net, reordered).lines()[-1] == (
        "~ policy: 2 rules, default deny (was 2 rules, default deny): + rule ssh, - rule ssh-from-ops"
    )
    opened = _apply_file(net, TOML)
    assert opened.lines()[-1] == (
        "~ policy: 0 rules, default allow (was 2 rules, default deny): - rule ssh, - rule lan-to-web"
    )
    assert net.store.policy() == OPEN_POLICY and "policy" not in _sections(net)


def test_apply_without_a_policy_leaves_it(net: PopNetwork) -> None:
    _apply_file(net, TOML + POLICY)
    chosen = applying.plan(net, applying.clients_of(net.config))  # the REST API's apply without one
    assert chosen.empty and not chosen.policy_changed
    assert len(net.store.policy().rules) == 2


def test_a_failing_apply_changes_nothing(net: PopNetwork) -> None:
    before = (net.store.clients(), net.store.document_version())
    bad = applying.Plan(
        added=[
            applying.ClientSpec("cache", groups=("db",)),
            applying.ClientSpec("kiosk", groups=("Bad Name",)),
        ],
        policy=parse_config(TOML + POLICY).policy,
    )
    with pytest.raises(ControlError, match="not a client name or group names"):
        applying.apply(net, bad)
    assert (net.store.clients(), net.store.document_version()) == before
    assert net.store.policy() == OPEN_POLICY


def test_init_stores_the_files_policy_with_the_first_document(store_url: str, tmp_path: Path) -> None:
    network = _network(store_url, tmp_path, TOML + POLICY)
    try:
        writes = [spec.write() for spec in applying.clients_of(network.config)]
        assert network.store.apply_changes(writes, (), network.config.policy, NOW, network.sign) == 1
        assert network.store.policy() == network.config.policy
        assert _document(network).policy == network.config.policy
    finally:
        network.store.close()


# -- show, set, trace --------------------------------------------------------------------------


def test_set_policy_refuses_a_bad_one_naming_the_key(net: PopNetwork) -> None:
    raw = {
        "default": "deny",
        "rule": [{"name": "ssh", "proto": "tcp", "ports": ["99999"], "action": "allow"}],
    }
    with pytest.raises(Invalid, match=r"^policy.rule\['ssh'\].ports: '99999' is not a port"):
        policies.set_policy(net, raw)
    with pytest.raises(Invalid, match=r"^policy.default: "):
        policies.set_policy(net, {"default": "sometimes"})
    done = policies.set_policy(net, {"default": "deny"})
    assert done.changed and done.document_version == net.store.document_version()
    assert policies.show(net).default is Action.DENY
    again = policies.set_policy(net, {"default": "deny", "rule": []})
    assert not again.changed and again.document_version == done.document_version


def test_trace_names_the_deciding_rule(net: PopNetwork) -> None:
    _apply_file(net, TOML + POLICY)
    ops, _ = _enroll(net, "ops", 3)
    allowed = policies.trace(net, "ops", "web", "tcp", 22)  # web is not enrolled: node 0, its groups
    assert (allowed.decision.allow, allowed.decision.rule, allowed.decision.index) == (
        True,
        "ssh-from-ops",
        0,
    )
    assert allowed.lines[0] == "flow: ops (groups: ops) -> web (groups: web), tcp/22"
    assert allowed.lines[-1] == "rule 1 'ssh-from-ops' (allow): matches -> ALLOW"
    denied = policies.trace(net, "web", "ops", "tcp", 22)
    assert (denied.decision.allow, denied.decision.rule, denied.decision.index) == (False, "default", -1)
    assert denied.lines[-1] == "no rule matches -> default DENY"
    members.set_groups(net, "ops", ["staff"])  # the groups the next document gives it
    assert not policies.trace(net, "ops", "web", "tcp", 22).decision.allow
    assert ops.groups == ("ops",)
    bridged = policies.trace(net, "router", "web", "tcp", 443, src_ip=IPv4Address("192.168.50.9"))
    assert bridged.decision.rule == "lan-to-web"
    assert not policies.trace(net, "router", "web", "tcp", 443).decision.allow  # from its own address
    pop = policies.trace(net, "master", "web", "icmp")
    assert pop.lines[0].startswith("flow: master (groups: pop) -> web")


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        (("ops", "nobody", "tcp", 22), NotFound, "no member or client 'nobody'"),
        (("ops", "web", "sctp", 22), Invalid, "proto: 'sctp' is not a protocol"),
        (("ops", "web", "any", 0), Invalid, "proto: give the flow's protocol"),
        (("ops", "web", "tcp", 0), Invalid, "port: a tcp flow needs its destination port"),
        (("ops", "web", "icmp", 7), Invalid, "port: only tcp and udp flows have ports"),
    ],
)
def test_trace_refuses_bad_input_in_one_line(
    net: PopNetwork, args: tuple[str, str, str, int], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        policies.trace(net, *args)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_trace_of_a_revoked_member_says_so(net: PopNetwork) -> None:
    _enroll(net, "web", 3)
    members.delete_client(net, "web")
    with pytest.raises(NotFound, match="'web' is revoked"):
        policies.trace(net, "ops", "web", "tcp", 22)


# -- the migration -----------------------------------------------------------------------------


def test_a_store_at_0002_is_upgraded_with_its_clients_and_no_policy(store_url: str) -> None:
    store = PopStore(store_url)
    with store.engine.begin() as conn:
        command.upgrade(migrate._config(conn), "0002")
        insert = "INSERT INTO clients (name, ip, groups_json, created_at) VALUES ('laptop', NULL, :g, 1)"
        conn.execute(text(insert), {"g": '["a"]'})
    assert store.revision_problem("naas db upgrade") is not None
    assert store.create_schema() == ("0002", migrate.head_revision())
    (laptop,) = store.clients()
    assert (laptop.name, laptop.groups, laptop.allowed_addresses) == ("laptop", ("a",), ())
    assert store.policy() == OPEN_POLICY
    with store.engine.begin() as conn:  # and back: the downgrade drops what 0003 added
        command.downgrade(migrate._config(conn), "0002")
        columns = list(conn.execute(text("SELECT * FROM clients")).keys())
    assert "allowed_json" not in columns
    store.close()


def test_naas_init_stores_the_files_policy_in_its_one_document(store_url: str, tmp_path: Path) -> None:
    config = parse_config(TOML + POLICY)
    store = PopStore(store_url)
    store.create_schema()
    try:
        make_network(config, tmp_path / "state", store)
        assert store.policy() == config.policy and store.document_version() == 1
        latest = store.latest_document()
        assert latest is not None and json.loads(latest[1])["sections"]["policy"] == config.policy.as_json()
        assert store.client("router").allowed_addresses == (  # type: ignore[union-attr]
            IPv4Network("10.77.0.0/16"),
            IPv4Network("192.168.50.0/24"),
        )
    finally:
        store.close()
