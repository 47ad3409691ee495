"""Hostile handshakes against NodeCores in the simulator (core/cookie.py, core/node.py).

    alpha (10.0.0.1) ---- bravo (10.0.0.2) ---- pop (10.0.0.3)
                              ^
                              |  initiations, thousands a second
                        mallory (10.66.0.1): knows bravo's public key, nothing else

Mallory's initiations are well-formed Noise (only bravo's public key is needed) with a
good mac1, from a static key no CA signed. Before the cookie mechanism each cost bravo two
Diffie-Hellman and a signature check; the simulator has no CPU to run out of, so these
tests count what bravo spends instead, and check that its links and a rekey survive.
"""

from __future__ import annotations

import random

from helpers import NETWORK, SimNet
from naas.core.cookie import (
    ARRIVALS_BURST,
    ARRIVALS_PER_SOURCE,
    HANDSHAKES_BURST,
    HANDSHAKES_PER_SOURCE,
    UNDER_LOAD_INITIATIONS,
    mac_key,
    open_cookie_reply,
    with_macs,
)
from naas.core.handshake import InitiatorHandshake
from naas.core.node import NodeCore
from naas.core.wire import (
    HANDSHAKE_TIMESTAMP,
    OUTER,
    PROLOGUE_PREFIX,
    TYPE_COOKIE_REPLY,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    DropReason,
    pack_initiation,
    parse_cookie_reply_untrusted,
)
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord
from sim.test_node_core import build_mesh, ethernet

MALLORY = ("10.66.0.1", 5640)
FLOOD_PER_SECOND = 5000
STEP = 0.01


def forged_initiations(victim: NodeCore, count: int, cookie: bytes | None = None) -> list[bytes]:
    """Well-formed initiations to ``victim`` from unknown keys: valid Noise, valid mac1,
    a certificate no CA signed. All the same size, as a flooding tool's would be."""
    rng = random.Random(66)
    made = []
    for index in range(count):
        handshake = InitiatorHandshake(
            local_static_private=rng.randbytes(32),
            remote_static_public=victim.identity.certificate.static_public,
            prologue=PROLOGUE_PREFIX + NETWORK.encode(),
        )
        payload = HANDSHAKE_TIMESTAMP.pack(10**13 + index) + b'{"not": "a certificate"}' + bytes(300)
        message = handshake.create_initiation(rng.randbytes(32), payload)
        datagram = pack_initiation(victim.node_id, 4242, index + 1, message)
        made.append(with_macs(datagram, mac_key(victim.identity.certificate.static_public), cookie)[0])
    return made


def flood(net: SimNet, victim: NodeCore, seconds: float, datagrams: list[bytes], as_runs: bool) -> None:
    """Run the mesh while MALLORY sends FLOOD_PER_SECOND of ``datagrams`` to ``victim``,
    as UDP GRO runs (one host, one size: what GRO makes of a flood) or one by one."""
    per_step = int(FLOOD_PER_SECOND * STEP)
    sent = 0
    end = net.now + seconds
    while net.now < end:
        batch = [datagrams[(sent + i) % len(datagrams)] for i in range(per_step)]
        sent += per_step
        if as_runs:
            victim.runs_received([(b"".join(batch), MALLORY, len(batch[0]))], net.now)
        else:
            victim.datagrams_received([(d, MALLORY) for d in batch], net.now)
        net.run(STEP, step=STEP)


def links_up(net: SimNet) -> set[tuple[str, str]]:
    up = set()
    for name, core in net.cores.items():
        for peer in core.peers.values():
            if peer.link_up(net.now):
                up.add((name, peer.name))
    return up


def test_a_flood_from_one_host_costs_a_bounded_number_of_handshakes_and_no_link() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    bravo = net.cores["bravo"]
    before = links_up(net)
    assert len(before) == 6, "full mesh of three before the flood"
    admitted_before = bravo.cookies.handshakes_admitted
    seconds = 5.0
    for as_runs in (True, False):
        flood(net, bravo, seconds / 2, forged_initiations(bravo, 20), as_runs)
        assert links_up(net) == before
    sent = int(FLOOD_PER_SECOND * seconds)
    admitted = bravo.cookies.handshakes_admitted - admitted_before
    # at rest the first UNDER_LOAD_INITIATIONS of a second go through; after that every
    # initiation needs a cookie that Mallory never gets (nothing of hers is answered here)
    assert admitted <= UNDER_LOAD_INITIATIONS + 2 * 8, admitted
    assert bravo.drops[DropReason.RATE_LIMITED] > 0.9 * sent
    assert bravo.drops[DropReason.COOKIE_REQUIRED] <= ARRIVALS_BURST + ARRIVALS_PER_SOURCE * seconds
    replies = net.unrouted.get(MALLORY, [])
    assert replies and all(d[0] == TYPE_COOKIE_REPLY for d in replies)
    assert bravo.drops[DropReason.BAD_CERTIFICATE] == admitted  # what got through was refused
    # the mesh still carries frames, both ways
    alpha = net.cores["alpha"]
    frame = ethernet(bravo.mac, alpha.mac, b"still here")
    alpha.tap_frames_received([frame], net.now)
    net.pump()
    assert frame in net.delivered_frames["bravo"]


def test_a_rekey_during_a_flood_asks_for_a_cookie_and_completes() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    flood(net, bravo, 0.5, forged_initiations(bravo, 20), as_runs=True)
    assert bravo.cookies.under_load(net.now)
    peer = alpha.peers[bravo.node_id]
    handshakes, cookies_sent = peer.stats.handshakes, bravo.cookies.cookies_sent
    alpha.handshakes.initiate(peer, net.now)  # what the rekey timer does
    flood(net, bravo, 0.5, forged_initiations(bravo, 20), as_runs=True)
    assert bravo.cookies.cookies_sent > cookies_sent, "bravo asked alpha for a cookie"
    assert peer.cookie is not None, "alpha kept it"
    assert peer.stats.handshakes == handshakes + 1, "and the initiation with mac2 was accepted"
    assert peer.pending is None and peer.link_up(net.now)


def test_a_host_that_answers_cookies_gets_a_few_handshakes_a_second() -> None:
    net, _ = build_mesh()
    net.run(3.0)
    bravo = net.cores["bravo"]
    flood(net, bravo, 0.3, forged_initiations(bravo, 20), as_runs=True)  # under load now
    # Mallory reads one of her cookie replies, as a smarter tool would, and uses it
    first = forged_initiations(bravo, 1)[0]
    bravo.datagrams_received([(first, MALLORY)], net.now + 0.5)  # a fresh arrivals token
    net.run(STEP, step=STEP)
    reply = parse_cookie_reply_untrusted(net.unrouted[MALLORY][-1])
    cookie = open_cookie_reply(bravo.identity.certificate.static_public, reply.body, first[-32:-16])
    proven = forged_initiations(bravo, 20, cookie)
    admitted_before = bravo.cookies.handshakes_admitted
    seconds = 2.0
    flood(net, bravo, seconds, proven, as_runs=False)
    admitted = bravo.cookies.handshakes_admitted - admitted_before
    assert 0 < admitted <= HANDSHAKES_BURST + HANDSHAKES_PER_SOURCE * (seconds + 1)


def test_a_replayed_initiation_after_a_restart_does_not_move_the_endpoint() -> None:
    """An attacker captured alpha's initiation to bravo and replays it, from elsewhere,
    right after bravo restarted (bravo forgot the newest timestamp it had accepted)."""
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    captured = [
        d
        for d in net.wire_log
        if d[0] == TYPE_INITIATION and OUTER.unpack_from(d)[3:] == (bravo.node_id, alpha.node_id)
    ][-1]
    members = [
        MemberRecord(net.cores[name].identity.certificate, (Endpoint(*net.address_of(name)),))
        for name in ("alpha", "pop")
    ]
    bravo = net.add("bravo", bravo.identity, bravo.network, members=members)  # restarted
    attacker = ("10.66.0.9", 5640)
    bravo.datagrams_received([(captured, attacker)], net.now)
    assert not bravo.drops, "the replay itself is accepted: bravo forgot alpha's last timestamp"
    peer = bravo.peers[alpha.node_id]
    assert peer.current_endpoint != attacker
    assert attacker not in peer.endpoints
    frame = ethernet(alpha.mac, bravo.mac, b"for alpha, not for the attacker")
    bravo.tap_frames_received([frame], net.now)
    to_attacker = [d[0] for d, address in bravo.take_datagrams() if address == attacker]
    assert to_attacker == [TYPE_RESPONSE], "only the response to the replay went there; no data"
    for record in bravo.member_records():
        assert Endpoint(*attacker) not in record.endpoints
    net.run(3.0)
    assert net.cores["bravo"].peers[alpha.node_id].current_endpoint == net.address_of("alpha")
    bravo.tap_frames_received([frame], net.now)
    net.pump()
    assert frame in net.delivered_frames["alpha"]
    assert [d[0] for d in net.unrouted.get(attacker, [])] == [], "nothing more went to the attacker"
