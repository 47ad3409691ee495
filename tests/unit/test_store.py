"""The PoP store on a real database: single use, expiry, atomicity, persistence.

Every test runs twice, on a SQLite file and on a database of the run's throwaway
PostgreSQL cluster (tests/pg.py; skipped without root or PostgreSQL); the file mode,
WAL and in-memory tests are SQLite's own.

    PoP "master" --\
                    +-- pop.db (SQLite, WAL) or test_N (PostgreSQL) --- same token
    PoP "slave" ---/                                   redeemed by both: exactly one wins
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from naas.core.crypto import ed25519_public, x25519_public
from naas.model.certificate import Certificate
from naas.model.config import NetworkConfig, parse_config
from naas.model.ids import NodeId
from naas.pop.addresses import AddressPoolExhausted, choose_ip
from naas.pop.ca import issue_certificate
from naas.pop.invitations import make_token, token_hash
from naas.pop.store import FIRST_NODE_ID, REPLAY_WINDOW, Grant, PopStore, RedeemError, sqlite_url
from pg import PostgresCluster

CA_PRIVATE = b"\x07" * 32
NOW = 1_700_000_000
WEEK = 7 * 86_400

CONFIG = parse_config(
    """
[network]
name = "acme"
subnet = "172.32.0.0/16"
dhcp_range = "172.32.1.1-172.32.1.4"
gateway = "172.32.1.2"

[[pop]]
name = "master"
address = "10.0.0.1"
ip = "172.32.1.1"

[[pop]]
name = "slave"
address = "10.0.0.2"

[[client]]
name = "web"
ip = "172.32.9.9"

[[client]]
name = "db"
"""
)
L2_CONFIG = parse_config('[network]\nname = "acme"\n[[pop]]\nname = "master"\naddress = "10.0.0.1"\n')


def _hash(n: int) -> str:
    return token_hash(make_token(bytes([n]) * 32))


def _issuer(
    config: NetworkConfig = CONFIG,
    calls: list[Grant] | None = None,
    delay: float = 0.0,
    key_seed: bytes | None = None,
) -> Callable[[Grant], Certificate]:
    """Issues for the keys of ``key_seed`` (default: a seed made of the node id)."""

    def issue(grant: Grant) -> Certificate:
        if calls is not None:
            calls.append(grant)
        if delay:
            time.sleep(delay)
        previous = grant.previous.ip.ip if grant.previous and grant.previous.ip else None
        seed = key_seed or bytes([grant.node_id % 256]) * 32
        return issue_certificate(
            CA_PRIVATE,
            network="acme",
            name=grant.client_name,
            node_id=grant.node_id,
            is_pop=False,
            static_public=x25519_public(seed),
            signing_public=ed25519_public(seed),
            ip=choose_ip(config, grant.client_name, grant.used_ips, previous),
            groups=(),
            now=NOW,
            days=365,
        )

    return issue


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The SQLite file of the SQLite-only tests."""
    return tmp_path / "state" / "pop.db"


@pytest.fixture
def url(store_url: str) -> str:
    """The store's URL, once per backend (tests/pg.py)."""
    return store_url


@pytest.fixture
def open_store(url: str) -> Iterator[Callable[[], PopStore]]:
    """Opens another PoP's store on the same database; all are closed after the test."""
    opened: list[PopStore] = []

    def open_another() -> PopStore:
        opened.append(PopStore(url))
        return opened[-1]

    yield open_another
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], PopStore]) -> PopStore:
    store = open_store()
    store.create_schema()
    return store


def test_file_is_private_and_in_wal_mode(db: Path) -> None:
    store = PopStore(sqlite_url(db))
    store.create_schema()
    store.create_schema()  # idempotent
    store.close()
    assert os.stat(db).st_mode & 0o777 == 0o600
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT value FROM meta WHERE key='next_node_id'").fetchone() == ("1",)


def test_token_works_once(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    cert = store.redeem(_hash(1), NOW + 5, "master", _issuer())
    assert cert.name == "db" and cert.node_id == 1
    assert store.member("db") == cert
    assert store.members() == [cert]
    (record,) = store.invitations()
    assert (record.used_at, record.used_by_pop, record.node_id) == (NOW + 5, "master", 1)
    with pytest.raises(RedeemError) as info:
        store.redeem(_hash(1), NOW + 6, "slave", _issuer())
    assert info.value.reason == "used" and str(info.value) == "invitation already used"


def _keys(seed: bytes) -> tuple[bytes, bytes]:
    return x25519_public(seed), ed25519_public(seed)


def test_a_lost_answer_is_redeemed_again_with_the_same_keys(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + 100)
    calls: list[Grant] = []
    mine, other = _keys(b"\x11" * 32), _keys(b"\x22" * 32)
    first = store.redeem(_hash(1), NOW, "master", _issuer(calls=calls, key_seed=b"\x11" * 32), keys=mine)
    # ... the answer is lost (PoP killed, connection dropped); the client retries:
    again = store.redeem(_hash(1), NOW + 60, "slave", _issuer(calls=calls), keys=mine)
    assert again == first and again.signature == first.signature and again.ip == first.ip
    assert len(calls) == 1, "the certificate is not issued twice"
    (record,) = store.invitations()
    assert (record.used_at, record.used_by_pop, record.node_id) == (NOW, "master", first.node_id)
    assert store.members() == [first]
    # Any other key set, half of it, or none at all: the invitation is used.
    for keys in (other, (mine[0], other[1]), (other[0], mine[1]), None):
        with pytest.raises(RedeemError, match="invitation already used"):
            store.redeem(_hash(1), NOW + 61, "slave", _issuer(calls=calls), keys=keys)
    # Even past the invitation's expiry, within the window; not after it.
    assert store.redeem(_hash(1), NOW + 101, "master", _issuer(), keys=mine) == first
    with pytest.raises(RedeemError, match="already used"):
        store.redeem(_hash(1), NOW + REPLAY_WINDOW + 1, "master", _issuer(), keys=mine)
    assert len(calls) == 1 and store.members() == [first]


def test_an_old_token_with_old_keys_is_refused_once_the_member_moved_on(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    old = _keys(b"\x11" * 32)
    store.redeem(_hash(1), NOW, "master", _issuer(key_seed=b"\x11" * 32), keys=old)
    store.add_invitation(_hash(2), "db", NOW + 1, NOW + WEEK)
    renewed = store.redeem(
        _hash(2), NOW + 2, "master", _issuer(key_seed=b"\x33" * 32), keys=_keys(b"\x33" * 32)
    )
    with pytest.raises(RedeemError, match="already used"):
        store.redeem(_hash(1), NOW + 3, "master", _issuer(), keys=old)
    assert store.members() == [renewed]


def test_unknown_and_expired(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    with pytest.raises(RedeemError) as info:
        store.redeem(_hash(2), NOW, "master", _issuer())
    assert info.value.reason == "unknown"
    with pytest.raises(RedeemError) as info:
        store.redeem(_hash(1), NOW + WEEK, "master", _issuer())
    assert info.value.reason == "expired"
    assert store.members() == []
    assert store.redeem(_hash(1), NOW + WEEK - 1, "master", _issuer()).name == "db"


def test_new_invitation_replaces_the_clients_unused_one(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    store.add_invitation(_hash(2), "web", NOW, NOW + WEEK)
    store.add_invitation(_hash(3), "db", NOW + 1, NOW + WEEK)
    with pytest.raises(RedeemError, match="unknown"):
        store.redeem(_hash(1), NOW + 2, "master", _issuer())
    store.redeem(_hash(3), NOW + 2, "master", _issuer())
    store.redeem(_hash(2), NOW + 2, "master", _issuer())
    # A used invitation stays (history) when the client is invited again.
    store.add_invitation(_hash(4), "db", NOW + 3, NOW + WEEK)
    assert {r.token_hash for r in store.invitations()} == {_hash(2), _hash(3), _hash(4)}


def test_reenrollment_keeps_node_id_and_address(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    store.add_invitation(_hash(2), "web", NOW, NOW + WEEK)
    first = store.redeem(_hash(1), NOW, "master", _issuer())
    web = store.redeem(_hash(2), NOW, "master", _issuer())
    assert (first.node_id, web.node_id) == (1, 2)
    assert first.ip == IPv4Interface("172.32.1.3/16")  # .1 master, .2 gateway
    assert web.ip == IPv4Interface("172.32.9.9/16")  # fixed in naas.toml
    store.add_invitation(_hash(3), "db", NOW, NOW + WEEK)
    calls: list[Grant] = []
    again = store.redeem(_hash(3), NOW + 9, "slave", _issuer(calls=calls))
    assert again.node_id == 1 and again.ip == first.ip
    assert calls[0].previous == first
    assert calls[0].used_ips == {IPv4Address("172.32.9.9")}
    assert len(store.members()) == 2


def test_failure_inside_issue_rolls_everything_back(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)

    def broken(grant: Grant) -> Certificate:
        raise RuntimeError("CA unavailable")

    with pytest.raises(RuntimeError):
        store.redeem(_hash(1), NOW, "master", broken)
    assert store.members() == []
    assert store.invitations()[0].used_at is None
    assert store.redeem(_hash(1), NOW, "master", _issuer()).node_id == 1  # counter rolled back


def test_issuer_must_honour_the_grant(store: PopStore) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    good = _issuer()

    def wrong(grant: Grant) -> Certificate:
        return good(Grant("web", grant.node_id, None, frozenset()))

    with pytest.raises(ValueError):
        store.redeem(_hash(1), NOW, "master", wrong)
    assert store.invitations()[0].used_at is None


def _at_two_pops_at_once(
    open_store: Callable[[], PopStore], redeem: Callable[[PopStore, str], None]
) -> list[PopStore]:
    """Two PoPs' stores over one database holding invitation 1; ``redeem(store, pop)``
    runs for both at the same instant, each in a thread. Returns the stores."""
    stores = [open_store() for _ in range(2)]
    stores[0].create_schema()
    stores[0].add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    _at_once([lambda: redeem(stores[0], "master"), lambda: redeem(stores[1], "slave")])
    return stores


def _at_once(calls: list[Callable[[], object]]) -> None:
    """Run ``calls`` in threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a call hangs"
    if errors:
        raise errors[0]


def test_same_token_at_two_pops_concurrently_exactly_one_wins(open_store: Callable[[], PopStore]) -> None:
    outcomes: list[str] = []

    def redeem(store: PopStore, pop: str) -> None:
        try:
            store.redeem(_hash(1), NOW, pop, _issuer(delay=0.2))  # a wide window
            outcomes.append("won")
        except RedeemError as exc:
            outcomes.append(exc.reason)

    stores = _at_two_pops_at_once(open_store, redeem)
    assert sorted(outcomes) == ["used", "won"]
    assert len(stores[1].members()) == 1


def test_same_token_and_keys_at_two_pops_concurrently_both_get_one_certificate(
    open_store: Callable[[], PopStore],
) -> None:
    certs: list[Certificate] = []
    calls: list[Grant] = []

    def redeem(store: PopStore, pop: str) -> None:
        issue = _issuer(calls=calls, delay=0.2, key_seed=b"\x11" * 32)
        certs.append(store.redeem(_hash(1), NOW, pop, issue, keys=_keys(b"\x11" * 32)))

    stores = _at_two_pops_at_once(open_store, redeem)
    assert len(certs) == 2 and certs[0] == certs[1] and len(calls) == 1
    assert stores[1].members() == [certs[0]]


def test_many_clients_at_two_pops_get_distinct_ids_and_addresses(open_store: Callable[[], PopStore]) -> None:
    config = parse_config(
        '[network]\nname = "acme"\nsubnet = "10.9.0.0/24"\n[[pop]]\nname = "master"\naddress = "10.0.0.1"\n'
    )
    stores = [open_store() for _ in range(2)]
    stores[0].create_schema()
    names = [f"c{n}" for n in range(12)]
    for n, name in enumerate(names):
        stores[0].add_invitation(_hash(n), name, NOW, NOW + WEEK)
    certs: list[Certificate] = []

    def run(n: int) -> None:
        certs.append(stores[n % 2].redeem(_hash(n), NOW, "pop", _issuer(config)))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(c.node_id for c in certs) == list(range(1, 13))
    assert len({c.ip for c in certs}) == 12


def test_reenrollments_at_two_pops_at_once_get_distinct_addresses(open_store: Callable[[], PopStore]) -> None:
    """The subnet moved (naas.toml changed): two members enroll again at both PoPs at once
    and neither keeps its old address. Each must take a new one of its own."""
    subnet = '[network]\nname = "acme"\nsubnet = "{}"\n[[pop]]\nname = "master"\naddress = "10.0.0.1"\n'
    old, moved = parse_config(subnet.format("10.9.0.0/24")), parse_config(subnet.format("10.8.0.0/24"))
    stores = [open_store() for _ in range(2)]
    stores[0].create_schema()
    for n, name in enumerate(("db", "web")):
        stores[0].add_invitation(_hash(n), name, NOW, NOW + WEEK)
        stores[0].redeem(_hash(n), NOW, "master", _issuer(old))
        stores[0].add_invitation(_hash(n + 2), name, NOW + 1, NOW + WEEK)
    certs: list[Certificate] = []

    def redeem(n: int, pop: str) -> None:
        certs.append(stores[n].redeem(_hash(n + 2), NOW + 2, pop, _issuer(moved, delay=0.2)))

    _at_once([lambda: redeem(0, "master"), lambda: redeem(1, "slave")])
    assert sorted((c.name, c.node_id) for c in certs) == [("db", 1), ("web", 2)]
    assert len({c.ip for c in certs}) == 2, [str(c.ip) for c in certs]
    assert stores[0].members() == sorted(certs, key=lambda c: c.node_id)


def test_two_pops_create_the_schema_at_once(open_store: Callable[[], PopStore]) -> None:
    """Both create (or upgrade) the tables at the same instant: they queue, neither fails.

    The stores connect one by one first: the first connection to a new SQLite file turns
    it to WAL, which a second first connection at the same instant may find locked
    ("database is locked"); `naas init` alone makes a SQLite store."""
    stores = [open_store() for _ in range(2)]
    for store in stores:
        store.engine.connect().close()
    _at_once([lambda: stores[0].create_schema(), lambda: stores[1].create_schema()])
    assert stores[1].allocate_node_id() == FIRST_NODE_ID


def test_state_survives_reopening(store: PopStore, open_store: Callable[[], PopStore]) -> None:
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    store.add_invitation(_hash(2), "web", NOW, NOW + WEEK)
    cert = store.redeem(_hash(1), NOW, "master", _issuer())
    store.close()
    reopened = open_store()
    reopened.create_schema()
    assert reopened.members() == [cert]
    with pytest.raises(RedeemError, match="used"):
        reopened.redeem(_hash(1), NOW, "slave", _issuer())
    assert reopened.redeem(_hash(2), NOW, "slave", _issuer()).node_id == 2


def test_pops_added_at_init_take_ids_and_addresses(store: PopStore) -> None:
    pop_id = store.allocate_node_id()
    assert pop_id == 1
    pop = issue_certificate(
        CA_PRIVATE,
        network="acme",
        name="master",
        node_id=pop_id,
        is_pop=True,
        static_public=x25519_public(b"\x01" * 32),
        signing_public=ed25519_public(b"\x01" * 32),
        ip=IPv4Interface("172.32.1.1/16"),
        groups=(),
        now=NOW,
        days=365,
    )
    store.add_member(pop, "init")
    store.add_member(pop, "init")  # again: replaced, not duplicated
    assert store.members() == [pop] and store.member("master") == pop
    assert store.used_ips() == {IPv4Address("172.32.1.1")}
    with pytest.raises(ValueError, match="PoP"):
        store.add_invitation(_hash(1), "master", NOW, NOW + WEEK)
    # An explicit id ahead of the counter moves the counter past it.
    far = issue_certificate(
        CA_PRIVATE,
        network="acme",
        name="slave",
        node_id=NodeId(40),
        is_pop=True,
        static_public=x25519_public(b"\x02" * 32),
        signing_public=ed25519_public(b"\x02" * 32),
        ip=None,
        groups=(),
        now=NOW,
        days=365,
    )
    store.add_member(far, "init")
    assert store.allocate_node_id() == 41
    clash = issue_certificate(
        CA_PRIVATE,
        network="acme",
        name="master",
        node_id=NodeId(50),
        is_pop=True,
        static_public=x25519_public(b"\x03" * 32),
        signing_public=ed25519_public(b"\x03" * 32),
        ip=None,
        groups=(),
        now=NOW,
        days=365,
    )
    with pytest.raises(ValueError, match="already member"):
        store.add_member(clash, "init")


def test_allocate_ip(store: PopStore) -> None:
    assert store.allocate_ip(CONFIG, "web") == IPv4Interface("172.32.9.9/16")
    # .1 is the master PoP, .2 the gateway: .3 then .4, then the range is full.
    assert store.allocate_ip(CONFIG, "db") == IPv4Interface("172.32.1.3/16")
    assert store.allocate_ip(L2_CONFIG, "db") is None
    used = {IPv4Address("172.32.1.3"), IPv4Address("172.32.1.4")}
    with pytest.raises(AddressPoolExhausted, match="dhcp_range"):
        choose_ip(CONFIG, "db", used)
    assert choose_ip(CONFIG, "db", used - {IPv4Address("172.32.1.4")}) == IPv4Interface("172.32.1.4/16")


def test_bad_arguments(store: PopStore) -> None:
    with pytest.raises(ValueError):
        store.add_invitation("not-hex", "db", NOW, NOW + WEEK)
    with pytest.raises(ValueError):
        store.add_invitation(_hash(1), "Bad Name", NOW, NOW + WEEK)
    with pytest.raises(ValueError):
        store.add_invitation(_hash(1), "db", NOW, NOW)
    with pytest.raises(ValueError):
        RedeemError("whatever")


def test_a_restarted_postgresql_costs_no_request(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    """``pg_ctl restart`` cuts every pooled connection: the next call still works."""
    with PopStore(postgres_url) as store:
        store.create_schema()
        store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
        postgres_cluster.restart()
        assert store.redeem(_hash(1), NOW, "master", _issuer()).node_id == 1
        postgres_cluster.restart()
        assert len(store.members()) == 1


def test_in_memory_database_works() -> None:
    store = PopStore("sqlite://")
    store.create_schema()
    store.add_invitation(_hash(1), "db", NOW, NOW + WEEK)
    assert store.redeem(_hash(1), NOW, "master", _issuer()).node_id == 1
    assert len(store.members()) == 1
