"""The connection table, on a fake clock (plain floats: the table never reads time).

    this node (10.0.0.1) ---- peer 7 (10.0.0.2), peer 8 (10.0.0.3)

Keys are flow keys (proto, ip_src, src_port, ip_dst, dst_port) as core/flow.py builds
them; the table files each connection under its key and the reverse.
"""

from __future__ import annotations

import random
import struct

import pytest

from naas.core import conntrack
from naas.core.conntrack import (
    ICMP_TIMEOUT,
    OTHER_TIMEOUT,
    REQUEUE_SLACK,
    TCP_CLOSING_TIMEOUT,
    TCP_TIMEOUT,
    UDP_TIMEOUT,
    ConnectionTable,
    Entry,
)
from naas.core.flow import (
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    FlowKey,
    flow_key,
    parse_flow_untrusted,
    reverse_key,
)

ME, PEER, OTHER_PEER = 0x0A000001, 0x0A000002, 0x0A000003
PEER_ID, OTHER_ID = 7, 8
TCP_KEY: FlowKey = (6, ME, 40000, PEER, 443)
UDP_KEY: FlowKey = (17, ME, 5353, PEER, 53)
ECHO_KEY: FlowKey = (1, ME, 0x1234, PEER, 0x1234)
GRE_KEY: FlowKey = (47, ME, 0, PEER, 0)


def udp_key(port: int) -> FlowKey:
    return (17, ME, port, PEER, 53)


def opened(table: ConnectionTable, key: FlowKey, now: float = 0.0, peer: int = PEER_ID) -> Entry:
    return table.open(peer, key, key[0], now, True, "allow-out", 3)


def check_invariants(table: ConnectionTable) -> None:
    """Every connection is in two dict slots (one if its key is its own reverse), one
    queue and its peer's index; nothing else is anywhere."""
    entries = set(table._table.values())
    assert len(entries) == len(table)
    slots = sum(1 if e.key == reverse_key(e.key) else 2 for e in entries)
    assert len(table._table) == slots
    for entry in entries:
        assert table._table[(entry.peer, entry.key)] is entry
        assert table._table[(entry.peer, reverse_key(entry.key))] is entry
        assert entry in entry.queue
        assert entry in table._by_peer[entry.peer]
        assert entry.expires_at <= entry.queued_until + REQUEUE_SLACK
    assert sum(len(queue) for queue in table._queues) == len(table)
    assert sum(len(index) for index in table._by_peer.values()) == len(table)
    assert all(table._by_peer.values())
    assert len(table) <= table.max_flows
    for queue in table._queues:  # each queue sorted by its stamps
        stamps = [entry.queued_until for entry in queue]
        assert stamps == sorted(stamps)


def test_one_entry_answers_both_directions() -> None:
    table = ConnectionTable()
    entry = opened(table, TCP_KEY, now=5.0)
    assert table.lookup(PEER_ID, TCP_KEY, 6.0) is entry
    assert table.lookup(PEER_ID, reverse_key(TCP_KEY), 6.0) is entry
    assert entry.key == TCP_KEY  # the original direction; the reply is the other key
    assert (entry.peer, entry.proto, entry.outbound, entry.rule, entry.generation) == (
        PEER_ID,
        6,
        True,
        "allow-out",
        3,
    )
    assert table.lookup(OTHER_ID, TCP_KEY, 6.0) is None  # keys are per peer
    assert table.lookup(PEER_ID, (6, ME, 40001, PEER, 443), 6.0) is None
    assert len(table) == 1 and len(table._table) == 2
    assert table.counts() == {"tcp": 1, "udp": 0, "icmp": 0, "other": 0}
    check_invariants(table)


def test_icmp_echo_reply_finds_the_request() -> None:
    table = ConnectionTable()
    entry = opened(table, ECHO_KEY)
    assert table.lookup(PEER_ID, (1, PEER, 0x1234, ME, 0x1234), 1.0) is entry


@pytest.mark.parametrize(
    ("key", "timeout"),
    [(TCP_KEY, TCP_TIMEOUT), (UDP_KEY, UDP_TIMEOUT), (ECHO_KEY, ICMP_TIMEOUT), (GRE_KEY, OTHER_TIMEOUT)],
)
def test_idle_timeout_by_protocol(key: FlowKey, timeout: float) -> None:
    table = ConnectionTable()
    entry = opened(table, key, now=100.0)
    assert entry.expires_at == 100.0 + timeout
    assert table.lookup(PEER_ID, key, 100.0 + timeout - 0.001) is entry
    assert table.lookup(PEER_ID, reverse_key(key), 100.0 + timeout) is None  # expired: removed on sight
    assert len(table) == 0 and table.expired == 1
    assert table.lookup(PEER_ID, key, 100.0) is None
    check_invariants(table)


def test_timeouts_are_the_documented_ones() -> None:
    assert (TCP_TIMEOUT, TCP_CLOSING_TIMEOUT, UDP_TIMEOUT, ICMP_TIMEOUT, OTHER_TIMEOUT) == (
        720,
        10,
        180,
        30,
        60,
    )
    assert conntrack.MAX_FLOWS == 65536


def test_touch_restarts_the_idle_timeout() -> None:
    table = ConnectionTable()
    entry = opened(table, UDP_KEY)
    table.touch(entry, 0, 100.0)
    assert table.lookup(PEER_ID, UDP_KEY, 279.0) is entry
    table.touch(entry, 0, 279.0)
    assert table.lookup(PEER_ID, UDP_KEY, 279.0 + UDP_TIMEOUT - 0.5) is entry
    assert table.lookup(PEER_ID, UDP_KEY, 279.0 + UDP_TIMEOUT) is None
    check_invariants(table)


@pytest.mark.parametrize("flags", [TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK])
def test_fin_or_rst_switches_to_the_closing_timeout(flags: int) -> None:
    table = ConnectionTable()
    entry = opened(table, TCP_KEY)
    table.touch(entry, TCP_SYN | TCP_ACK, 1.0)
    table.touch(entry, flags, 100.0)
    assert entry.closing
    assert entry.expires_at == 100.0 + TCP_CLOSING_TIMEOUT
    table.touch(entry, TCP_ACK, 105.0)  # the last ACK: still closing, for good
    assert entry.expires_at == 105.0 + TCP_CLOSING_TIMEOUT
    assert table.counts()["tcp"] == 1
    check_invariants(table)
    assert table.lookup(PEER_ID, TCP_KEY, 105.0 + TCP_CLOSING_TIMEOUT - 0.1) is entry
    assert table.expire(105.0 + TCP_CLOSING_TIMEOUT) == 1
    assert len(table) == 0


def test_touch_takes_the_flow_itself() -> None:
    segment = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 0x50, TCP_FIN | TCP_ACK, 1000, 0, 0)
    datagram = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 1, 0, 64, 6, 0, ME, PEER) + segment
    flow = parse_flow_untrusted(bytes(6) + bytes(6) + b"\x08\x00" + datagram)
    table = ConnectionTable()
    entry = opened(table, flow_key(flow))
    table.touch(entry, flow, 50.0)
    assert entry.closing and entry.expires_at == 50.0 + TCP_CLOSING_TIMEOUT


def test_a_full_table_evicts_the_entry_nearest_its_deadline() -> None:
    table = ConnectionTable(max_flows=3)
    first = opened(table, udp_key(1), now=0.0)
    opened(table, udp_key(2), now=1.0)
    opened(table, udp_key(3), now=2.0)
    table.touch(first, 0, 3.0)  # first is now the most recently seen: udp_key(2) is the oldest
    opened(table, udp_key(4), now=4.0)
    assert len(table) == 3 and table.evicted == 1
    assert table.lookup(PEER_ID, udp_key(2), 4.0) is None
    assert table.lookup(PEER_ID, udp_key(1), 4.0) is first
    check_invariants(table)


def test_eviction_compares_deadlines_across_protocols() -> None:
    table = ConnectionTable(max_flows=2)
    tcp = opened(table, TCP_KEY, now=0.0)  # deadline 720
    opened(table, ECHO_KEY, now=10.0)  # deadline 40
    opened(table, UDP_KEY, now=11.0)
    assert table.lookup(PEER_ID, ECHO_KEY, 11.0) is None
    assert table.lookup(PEER_ID, TCP_KEY, 11.0) is tcp
    assert table.evicted == 1


def test_a_full_table_gives_up_an_expired_entry_before_a_live_one() -> None:
    table = ConnectionTable(max_flows=2)
    opened(table, ECHO_KEY, now=0.0)
    tcp = opened(table, TCP_KEY, now=0.0)
    opened(table, UDP_KEY, now=ICMP_TIMEOUT + 1)
    assert (table.evicted, table.expired, len(table)) == (0, 1, 2)
    assert table.lookup(PEER_ID, TCP_KEY, ICMP_TIMEOUT + 1) is tcp


def test_opening_a_known_connection_replaces_it() -> None:
    table = ConnectionTable()
    old = opened(table, TCP_KEY)
    new = table.open(PEER_ID, reverse_key(TCP_KEY), 6, 2.0, False, "web-in", 4)
    assert new is not old and len(table) == 1
    assert table.lookup(PEER_ID, TCP_KEY, 3.0) is new
    assert (new.key, new.outbound, new.rule, new.generation) == (reverse_key(TCP_KEY), False, "web-in", 4)
    check_invariants(table)


def test_a_key_that_is_its_own_reverse() -> None:
    table = ConnectionTable()
    key: FlowKey = (17, ME, 5000, ME, 5000)
    entry = opened(table, key)
    assert table.lookup(PEER_ID, key, 1.0) is entry
    assert len(table._table) == 1
    check_invariants(table)
    table.remove(entry)
    table.remove(entry)  # twice: a no-op
    assert len(table) == 0 and not table._table
    check_invariants(table)


def test_forget_peer() -> None:
    table = ConnectionTable()
    for port in range(5):
        opened(table, udp_key(port), peer=PEER_ID)
    kept = opened(table, TCP_KEY, peer=OTHER_ID)
    assert table.forget_peer(PEER_ID) == 5
    assert table.forget_peer(PEER_ID) == 0
    assert len(table) == 1
    assert table.lookup(PEER_ID, udp_key(0), 1.0) is None
    assert table.lookup(OTHER_ID, TCP_KEY, 1.0) is kept
    check_invariants(table)


def test_expire_removes_at_most_its_budget() -> None:
    table = ConnectionTable()
    for port in range(10):
        opened(table, udp_key(port), now=float(port))
    live = opened(table, TCP_KEY)
    now = 9.0 + UDP_TIMEOUT
    assert table.expire(now, budget=3) == 3
    assert len(table) == 8
    assert table.expire(now, budget=100) == 7
    assert table.expire(now, budget=100) == 0
    assert len(table) == 1 and table.expired == 10
    assert table.lookup(PEER_ID, TCP_KEY, now) is live
    check_invariants(table)


def test_expire_leaves_what_was_refreshed() -> None:
    table = ConnectionTable()
    busy = opened(table, udp_key(1), now=0.0)
    idle = opened(table, udp_key(2), now=0.0)
    table.touch(busy, 0, 100.0)  # moved to the back of its queue
    assert table.expire(UDP_TIMEOUT) == 1
    assert table.lookup(PEER_ID, udp_key(2), UDP_TIMEOUT) is None
    assert idle.queue is busy.queue and len(busy.queue) == 1
    assert table.expire(100.0 + UDP_TIMEOUT) == 1


def test_a_touch_within_the_slack_keeps_the_entry_in_place_but_alive() -> None:
    table = ConnectionTable()
    entry = opened(table, UDP_KEY, now=0.0)
    table.touch(entry, 0, REQUEUE_SLACK / 2)  # not moved: the stamp stays UDP_TIMEOUT
    assert entry.queued_until == UDP_TIMEOUT
    assert table.expire(UDP_TIMEOUT) == 0  # due by its stamp, but alive a little longer
    assert table.lookup(PEER_ID, UDP_KEY, UDP_TIMEOUT) is entry
    assert table.expire(UDP_TIMEOUT + REQUEUE_SLACK / 2) == 1


def test_counts() -> None:
    table = ConnectionTable()
    opened(table, TCP_KEY, now=0.0)
    opened(table, UDP_KEY, now=0.0)
    opened(table, ECHO_KEY, now=0.0)
    opened(table, GRE_KEY, now=0.0, peer=OTHER_ID)
    assert table.counts() == {"tcp": 1, "udp": 1, "icmp": 1, "other": 1}


def test_clear() -> None:
    table = ConnectionTable()
    for port in range(5):
        opened(table, udp_key(port), peer=port % 2)
    entry = opened(table, TCP_KEY)
    table.touch(entry, TCP_FIN, 1.0)
    table.clear()
    assert len(table) == 0 and table.counts() == {"tcp": 0, "udp": 0, "icmp": 0, "other": 0}
    assert table.lookup(PEER_ID, TCP_KEY, 2.0) is None
    check_invariants(table)
    opened(table, TCP_KEY)
    check_invariants(table)


def test_bad_size() -> None:
    with pytest.raises(ValueError):
        ConnectionTable(max_flows=0)


def test_random_traffic_keeps_the_table_bounded_and_consistent() -> None:
    """A seeded storm of opens, touches (FIN included), lookups, removals, sweeps and
    forgotten peers on a small table: the invariants hold after every step."""
    rng = random.Random(1)
    table = ConnectionTable(max_flows=40)
    now = 0.0
    keys = [(proto, ME, port, PEER, 80) for proto in (6, 17, 1, 47) for port in range(30)]
    for _ in range(5000):
        now += rng.choice([0.0, 0.1, 0.5, 2.0, 15.0])
        peer = rng.choice([PEER_ID, OTHER_ID])
        key = rng.choice(keys)
        if rng.random() < 0.5:
            key = reverse_key(key)
        action = rng.random()
        entry = table.lookup(peer, key, now)
        if entry is None:
            if action < 0.7:
                entry = table.open(peer, key, key[0], now, rng.random() < 0.5, "r", 1)
                assert entry.expires_at > now
        elif action < 0.8:
            table.touch(entry, rng.choice([0, TCP_ACK, TCP_FIN, TCP_RST]) if key[0] == 6 else 0, now)
        elif action < 0.85:
            table.remove(entry)
        elif action < 0.86:
            table.forget_peer(peer)
        if rng.random() < 0.1:
            table.expire(now, budget=rng.randint(1, 10))
        check_invariants(table)
    assert table.evicted > 0 and table.expired > 0
