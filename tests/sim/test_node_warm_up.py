"""NodeCore.warm_up: a frame sealed and opened on the node's private loopback session.

The agent calls it on every poll while traffic flows; it must do the real work (the
frame comes back intact) and leave no trace a member or an operator could see.
"""

from __future__ import annotations

from typing import Any

import pytest

from naas.core.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from naas.core.node import NodeCore
from naas.core.wire import DEFAULT_HOP_LIMIT, SEALED_HEADER, TYPE_DATA, DropReason
from sim.test_node_offload import build_pair

WARM_UPS = 1000


def visible_state(core: NodeCore) -> dict[str, Any]:
    """What members and operators can observe of a core, and what warm_up must not touch."""
    return {
        "drops": dict(core.drops),
        "peers": {
            node: (
                peer.stats.tx_packets,
                peer.stats.rx_packets,
                [session.send_counter for session in peer.sessions],
                peer.active_until,
                peer.current_endpoint,
            )
            for node, peer in core.peers.items()
        },
        "tracked": sorted(core._tracked),
        "learned_macs": len(core.mac_table),
        "relayed": core.relayed_packets,
        "members": len(core.member_records()),
    }


@pytest.mark.parametrize("offload", [True, False], ids=["offloads", "no-offloads"])
def test_warm_up_round_trips_and_leaves_no_trace(offload: bool) -> None:
    net, alpha, _ = build_pair(alpha_offload=offload, beta_offload=offload)
    before = visible_state(alpha)
    assert all(alpha.warm_up(net.now + i * 0.002) for i in range(WARM_UPS)), "the frame came back intact"
    assert alpha.take_datagrams() == [] and alpha.take_runs() == [], "nothing leaves the node"
    assert alpha.take_frames() == [], "nothing reaches naas0"
    assert alpha.take_events() == []
    assert visible_state(alpha) == before


def test_real_frames_still_cross_after_warm_ups() -> None:
    net, alpha, beta = build_pair(alpha_offload=False, beta_offload=False)
    for i in range(10):
        assert alpha.warm_up(net.now + i * 0.002)
        assert beta.warm_up(net.now + i * 0.002)
    frame = beta.mac + alpha.mac + b"\x08\x00" + bytes(range(84))
    alpha.tap_frames_received([frame], net.now)
    net.pump()
    assert net.delivered_frames["beta"] == [frame]
    assert beta.drops == {} and alpha.drops == {}


def test_loopback_session_never_expires() -> None:
    net, alpha, _ = build_pair()
    assert alpha.warm_up(net.now)
    later = net.now + 3 * REJECT_AFTER_TIME
    assert alpha.warm_up(later), "still sealed and opened long after any real session's lifetime"
    assert alpha.drops == {}


def test_a_loopback_that_cannot_send_fails_quietly() -> None:
    """Should the loopback session ever be unusable, the warm-up says so and nothing else happens."""
    net, alpha, _ = build_pair()
    alpha.take_datagrams()
    alpha.datapath.loopback[1].send_counter = REJECT_AFTER_MESSAGES
    before = visible_state(alpha)
    assert not alpha.warm_up(net.now)
    assert alpha.take_datagrams() == [] and alpha.take_frames() == []
    assert visible_state(alpha) == before


def test_datagram_from_the_network_naming_the_loopback_session_is_dropped() -> None:
    """Its index is real, but its key never left the node: a forgery fails the tag."""
    net, alpha, beta = build_pair()
    loopback_index = alpha.datapath.loopback[1].local_index
    forged = SEALED_HEADER.pack(
        TYPE_DATA, DEFAULT_HOP_LIMIT, 0, alpha.node_id, alpha.node_id, loopback_index, 0
    ) + bytes(100)
    before = visible_state(alpha)
    alpha.datagrams_received([(forged, net.address_of("beta"))], net.now)
    assert alpha.drops[DropReason.DECRYPT_FAILED] == 1
    as_beta = SEALED_HEADER.pack(
        TYPE_DATA, DEFAULT_HOP_LIMIT, 0, alpha.node_id, beta.node_id, loopback_index, 0
    ) + bytes(100)
    alpha.datagrams_received([(as_beta, net.address_of("beta"))], net.now)
    assert alpha.drops[DropReason.UNKNOWN_SENDER] == 1
    assert alpha.take_frames() == [] and alpha.take_datagrams() == []
    after = visible_state(alpha)
    del before["drops"], after["drops"]
    assert after == before
    assert alpha.warm_up(net.now), "and the loopback still works"
