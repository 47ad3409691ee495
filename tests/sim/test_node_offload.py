"""TAP offloads across the mesh: TCP super-frames read with a virtio-net header cross as
one sealed message cut into FRAGMENT runs, and come out whole (or cut up in software)
at the other end. Pure NodeCores wired by tests/helpers.py; no root, no sockets."""

from __future__ import annotations

import random
import struct

from helpers import Authority, SimNet
from naas.core.fragments import FRAGMENT_HEADER_LEN, datagrams_of, piece_size_for
from naas.core.node import NodeCore
from naas.core.offload import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP,
    PLAIN_VNET_HDR,
    VNET_HDR,
    VNET_NEEDS_CSUM,
    complete_checksum,
    internet_checksum,
    software_segments,
)
from naas.core.wire import (
    DEFAULT_HOP_LIMIT,
    INNER_OFFLOAD_FRAME,
    TYPE_DATA,
    TYPE_FRAGMENT,
    DropReason,
)

MTU = 1400
SEGMENT = FRAGMENT_HEADER_LEN + piece_size_for(MTU)  # 1455
MSS = 1360  # a segment of it with bare IPv4 and TCP headers is exactly MTU + 14 bytes
IP_A = bytes([172, 32, 0, 1])
IP_B = bytes([172, 32, 0, 2])
ACK, PSH = 0x10, 0x08


# -- frames as a TAP with offloads hands them over ---------------------------------------------


def payload_of(size: int, seed: int = 60) -> bytes:
    return random.Random(seed).randbytes(size)


def pseudo_header(tcp_len: int) -> bytes:
    return IP_A + IP_B + struct.pack("!BBH", 0, 6, tcp_len)


def tcp4_frame(dst_mac: bytes, src_mac: bytes, payload: bytes, *, flags: int = ACK | PSH) -> bytes:
    """An IPv4 TCP frame whose checksum field holds the pseudo-header sum (NEEDS_CSUM)."""
    tcp_len = 20 + len(payload)
    partial = 0xFFFF - internet_checksum(pseudo_header(tcp_len))  # the sum, not complemented
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1_000_000, 77, 5 << 4, flags, 501, partial, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 0x1234, 0x4000, 64, 6, 0, IP_A, IP_B)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def super_frame(dst: NodeCore, src: NodeCore, size: int = 60000) -> tuple[bytes, bytes]:
    """(virtio header, frame) of a TCP/IPv4 super-frame with ``size`` payload bytes."""
    frame = tcp4_frame(dst.mac, src.mac, payload_of(size))
    return VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV4, 54, MSS, 34, 16), frame


def tcp_checksum_ok(segment: bytes | memoryview) -> bool:
    tcp = segment[34:]
    return internet_checksum(pseudo_header(len(tcp)) + tcp) == 0


# -- meshes ---------------------------------------------------------------------------------


def build_mesh(offloads: dict[str, bool]) -> tuple[SimNet, dict[str, NodeCore]]:
    """Members named by ``offloads`` (node ids 1, 2, ...), each knowing the others, with
    sessions up."""
    ca = Authority()
    network = ca.network(None)
    net = SimNet()
    for node_id, (name, offload) in enumerate(offloads.items(), start=1):
        net.add(name, ca.identity(name, node_id), network, mtu=MTU, tap_offload=offload)
    for name, core in net.cores.items():
        for other in net.cores:
            if other != name:
                core._learn_member(net.record(other), net.now, gossip=False)
    net.run(3.0)
    for core in net.cores.values():
        for peer in core.peers.values():
            assert peer.send_session(net.now) is not None
        core.take_frames()
    return net, net.cores


def build_pair(alpha_offload: bool = True, beta_offload: bool = True) -> tuple[SimNet, NodeCore, NodeCore]:
    net, cores = build_mesh({"alpha": alpha_offload, "beta": beta_offload})
    return net, cores["alpha"], cores["beta"]


def runs_of_super_frame(
    net: SimNet, alpha: NodeCore, beta: NodeCore, size: int = 60000
) -> tuple[bytes, bytes, list[tuple[bytes, tuple[str, int], int]]]:
    """Alpha's TAP reads a super-frame for beta: (header, frame, the runs alpha sends)."""
    vnet, frame = super_frame(beta, alpha, size)
    alpha.tap_frames_received([vnet + frame], net.now)
    assert alpha.take_datagrams() == []
    runs = alpha.take_runs()
    return vnet, frame, runs


# -- the fast path ------------------------------------------------------------------------------


def test_super_frame_crosses_as_one_run_and_is_written_unchanged() -> None:
    net, alpha, beta = build_pair()
    vnet, frame = super_frame(beta, alpha)
    assert len(frame) > 60000
    alpha.tap_frames_received([vnet + frame], net.now)
    assert alpha.take_datagrams() == [], "no DATA datagram, no software segmentation"
    runs = alpha.take_runs()
    assert len(runs) == 1
    run, to, segment = runs[0]
    assert to == net.address_of("beta")
    assert segment == SEGMENT
    datagrams = datagrams_of(run, segment)
    count = len(datagrams)
    assert count == -(-(1 + len(vnet) + len(frame) + 16) // piece_size_for(MTU))
    for index, datagram in enumerate(datagrams):
        assert datagram[0] == TYPE_FRAGMENT
        assert datagram[1] == DEFAULT_HOP_LIMIT
        assert datagram[4:8] == beta.node_id.to_bytes(4, "big")
        assert datagram[2:24] == datagrams[0][2:24], "one message: one counter"
        assert (datagram[24], datagram[25]) == (index, count)
        assert len(datagram) == SEGMENT or index == count - 1
    assert payload_of(60000)[:64] not in run, "sealed"

    beta.runs_received([(run, net.address_of("alpha"), segment)], net.now)
    assert beta.take_frames() == [vnet + frame]
    assert sum(beta.drops.values()) == 0, beta.drops
    assert beta.peers[alpha.node_id].stats.rx_packets >= 1
    # the same run again is a replay
    beta.runs_received([(run, net.address_of("alpha"), segment)], net.now)
    assert beta.take_frames() == []
    assert beta.drops[DropReason.REPLAYED] == 1


def test_largest_super_frame_crosses_in_a_run_and_a_single_datagram() -> None:
    net, alpha, beta = build_pair()
    vnet, frame, runs = runs_of_super_frame(net, alpha, beta, size=65535 - 40)
    assert [-(-len(run) // segment) for run, _, segment in runs] == [45, 1]
    beta.runs_received([(run, net.address_of("alpha"), segment) for run, _, segment in runs], net.now)
    assert beta.take_frames() == [vnet + frame]
    assert sum(beta.drops.values()) == 0, beta.drops


def test_super_frame_from_single_datagrams_in_any_order() -> None:
    rng = random.Random(4)
    for trial in range(4):
        net, alpha, beta = build_pair()
        vnet, frame, runs = runs_of_super_frame(net, alpha, beta, size=60000 - trial * 7000)
        datagrams = [d for run, _, segment in runs for d in datagrams_of(run, segment)]
        assert len(datagrams) > 10
        rng.shuffle(datagrams)
        datagrams.insert(rng.randrange(len(datagrams) + 1), rng.choice(datagrams))
        if trial == 0:
            datagrams.append(datagrams[0])  # a duplicate after the message is whole
        beta.datagrams_received([(d, net.address_of("alpha")) for d in datagrams], net.now)
        assert beta.take_frames() == [vnet + frame]
        # a copy that comes after the message was opened is a replay, like a DATA copy
        assert set(beta.drops) <= {DropReason.REPLAYED} and sum(beta.drops.values()) <= 2, beta.drops


def test_super_frame_from_a_run_cut_into_several_gro_runs() -> None:
    net, alpha, beta = build_pair()
    vnet, frame, [(run, _, segment)] = runs_of_super_frame(net, alpha, beta)
    parts = [run[: 5 * segment], run[5 * segment : 20 * segment], run[20 * segment : 21 * segment]]
    parts += [run[21 * segment :]]
    sender = net.address_of("alpha")
    beta.runs_received([(parts[2], sender, segment), (parts[3], sender, segment)], net.now)
    beta.runs_received([(parts[0], sender, segment)], net.now)
    assert beta.take_frames() == []
    beta.runs_received([(parts[1], sender, segment)], net.now)
    assert beta.take_frames() == [vnet + frame]
    assert sum(beta.drops.values()) == 0, beta.drops


def test_receiver_without_offloads_gets_software_segments() -> None:
    net, alpha, beta = build_pair(alpha_offload=True, beta_offload=False)
    vnet, frame, runs = runs_of_super_frame(net, alpha, beta)
    assert runs
    beta.runs_received([(run, net.address_of("alpha"), segment) for run, _, segment in runs], net.now)
    frames = beta.take_frames()
    assert frames == software_segments(vnet, frame)
    assert len(frames) == -(-60000 // MSS)
    assert all(len(f) <= MTU + 14 for f in frames)
    assert all(f[:14] == frame[:14] for f in frames)
    assert b"".join(f[54:] for f in frames) == frame[54:]
    assert all(tcp_checksum_ok(f) for f in frames)
    assert sum(beta.drops.values()) == 0, beta.drops


def test_receiver_with_offloads_gets_plain_frames_behind_a_plain_header() -> None:
    net, alpha, beta = build_pair(alpha_offload=False, beta_offload=True)
    frame = beta.mac + alpha.mac + b"\x88\xb5" + b"ordinary frame"
    alpha.tap_frames_received([frame], net.now)
    assert alpha.take_runs() == []
    datagrams = alpha.take_datagrams()
    assert [d[0] for d, _ in datagrams] == [TYPE_DATA]
    beta.datagrams_received([(d, net.address_of("alpha")) for d, _ in datagrams], net.now)
    assert beta.take_frames() == [bytes(10) + frame], "ten zero bytes: the plain virtio header"
    # and back: beta's plain read loses its header on the way to alpha's plain TAP
    reply = alpha.mac + beta.mac + b"\x88\xb5" + b"reply"
    beta.tap_frames_received([PLAIN_VNET_HDR + reply], net.now)
    alpha.datagrams_received([(d, net.address_of("beta")) for d, _ in beta.take_datagrams()], net.now)
    assert alpha.take_frames() == [reply]


def test_data_valid_only_read_is_a_plain_frame() -> None:
    # DATA_VALID alone asks for nothing: the frame must cross byte for byte, untouched
    net, alpha, beta = build_pair(alpha_offload=True, beta_offload=False)
    frame = (
        beta.mac[:1] + b"\x01" + beta.mac[2:] + alpha.mac + b"\x88\xb5" + bytes(1400)
    )  # multicast-ish, big
    multicast = bytes((beta.mac[0] | 1,)) + beta.mac[1:] + frame[6:]
    valid_only = VNET_HDR.pack(2, GSO_NONE, 0, 0, 0, 0)
    alpha.tap_frames_received([valid_only + multicast], net.now)
    datagrams = alpha.take_datagrams()
    assert datagrams, alpha.drops
    beta.datagrams_received([(d, net.address_of("alpha")) for d, _ in datagrams], net.now)
    assert beta.take_frames() == [multicast]


def test_checksum_only_frame_crosses_in_one_data_datagram() -> None:
    for beta_offload in (True, False):
        net, alpha, beta = build_pair(alpha_offload=True, beta_offload=beta_offload)
        frame = tcp4_frame(beta.mac, alpha.mac, payload_of(500))
        vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16)
        alpha.tap_frames_received([vnet + frame], net.now)
        assert alpha.take_runs() == []
        datagrams = alpha.take_datagrams()
        assert len(datagrams) == 1
        datagram, to = datagrams[0]
        assert datagram[0] == TYPE_DATA and to == net.address_of("beta")
        beta.datagrams_received([(datagram, net.address_of("alpha"))], net.now)
        frames = beta.take_frames()
        if beta_offload:
            assert frames == [vnet + frame]
        else:
            assert frames == [complete_checksum(frame, 34, 16)]
            assert tcp_checksum_ok(frames[0])
            assert frames[0][:50] == frame[:50] and frames[0][52:] == frame[52:]
        assert sum(beta.drops.values()) == 0, beta.drops


def test_super_frame_to_an_unknown_mac_is_flooded_as_segments() -> None:
    net, alpha, beta = build_pair()
    stranger = bytes.fromhex("525400aabbcc")
    frame = tcp4_frame(stranger, alpha.mac, payload_of(5000))
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV4, 54, MSS, 34, 16)
    alpha.tap_frames_received([vnet + frame], net.now)
    assert alpha.take_runs() == []
    datagrams = alpha.take_datagrams()
    assert len(datagrams) == 4 and all(d[0] == TYPE_DATA for d, _ in datagrams)
    beta.datagrams_received([(d, net.address_of("alpha")) for d, _ in datagrams], net.now)
    assert beta.take_frames() == [PLAIN_VNET_HDR + s for s in software_segments(vnet, frame)]


# -- relays -------------------------------------------------------------------------------------


def test_relay_forwards_a_run_as_one_run() -> None:
    net, cores = build_mesh({"a": True, "b": False, "c": True})
    a, b, c = cores["a"], cores["b"], cores["c"]
    net.cut.add(frozenset(("a", "c")))
    for _ in range(60):
        net.run(0.25)
        paths = {p["name"]: p["path"] for p in a.status(net.now)["peers"]}
        if paths["c"] == "via b":
            break
    assert paths == {"b": "direct", "c": "via b"}
    net.pump()

    vnet, frame = super_frame(c, a, 50000)
    a.tap_frames_received([vnet + frame], net.now)
    [(run, to, segment)] = a.take_runs()
    assert to == net.address_of("b")
    relayed_packets = b.relayed_packets
    b.runs_received([(run, net.address_of("a"), segment)], net.now)
    assert b.take_datagrams() == [], "not taken apart"
    [(out, out_to, out_segment)] = b.take_runs()
    assert out_to == net.address_of("c") and out_segment == segment
    sent, relayed = datagrams_of(run, segment), datagrams_of(out, segment)
    assert len(relayed) == len(sent) > 30
    for before, after in zip(sent, relayed, strict=True):
        assert after[1] == before[1] - 1 == DEFAULT_HOP_LIMIT - 1
        assert after[:1] + after[2:] == before[:1] + before[2:]
    assert b.relayed_packets == relayed_packets + len(sent)
    assert sum(b.drops.values()) == 0, b.drops

    c.runs_received([(out, net.address_of("b"), segment)], net.now)
    assert c.take_frames() == [vnet + frame]
    assert sum(c.drops.values()) == 0, c.drops

    # a run at the end of its hop limit is not relayed, piece by piece either
    exhausted = bytearray(run)
    for at in range(0, len(exhausted), segment):
        exhausted[at + 1] = 1
    b.runs_received([(bytes(exhausted), net.address_of("a"), segment)], net.now)
    assert b.take_runs() == [] and b.take_datagrams() == []
    assert b.drops[DropReason.HOP_LIMIT_EXCEEDED] == len(sent)


# -- untrusted input ------------------------------------------------------------------------------


def test_corrupted_middle_piece_fails_the_tag() -> None:
    net, alpha, beta = build_pair()
    vnet, frame, [(run, _, segment)] = runs_of_super_frame(net, alpha, beta)
    middle = len(run) // segment // 2
    corrupted = bytearray(run)
    corrupted[middle * segment + FRAGMENT_HEADER_LEN + 100] ^= 0x40
    sender = net.address_of("alpha")
    beta.runs_received([(bytes(corrupted), sender, segment)], net.now)
    assert beta.take_frames() == []
    assert beta.drops[DropReason.DECRYPT_FAILED] == 1
    # the same, piece by piece
    beta.datagrams_received([(d, sender) for d in datagrams_of(bytes(corrupted), segment)], net.now)
    assert beta.take_frames() == []
    assert beta.drops[DropReason.DECRYPT_FAILED] == 2
    # the genuine message still opens: a forgery does not burn its counter
    beta.runs_received([(run, sender, segment)], net.now)
    assert beta.take_frames() == [vnet + frame]


def test_fragment_with_count_zero() -> None:
    net, alpha, beta = build_pair()
    _, _, [(run, _, segment)] = runs_of_super_frame(net, alpha, beta)
    bad = bytearray(datagrams_of(run, segment)[3])
    bad[25] = 0
    beta.datagrams_received([(bytes(bad), net.address_of("alpha"))], net.now)
    assert beta.drops[DropReason.BAD_FRAGMENT] == 1
    bad[24], bad[25] = 40, 30  # index past the count
    beta.datagrams_received([(bytes(bad), net.address_of("alpha"))], net.now)
    assert beta.drops[DropReason.BAD_FRAGMENT] == 2
    assert beta.take_frames() == []


def test_offload_frame_with_a_bad_virtio_header() -> None:
    for beta_offload in (True, False):
        net, alpha, beta = build_pair(beta_offload=beta_offload)
        session = alpha.peers[beta.node_id].send_session(net.now)
        assert session is not None
        small = tcp4_frame(beta.mac, alpha.mac, b"x" * 100)
        bad_flags = VNET_HDR.pack(0x04, GSO_NONE, 0, 0, 0, 0)
        inner = bytes([INNER_OFFLOAD_FRAME]) + bad_flags + small
        datagram = session.seal(beta.node_id, alpha.node_id, DEFAULT_HOP_LIMIT, inner)
        beta.datagrams_received([(datagram, net.address_of("alpha"))], net.now)
        assert beta.drops[DropReason.BAD_OFFLOAD] == 1
        # a super-frame asking for UDP fragmentation, which no TAP of ours offers
        vnet, frame = super_frame(beta, alpha, 30000)
        udp_gso = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_UDP, 42, MSS, 34, 6)
        inner = bytes([INNER_OFFLOAD_FRAME]) + udp_gso + frame
        runs = session.seal_runs(beta.node_id, alpha.node_id, DEFAULT_HOP_LIMIT, inner, piece_size_for(MTU))
        beta.runs_received([(run, net.address_of("alpha"), SEGMENT) for run in runs], net.now)
        assert beta.drops[DropReason.BAD_OFFLOAD] == 2
        # a header too short to hold an Ethernet frame behind it
        datagram = session.seal(
            beta.node_id, alpha.node_id, DEFAULT_HOP_LIMIT, bytes([INNER_OFFLOAD_FRAME]) + vnet + b"short"
        )
        beta.datagrams_received([(datagram, net.address_of("alpha"))], net.now)
        assert beta.drops[DropReason.BAD_FRAME] == 1
        assert beta.take_frames() == []
        assert beta.drops[DropReason.DECRYPT_FAILED] == 0, "they did authenticate"


def test_truncated_fragments_are_too_short() -> None:
    net, alpha, beta = build_pair()
    _, _, [(run, _, segment)] = runs_of_super_frame(net, alpha, beta)
    first = datagrams_of(run, segment)[0]
    sender = net.address_of("alpha")
    for length in (26, 25, 24, 10, 0):
        before = beta.drops[DropReason.TOO_SHORT]
        beta.datagrams_received([(first[:length], sender)], net.now)
        assert beta.drops[DropReason.TOO_SHORT] == before + 1, length
    # a run whose last segment is a bare header: taken apart, and that one is too short
    beta.runs_received([(run[: 2 * segment] + first[:26], sender, segment)], net.now)
    assert beta.drops[DropReason.TOO_SHORT] == 6
    assert beta.take_frames() == []


def test_mangled_runs_are_counted_never_raised() -> None:
    net, alpha, beta = build_pair()
    vnet, frame, [(run, _, segment)] = runs_of_super_frame(net, alpha, beta)
    rng = random.Random(1455)
    sender = net.address_of("alpha")
    for _ in range(300):
        mangled = bytearray(run)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(run) // segment) * segment + rng.randrange(FRAGMENT_HEADER_LEN)
            mangled[at] = rng.randrange(256)
        if rng.random() < 0.2:
            mangled = mangled[: rng.randrange(len(mangled))]
        fake_segment = rng.choice([segment, segment, rng.randrange(-2, 3000)])
        beta.runs_received([(bytes(mangled), sender, fake_segment)], net.now)
    frames = beta.take_frames()
    assert all(f == vnet + frame for f in frames)
    assert sum(beta.drops.values()) > 250
    # still working afterwards
    later_vnet, later_frame, runs = runs_of_super_frame(net, alpha, beta, 40000)
    beta.runs_received([(r, sender, s) for r, _, s in runs], net.now)
    assert beta.take_frames() == [later_vnet + later_frame]


def test_late_duplicate_pieces_do_not_count_as_incomplete_messages() -> None:
    # A 64 KiB super-frame leaves as a run of 45 pieces and one single datagram; when the
    # underlay duplicates that last datagram, the copy arrives after the message is whole.
    net, alpha, beta = build_pair()
    sender = net.address_of("alpha")
    delivered = 0
    for _ in range(12):
        vnet, frame, runs = runs_of_super_frame(net, alpha, beta, size=65535 - 40)
        (run, _, segment), (last, _, _) = runs
        beta.runs_received(
            [(run, sender, segment), (last, sender, segment), (last, sender, segment)], net.now
        )
        delivered += beta.take_frames() == [vnet + frame]
    assert delivered == 12
    assert beta.drops[DropReason.FRAGMENTS_INCOMPLETE] == 0, "no message was given up"
