"""The express lane: `express_send` and `express_receive` against the general path.

The agent tries the express lane on the first read of every wake-up. For what it takes
it must have the very effect the general path has (the same frame arrives, the same
counters move); for anything else it must return None and change nothing, so the
general path can take the read as if the lane did not exist.
"""

from __future__ import annotations

from typing import Any

import pytest

from naas.core.node import NodeCore
from naas.core.offload import GSO_TCPV4, PLAIN_VNET_HDR, VNET_HDR, VNET_NEEDS_CSUM
from naas.core.peer import LinkEvent
from naas.core.wire import DEFAULT_HOP_LIMIT, TYPE_FRAGMENT, DropReason
from naas.model.ids import BROADCAST_MAC
from sim.test_node_offload import MTU, build_pair, tcp4_frame
from sim.test_node_warm_up import visible_state

OFFLOADS = pytest.mark.parametrize("offload", [True, False], ids=["offloads", "no-offloads"])


def ping_frame(dst: NodeCore, src: NodeCore, fill: int = 0) -> bytes:
    """A 98-byte frame as an ICMP echo is on naas0 (IPv4, not TCP)."""
    return dst.mac + src.mac + b"\x08\x00" + bytes([0x45]) + bytes([fill]) * 83


def read_of(core: NodeCore, frame: bytes) -> bytes:
    """What naas0 hands ``core`` for ``frame``: behind a plain virtio header with offloads."""
    return PLAIN_VNET_HDR + frame if core.tap_offload else frame


def written(core: NodeCore, frame: bytes) -> bytes:
    return bytes(read_of(core, frame))


def state(core: NodeCore) -> dict[str, Any]:
    """`visible_state`, with the bytes counted and anything waiting to leave the core."""
    seen = visible_state(core)
    seen["bytes"] = {node: (p.stats.tx_bytes, p.stats.rx_bytes) for node, p in core.peers.items()}
    seen["deadline"] = core.next_deadline()
    seen["waiting"] = (
        list(core.datapath.datagrams_out),
        list(core.datapath.runs_out),
        list(core.datapath.frames_out),
        list(core._events),
    )
    return seen


def active_pair(offload: bool) -> tuple[Any, NodeCore, NodeCore]:
    """Alpha and beta with sessions up and a frame sent each way by the general path, as
    after the first ping: the links are active."""
    net, alpha, beta = build_pair(alpha_offload=offload, beta_offload=offload)
    for src, dst in ((alpha, beta), (beta, alpha)):
        src.tap_frames_received([read_of(src, ping_frame(dst, src))], net.now)
        net.pump()
        dst.take_frames()
    return net, alpha, beta


# -- sending -------------------------------------------------------------------------------------


@OFFLOADS
def test_express_send_seals_what_the_general_path_would(offload: bool) -> None:
    net, alpha, beta = active_pair(offload)
    frame = ping_frame(beta, alpha, fill=7)
    peer = alpha.peers[beta.node_id]
    before = (peer.stats.tx_packets, peer.stats.tx_bytes, peer.sessions[0].send_counter)
    deadline = alpha.next_deadline()

    express = alpha.express_send(read_of(alpha, frame), net.now)

    assert express is not None, "a ping on an active direct link is the express lane's case"
    datagram, address = express
    assert address == net.address_of("beta")
    assert (peer.stats.tx_packets, peer.stats.tx_bytes, peer.sessions[0].send_counter) == (
        before[0] + 1,
        before[1] + len(datagram),
        before[2] + 1,
    )
    assert state(alpha)["waiting"] == ([], [], [], []), "nothing for the driver to send or log"
    assert alpha.next_deadline() == deadline, "no timer to move"
    beta.datagrams_received([(datagram, address_of_alpha(net))], net.now)
    assert beta.take_frames() == [written(beta, frame)], "the general path opens it to the same frame"

    alpha.tap_frames_received([read_of(alpha, frame)], net.now)
    ((general, general_address),) = alpha.take_datagrams()
    assert (len(general), general_address) == (len(datagram), address)
    assert general[:8] == datagram[:8], "same type, hop limit, flags, destination"


def address_of_alpha(net: Any) -> tuple[str, int]:
    address: tuple[str, int] = net.address_of("alpha")
    return address


def test_express_send_clamps_a_tcp_syn_like_the_general_path() -> None:
    net, alpha, beta = active_pair(offload=False)
    syn = tcp4_frame(beta.mac, alpha.mac, bytes([2, 4, 0xFF, 0xFF]), flags=0x02)
    syn = syn[:46] + bytes([6 << 4]) + syn[47:]  # data offset 6: the "payload" is an MSS option
    express = alpha.express_send(syn, net.now)
    assert express is not None
    beta.datagrams_received([(express[0], address_of_alpha(net))], net.now)
    (arrived,) = beta.take_frames()
    alpha.tap_frames_received([syn], net.now)
    ((general, _),) = alpha.take_datagrams()
    beta.datagrams_received([(general, address_of_alpha(net))], net.now)
    assert beta.take_frames() == [arrived], "the same clamped SYN either way"
    assert bytes(arrived)[-2:] != b"\xff\xff", "the MSS was clamped"


def left_alone_cases() -> dict[str, Any]:
    """Reads the express lane must leave to the general path: name -> f(net, alpha, beta)
    returning the read (after changing the state it needs)."""

    def frame_to(dst_mac: bytes) -> Any:
        return lambda net, alpha, beta: read_of(alpha, dst_mac + alpha.mac + b"\x08\x00" + bytes(84))

    def inactive(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        alpha.peers[beta.node_id].active_until = net.now - 1
        return read_of(alpha, ping_frame(beta, alpha))

    def not_direct(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        alpha.peers[beta.node_id].link_event(LinkEvent.PROBES_MISSED)
        return read_of(alpha, ping_frame(beta, alpha))

    def unconfirmed(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        alpha.peers[beta.node_id].sessions[0].confirmed = False
        return read_of(alpha, ping_frame(beta, alpha))

    def arp(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        return read_of(alpha, beta.mac + alpha.mac + b"\x08\x06" + bytes(28))

    def too_big(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        return read_of(alpha, ping_frame(beta, alpha) + bytes(MTU))

    def too_short(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        return read_of(alpha, beta.mac + alpha.mac)

    def needs_checksum(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, 0, 0, 0, 34, 16)
        return vnet + tcp4_frame(beta.mac, alpha.mac, b"x" * 100)

    def super_frame(net: Any, alpha: NodeCore, beta: NodeCore) -> bytes:
        vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV4, 54, 1360, 34, 16)
        return vnet + tcp4_frame(beta.mac, alpha.mac, b"x" * 5000)

    return {
        "broadcast": frame_to(BROADCAST_MAC),
        "learnt MAC": frame_to(b"\x52\x54\x00\x12\x34\x56"),
        "unknown member": frame_to(b"\x02\x4e\x00\x00\x00\x63"),
        "own MAC": lambda net, alpha, beta: read_of(alpha, ping_frame(alpha, alpha)),
        "link not active": inactive,
        "link not direct": not_direct,
        "session unconfirmed": unconfirmed,
        "ARP": arp,
        "too big": too_big,
        "too short": too_short,
        "checksum to do": needs_checksum,
        "TCP super-frame": super_frame,
    }


@pytest.mark.parametrize("case", left_alone_cases())
def test_express_send_leaves_anything_else_untouched(case: str) -> None:
    net, alpha, beta = active_pair(offload=True)
    read = left_alone_cases()[case](net, alpha, beta)
    before = state(alpha)
    assert alpha.express_send(read, net.now) is None
    assert state(alpha) == before, "nothing changed: the general path takes the read as it is"


# -- receiving -----------------------------------------------------------------------------------


def sent_by_alpha(net: Any, alpha: NodeCore, frame: bytes) -> bytes:
    alpha.tap_frames_received([read_of(alpha, frame)], net.now)
    ((datagram, _),) = alpha.take_datagrams()
    return datagram


@OFFLOADS
def test_express_receive_opens_what_the_general_path_would(offload: bool) -> None:
    net, alpha, beta = active_pair(offload)
    frame = ping_frame(beta, alpha, fill=9)
    datagram = sent_by_alpha(net, alpha, frame)
    peer = beta.peers[alpha.node_id]
    before = (peer.stats.rx_packets, peer.stats.rx_bytes)
    deadline = beta.next_deadline()

    out = beta.express_receive(datagram, address_of_alpha(net), net.now)

    assert out is not None and bytes(out) == written(beta, frame)
    assert (peer.stats.rx_packets, peer.stats.rx_bytes) == (before[0] + 1, before[1] + len(datagram))
    assert peer.stats.last_rx == net.now
    assert state(beta)["waiting"] == ([], [], [], []) and beta.next_deadline() == deadline


def test_express_receive_counts_what_it_drops() -> None:
    net, alpha, beta = active_pair(offload=True)
    datagram = sent_by_alpha(net, alpha, ping_frame(beta, alpha))
    forged = datagram[:-1] + bytes([datagram[-1] ^ 1])
    assert beta.express_receive(forged, address_of_alpha(net), net.now) == b""
    assert beta.drops[DropReason.DECRYPT_FAILED] == 1
    assert beta.express_receive(datagram, address_of_alpha(net), net.now)
    assert beta.express_receive(datagram, address_of_alpha(net), net.now) == b""
    assert beta.drops[DropReason.REPLAYED] == 1
    assert beta.take_frames() == [], "nothing of either reaches naas0"


def test_express_receive_hands_other_messages_to_the_general_code() -> None:
    net, alpha, beta = active_pair(offload=False)
    broadcast = BROADCAST_MAC + alpha.mac + b"\x08\x00" + bytes(84)
    datagram = next(d for d, to in flood_from(net, alpha, broadcast) if to == net.address_of("beta"))
    assert beta.express_receive(datagram, address_of_alpha(net), net.now) == b""
    assert beta.take_frames() == [broadcast], "written by the general code, left for take_frames"
    bridged = beta.mac + b"\x52\x54\x00\xab\xcd\xef" + b"\x08\x00" + bytes(84)
    assert beta.express_receive(sent_by_alpha(net, alpha, bridged), address_of_alpha(net), net.now) == b""
    assert beta.take_frames() == [bridged]
    assert beta.mac_table.lookup(b"\x52\x54\x00\xab\xcd\xef", net.now) == alpha.node_id, "learnt"


def flood_from(net: Any, alpha: NodeCore, frame: bytes) -> list[tuple[bytes, tuple[str, int]]]:
    alpha.tap_frames_received([frame], net.now)
    return alpha.take_datagrams()


@pytest.mark.parametrize(
    "case",
    [
        "roamed",
        "relayed",
        "for another member",
        "unknown index",
        "fragment",
        "link not active",
        "unconfirmed",
    ],
)
def test_express_receive_leaves_anything_else_untouched(case: str) -> None:
    net, alpha, beta = active_pair(offload=True)
    datagram = sent_by_alpha(net, alpha, ping_frame(beta, alpha))
    address = address_of_alpha(net)
    if case == "roamed":
        address = ("10.99.0.9", 4242)
    elif case == "relayed":
        datagram = datagram[:1] + bytes([DEFAULT_HOP_LIMIT - 1]) + datagram[2:]
    elif case == "for another member":
        datagram = datagram[:4] + (99).to_bytes(4, "big") + datagram[8:]
    elif case == "unknown index":
        datagram = datagram[:12] + (0xFFFFFFF0).to_bytes(4, "big") + datagram[16:]
    elif case == "fragment":
        datagram = bytes([TYPE_FRAGMENT]) + datagram[1:]
    elif case == "link not active":
        beta.peers[alpha.node_id].active_until = net.now - 1
    else:  # its first message confirms the session: the general path has more to do
        _, session = beta._by_index[int.from_bytes(datagram[12:16], "big")]
        session.confirmed = False
    before = state(beta)
    assert beta.express_receive(datagram, address, net.now) is None
    assert state(beta) == before, "nothing changed: the general path takes the datagram as it is"
    if case == "roamed":
        beta.datagrams_received([(datagram, address)], net.now)
        assert beta.take_frames(), "the general path opens it"
        assert beta.peers[alpha.node_id].current_endpoint == address, "and follows the member"
