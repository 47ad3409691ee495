"""NodeCores talking through an in-memory underlay (no I/O, fake clock, seeded RNG).

    A (10.0.0.1) ----\\
                      P (PoP, 10.0.0.3)     A and B only know P at first;
    B (10.0.0.2) ----/                      P introduces them, then A<->B go direct.
"""

from __future__ import annotations

import os
import random

from helpers import NETWORK, Authority, SimNet
from naas.core.constants import MAX_ENDPOINTS_PER_MEMBER
from naas.core.wire import DropReason
from naas.model.ids import BROADCAST_MAC, Endpoint, mac_for_node
from naas.model.network import MemberRecord


def ethernet(dst: bytes, src: bytes, payload: bytes, ethertype: bytes = b"\x88\xb5") -> bytes:
    return dst + src + ethertype + payload


def build_mesh(subnet: str | None = "10.77.0.0/16", **net_options: float) -> tuple[SimNet, Authority]:
    ca = Authority()
    network = ca.network(subnet)
    net = SimNet(**net_options)  # type: ignore[arg-type]
    ip = subnet is not None
    pop = ca.identity("pop", 1, "10.77.0.1/16" if ip else None, pop=True)
    a = ca.identity("alpha", 2, "10.77.1.2/16" if ip else None)
    b = ca.identity("bravo", 3, "10.77.1.3/16" if ip else None)
    # names sort as alpha, bravo, pop -> addresses .1, .2, .3
    net.add("alpha", a, network)
    net.add("bravo", b, network)
    net.add("pop", pop, network)
    pop_record = net.record("pop")
    for name in ("alpha", "bravo"):
        net.cores[name]._learn_member(pop_record, net.now, gossip=False)
    return net, ca


def test_pop_introduces_members_then_they_talk_direct() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    assert bravo.node_id in alpha.peers, "alpha learned bravo through the PoP"
    assert alpha.peers[bravo.node_id].current_endpoint == net.address_of("bravo")
    frame = ethernet(bravo.mac, alpha.mac, b"hello bravo")
    pop_rx_before = net.cores["pop"].peers[alpha.node_id].stats.rx_packets
    alpha.tap_frames_received([frame], net.now)
    net.pump()
    assert frame in net.delivered_frames["bravo"]
    assert net.cores["pop"].peers[alpha.node_id].stats.rx_packets == pop_rx_before, "not via the PoP"
    status = alpha.status(net.now)
    paths = {p["name"]: p["path"] for p in status["peers"]}
    assert paths == {"bravo": "direct", "pop": "direct"}
    assert all(p["rtt_ms"] is not None for p in status["peers"])


def test_broadcast_reaches_every_member() -> None:
    net, _ = build_mesh(subnet=None)
    net.run(3.0)
    frame = ethernet(BROADCAST_MAC, net.cores["alpha"].mac, b"who is there")
    net.cores["alpha"].tap_frames_received([frame], net.now)
    net.pump()
    assert frame in net.delivered_frames["bravo"]
    assert frame in net.delivered_frames["pop"]


def test_bridged_mac_is_learned() -> None:
    net, _ = build_mesh(subnet=None)
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    vm_mac = bytes.fromhex("525400aabbcc")
    # the VM behind bravo broadcasts once; alpha learns where it lives
    bravo.tap_frames_received([ethernet(BROADCAST_MAC, vm_mac, b"arp-ish")], net.now)
    net.pump()
    assert alpha.mac_table.lookup(vm_mac, net.now) == bravo.node_id
    reply = ethernet(vm_mac, alpha.mac, b"unicast to the VM")
    pop_frames = len(net.delivered_frames["pop"])
    alpha.tap_frames_received([reply], net.now)
    net.pump()
    assert reply in net.delivered_frames["bravo"]
    assert len(net.delivered_frames["pop"]) == pop_frames, "unicast to a learned MAC is not flooded"


def test_underlay_never_carries_plaintext() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    marker = b"NAAS-PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    net.wire_log.clear()
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, marker * 4)], net.now)
    net.pump()
    assert any(marker in f for f in net.delivered_frames["bravo"])
    assert net.wire_log and not any(marker in d for d in net.wire_log)


def test_replayed_datagram_is_counted_and_dropped() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"once")], net.now)
    captured = alpha.take_datagrams()
    assert len(captured) == 1
    bravo.datagrams_received([(captured[0][0], net.address_of("alpha"))], net.now)
    bravo.datagrams_received([(captured[0][0], net.address_of("alpha"))], net.now)
    assert bravo.take_frames() == [ethernet(bravo.mac, alpha.mac, b"once")]
    assert bravo.drops[DropReason.REPLAYED] == 1


def test_garbage_is_counted_never_raised() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    bravo = net.cores["bravo"]
    rng = random.Random(3)
    alpha = net.cores["alpha"]
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"x" * 100)], net.now)
    good = alpha.take_datagrams()[0][0]
    junk = [rng.randbytes(rng.randrange(0, 200)) for _ in range(500)]
    for _ in range(500):  # mutations of a valid packet: header and body bit flips
        mutated = bytearray(good)
        mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        junk.append(bytes(mutated))
    bravo.datagrams_received([(d, ("10.9.9.9", 1)) for d in junk], net.now)
    assert sum(bravo.drops.values()) >= 990
    assert bravo.drops[DropReason.DECRYPT_FAILED] > 0
    # and the mesh still works afterwards
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"still alive")], net.now)
    net.pump()
    assert ethernet(bravo.mac, alpha.mac, b"still alive") in net.delivered_frames["bravo"]


def test_lossy_duplicating_reordering_underlay_still_converges() -> None:
    net, _ = build_mesh(loss=0.2, duplicate=0.1, reorder=1.0)
    net.run(20.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    delivered = 0
    for i in range(50):
        alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"n%d" % i)], net.now)
        net.run(0.05)
    delivered = len({f for f in net.delivered_frames["bravo"] if f[14:15] == b"n"})
    assert 25 <= delivered <= 50  # ~20% loss, duplicates removed by the replay window


def test_member_of_another_ca_is_refused() -> None:
    net, _ = build_mesh()
    rogue_ca = Authority(seed=99)
    rogue = rogue_ca.identity("mallory", 9, "10.77.9.9/16")
    net.add("mallory", rogue, net.cores["pop"].network)
    net.cores["mallory"]._learn_member(net.record("pop"), net.now, gossip=False)
    net.run(3.0)
    pop = net.cores["pop"]
    assert 9 not in pop.peers
    assert pop.drops[DropReason.BAD_CERTIFICATE] >= 1


def test_rekey_keeps_traffic_flowing() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    first = alpha.peers[bravo.node_id].send_session(net.now)
    net.run(200.0, step=0.05)
    second = alpha.peers[bravo.node_id].send_session(net.now)
    assert first is not None and second is not None and second is not first
    frame = ethernet(bravo.mac, alpha.mac, b"after rekey")
    alpha.tap_frames_received([frame], net.now)
    net.pump()
    assert frame in net.delivered_frames["bravo"]


def test_arp_for_member_is_answered_locally() -> None:
    from naas.core.arp import build_gratuitous_arp, parse_arp_untrusted

    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    # an ARP request: who has 10.77.1.3 (bravo)? built from a gratuitous template
    template = bytearray(build_gratuitous_arp(alpha.mac, alpha.identity.certificate.ip.ip))  # type: ignore[union-attr]
    template[20:22] = b"\x00\x01"  # op = request
    template[38:42] = bytes([10, 77, 1, 3])  # target IP
    alpha.tap_frames_received([bytes(template)], net.now)
    replies = alpha.take_frames()
    assert alpha.take_datagrams() == [], "answered locally, nothing crosses the mesh"
    assert len(replies) == 1
    answer = parse_arp_untrusted(replies[0])
    assert answer.op == 2 and answer.sender_mac == mac_for_node(bravo.node_id)  # type: ignore[arg-type]


def test_layer2_mode_answers_nothing_locally() -> None:
    net, _ = build_mesh(subnet=None)
    net.run(3.0)
    alpha = net.cores["alpha"]
    frame = ethernet(BROADCAST_MAC, alpha.mac, bytes(28), ethertype=b"\x08\x06")
    alpha.tap_frames_received([frame], net.now)
    assert alpha.take_frames() == []
    assert len(alpha.take_datagrams()) == 2, "ARP is flooded to both members"
    assert alpha.network.name == NETWORK


def test_superseded_certificate_cannot_connect() -> None:
    """After bravo re-enrolls (new keys, newer certificate), its old keys are refused."""
    net, ca = build_mesh()
    net.run(3.0)
    alpha = net.cores["alpha"]
    old = net.cores["bravo"].identity
    renewed = ca.identity("bravo", 3, "10.77.1.3/16", not_before=old.certificate.not_before + 5)
    alpha._learn_member(MemberRecord(renewed.certificate), net.now, gossip=False)
    assert alpha.peers[3].certificate == renewed.certificate
    assert alpha.peers[3].sessions == [], "sessions of the old keys are forgotten"
    before = alpha.drops[DropReason.BAD_CERTIFICATE]
    net.cores["bravo"].peers[alpha.node_id].sessions.clear()  # force a new handshake
    net.cores["bravo"].peers[alpha.node_id].pending = None
    net.cores["bravo"].handshakes.initiate(net.cores["bravo"].peers[alpha.node_id], net.now)
    net.pump()
    assert alpha.drops[DropReason.BAD_CERTIFICATE] == before + 1
    assert alpha.peers[3].sessions == []


def test_gossiped_endpoints_are_bounded() -> None:
    net, _ = build_mesh()
    alpha = net.cores["alpha"]
    record = net.record("bravo")
    many = tuple(Endpoint(f"10.9.{i // 250}.{i % 250 + 1}", 5640) for i in range(100))
    alpha._learn_member(MemberRecord(record.certificate, many), net.now, gossip=False)
    assert len(alpha.peers[3].endpoints) <= MAX_ENDPOINTS_PER_MEMBER
