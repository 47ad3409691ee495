"""Rerouting through ordinary members when a direct link breaks.

A ------ B          cut A<->C on the underlay: A reaches C through B,
 \\      /           C answers through B; restore: both go direct again.
  \\    /
    C
"""

from __future__ import annotations

from helpers import Authority, SimNet
from naas.core.node import NodeCore


def build_triangle() -> tuple[SimNet, dict[str, NodeCore]]:
    ca = Authority()
    network = ca.network(None)
    net = SimNet()
    for index, name in enumerate(("a", "b", "c"), start=1):
        net.add(name, ca.identity(name, index), network)
    for name, core in net.cores.items():
        for other in net.cores:
            if other != name:
                core._learn_member(net.record(other), net.now, gossip=False)
    net.run(3.0)
    return net, net.cores


def frame(dst: NodeCore, src: NodeCore, payload: bytes) -> bytes:
    return dst.mac + src.mac + b"\x88\xb5" + payload


def send_until_delivered(net: SimNet, src: str, dst: str, limit: float, step: float = 0.1) -> float | None:
    """Send one frame every ``step`` s; seconds until one arrives, or None."""
    started = net.now
    sender, receiver = net.cores[src], net.cores[dst]
    count = 0
    while net.now - started < limit:
        count += 1
        payload = b"probe-%d" % count
        sender.tap_frames_received([frame(receiver, sender, payload)], net.now)
        net.run(step)
        if any(f.endswith(payload) for f in net.delivered_frames[dst]):
            return net.now - started
    return None


def test_cut_link_reroutes_through_a_member_and_comes_back() -> None:
    net, cores = build_triangle()
    a, b = cores["a"], cores["b"]
    assert {p["name"]: p["path"] for p in a.status(net.now)["peers"]} == {"b": "direct", "c": "direct"}
    net.cut.add(frozenset(("a", "c")))
    outage = send_until_delivered(net, "a", "c", limit=10.0)
    assert outage is not None and outage < 4.0, outage
    paths = {p["name"]: p["path"] for p in a.status(net.now)["peers"]}
    assert paths == {"b": "direct", "c": "via b"}
    assert b.relayed_packets > 0
    # replies come back through B as well
    back = send_until_delivered(net, "c", "a", limit=5.0)
    assert back is not None
    net.cut.clear()
    net.run(4.0)
    paths = {p["name"]: p["path"] for p in a.status(net.now)["peers"]}
    assert paths == {"b": "direct", "c": "direct"}
    relayed_before = b.relayed_packets
    assert send_until_delivered(net, "a", "c", limit=2.0) is not None
    assert b.relayed_packets == relayed_before, "back on the direct path"


def test_relay_refuses_strangers_and_exhausted_hop_limits() -> None:
    from naas.core.wire import DropReason, with_hop_limit

    net, cores = build_triangle()
    a, b, c = cores["a"], cores["b"], cores["c"]
    a.tap_frames_received([frame(c, a, b"x")], net.now)
    datagram, _ = a.take_datagrams()[0]
    b.datagrams_received([(datagram, ("10.66.0.1", 999))], net.now)
    assert b.drops[DropReason.WRONG_DESTINATION] == 1, "not from a member: not relayed"
    b.datagrams_received([(with_hop_limit(datagram, 1), net.address_of("a"))], net.now)
    assert b.drops[DropReason.HOP_LIMIT_EXCEEDED] == 1
    assert b.take_datagrams() == []


def test_own_deltas_from_an_earlier_life_are_outrun() -> None:
    """A restarted member whose clock went back sees its old, higher-seq delta again."""
    from naas.core.control_messages import LinkState
    from naas.core.routing import LinkStateDelta, sign_delta

    net, cores = build_triangle()
    a, b = cores["a"], cores["b"]
    future = sign_delta(
        LinkStateDelta(a.node_id, 2**62, True, ((b.node_id, 500),)), a.identity.signing_private
    )
    a.link_state.deltas_received(a.peers[b.node_id], LinkState((future,)), net.now)  # b sends it back
    net.run(2.0)
    assert b.routes.database.seq_of(a.node_id) is not None
    assert b.routes.database.seq_of(a.node_id) >= 2**62 + 1  # type: ignore[operator]
    status = a.status(net.now)
    assert status["relayed"] == {"packets": 0, "bytes": 0}


def test_link_state_table_of_a_large_mesh_is_split_into_messages_that_parse() -> None:
    """80 full deltas of 79 links each: too much for one control message."""
    from naas.core.routing import LinkStateDelta

    net, cores = build_triangle()
    a, b = cores["a"], cores["b"]
    n = 80
    deltas = [
        LinkStateDelta(o, 10**12 + o, True, tuple((j, 25_000) for j in range(1, n + 1) if j != o), b"\1" * 64)
        for o in range(1, n + 1)
    ]
    a.take_all_datagrams()
    peer = a.peers[b.node_id]
    sent_before = peer.stats.tx_packets
    a.link_state.send_deltas(peer, deltas, net.now)
    assert peer.stats.tx_packets - sent_before > 1, "split into several messages"
    datagrams = a.take_all_datagrams()
    received: list[LinkStateDelta] = []
    b.link_state.deltas_received = lambda sender, message, now: received.extend(message.deltas)  # type: ignore[method-assign]
    b.datagrams_received([(d, net.address_of("a")) for d, _ in datagrams], net.now)
    assert sum(b.drops.values()) == 0, b.drops
    assert received == deltas
