"""Software checksum and TCP segmentation offload, checked against frames built here
the way Linux hands them to a TAP, and against slow word-by-word checksums."""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass

import pytest

from checksums import pseudo_header, reference_checksum, reference_ones_sum
from naas.core import ethernet
from naas.core.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    MAX_SUPER_FRAME,
    PLAIN_VNET_HDR,
    VNET_DATA_VALID,
    VNET_HDR,
    VNET_HDR_LEN,
    VNET_NEEDS_CSUM,
    check_vnet_untrusted,
    complete_checksum,
    smaller_super_frames,
    software_segments,
)
from naas.core.wire import BadPacket, DropReason

MAC_A = bytes.fromhex("024e00000001")
MAC_B = bytes.fromhex("024e00000002")
IP4_A = bytes([172, 32, 0, 1])
IP4_B = bytes([172, 32, 0, 2])
IP6_A = bytes.fromhex("fd4e000000000000000000000000000a")
IP6_B = bytes.fromhex("fd4e000000000000000000000000000b")
IP6_HOME = bytes.fromhex("fd4e00000000000000000000000000cc")

FIN, PSH, ACK, ECE, CWR = 0x01, 0x08, 0x10, 0x40, 0x80
TIMESTAMP_OPTION = b"\x01\x01\x08\x0a" + bytes.fromhex("0001e2400000d431")


# -- frames as Linux leaves them -------------------------------------------------------------


@dataclass
class Super:
    vnet: bytes
    frame: bytes
    l3: int
    l4: int
    payload: bytes
    ipv6: bool
    src: bytes
    dst: bytes  # the final destination, for the pseudo-header


def tcp_header(seq: int, flags: int, options: bytes, partial: int) -> bytes:
    data_offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 443, seq, 77, data_offset << 4, flags, 501, partial, 0) + options


def ethernet_header(ethertype: int, vlan: int | None) -> bytes:
    head = MAC_B + MAC_A
    if vlan is not None:
        head += struct.pack("!HH", ethernet.ETHERTYPE_VLAN, vlan)
    return head + struct.pack("!H", ethertype)


def ipv4_super(
    payload: bytes,
    mss: int,
    *,
    flags: int = ACK | PSH,
    seq: int = 1_000_000,
    ip_id: int = 0x1234,
    options: bytes = TIMESTAMP_OPTION,
    ip_options: bytes = b"",
    vlan: int | None = None,
    gso_type: int = GSO_TCPV4,
    partial_dst: bytes = IP4_B,
) -> Super:
    """An IPv4 TCP super-frame with NEEDS_CSUM: the TCP checksum field holds the
    pseudo-header sum (with the whole super-frame's TCP length), folded, not complemented."""
    tcp_len = 20 + len(options) + len(payload)
    partial = reference_ones_sum(pseudo_header(IP4_A, partial_dst, tcp_len))
    tcp = tcp_header(seq, flags, options, partial) + payload
    ihl = 5 + len(ip_options) // 4
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(tcp), ip_id, 0x4000, 64, 6, 0, IP4_A, IP4_B
    )
    ip += ip_options
    ip = ip[:10] + struct.pack("!H", reference_checksum(ip)) + ip[12:]
    eth = ethernet_header(ethernet.ETHERTYPE_IPV4, vlan)
    frame = eth + ip + tcp
    l4 = len(eth) + len(ip)
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, gso_type, l4 + 20 + len(options), mss, l4, 16)
    return Super(vnet, frame, len(eth), l4, payload, False, IP4_A, partial_dst)


def ipv6_super(
    payload: bytes,
    mss: int,
    *,
    flags: int = ACK | PSH,
    seq: int = 7,
    options: bytes = TIMESTAMP_OPTION,
    extensions: list[tuple[int, bytes]] | None = None,
    final_dst: bytes = IP6_B,
    vlan: int | None = None,
) -> Super:
    """An IPv6 TCP super-frame; ``extensions`` are (type, body) headers before TCP,
    each body padded to 6 + 8n bytes here."""
    tcp_len = 20 + len(options) + len(payload)
    partial = reference_ones_sum(pseudo_header(IP6_A, final_dst, tcp_len))
    tcp = tcp_header(seq, flags, options, partial) + payload
    chain = [*(extensions or []), (6, b"")]
    ext = b""
    for (_, body), (following, _) in itertools.pairwise(chain):
        assert (len(body) - 6) % 8 == 0
        ext += bytes([following, (len(body) + 2) // 8 - 1]) + body
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(tcp), chain[0][0], 64, IP6_A, IP6_B)
    eth = ethernet_header(ethernet.ETHERTYPE_IPV6, vlan)
    frame = eth + ip + ext + tcp
    l4 = len(eth) + len(ip) + len(ext)
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV6, l4 + 20 + len(options), mss, l4, 16)
    return Super(vnet, frame, len(eth), l4, payload, True, IP6_A, final_dst)


# -- what a segment must look like -----------------------------------------------------------


def check_segments(sup: Super, segments: list[bytes], mss: int) -> None:
    """Every property of a correct segmentation, each checked independently."""
    original = sup.frame
    l3, l4 = sup.l3, sup.l4
    tcp_header_len = (original[l4 + 12] >> 4) * 4
    original_seq = struct.unpack_from("!I", original, l4 + 4)[0]
    original_flags = original[l4 + 13]
    original_id = struct.unpack_from("!H", original, l3 + 4)[0]
    expected_count = max(1, -(-len(sup.payload) // mss))
    assert len(segments) == expected_count
    payloads = []
    for index, segment in enumerate(segments):
        assert isinstance(segment, bytes)
        last = index == len(segments) - 1
        # Everything before the changed fields is copied.
        assert segment[:l3] == original[:l3]
        payload = segment[l4 + tcp_header_len :]
        payloads.append(payload)
        if not last:
            assert len(payload) == mss
        else:
            assert 0 < len(payload) <= mss or not sup.payload
        if sup.ipv6:
            assert struct.unpack_from("!H", segment, l3 + 4)[0] == len(segment) - l3 - 40
            assert segment[l3 + 6 : l4] == original[l3 + 6 : l4]  # next header, addresses, extensions
        else:
            ihl = (segment[l3] & 0x0F) * 4
            assert struct.unpack_from("!H", segment, l3 + 2)[0] == len(segment) - l3
            assert reference_checksum(segment[l3 : l3 + ihl]) == 0
            assert struct.unpack_from("!H", segment, l3 + 4)[0] == (original_id + index) & 0xFFFF
            assert segment[l3 + 12 : l4] == original[l3 + 12 : l4]  # addresses, options
        # TCP: ports, ack, window and options copied; sequence numbers contiguous.
        tcp = segment[l4:]
        assert tcp[:4] == original[l4 : l4 + 4]
        assert tcp[8:13] == original[l4 + 8 : l4 + 13]
        assert tcp[14:16] == original[l4 + 14 : l4 + 16]
        assert tcp[18:tcp_header_len] == original[l4 + 18 : l4 + tcp_header_len]
        seq = struct.unpack_from("!I", tcp, 4)[0]
        assert seq == (original_seq + index * mss) % 2**32
        flags = tcp[13]
        assert flags & (FIN | PSH) == (original_flags & (FIN | PSH) if last else 0)
        assert flags & CWR == (original_flags & CWR if index == 0 else 0)
        assert flags & ~(FIN | PSH | CWR) == original_flags & ~(FIN | PSH | CWR)
        assert reference_checksum(pseudo_header(sup.src, sup.dst, len(tcp)) + tcp) == 0
    assert b"".join(payloads) == sup.payload


def reference_segments(sup: Super, mss: int) -> list[bytes]:
    """The segmentation rebuilt field by field with the slow checksum, for comparison."""
    frame, l3, l4 = sup.frame, sup.l3, sup.l4
    payload_at = l4 + (frame[l4 + 12] >> 4) * 4
    chunks = [sup.payload[i : i + mss] for i in range(0, len(sup.payload), mss)] or [b""]
    seq0 = struct.unpack_from("!I", frame, l4 + 4)[0]
    flags0 = frame[l4 + 13]
    id0 = struct.unpack_from("!H", frame, l3 + 4)[0]
    out = []
    for index, chunk in enumerate(chunks):
        head = bytearray(frame[:payload_at])
        flags = flags0
        if index > 0:
            flags &= ~CWR
        if index < len(chunks) - 1:
            flags &= ~(FIN | PSH)
        struct.pack_into("!I", head, l4 + 4, (seq0 + index * mss) % 2**32)
        head[l4 + 13] = flags
        struct.pack_into("!H", head, l4 + 16, 0)
        if sup.ipv6:
            struct.pack_into("!H", head, l3 + 4, len(head) + len(chunk) - l3 - 40)
        else:
            struct.pack_into("!HH", head, l3 + 2, len(head) + len(chunk) - l3, (id0 + index) % 2**16)
            struct.pack_into("!H", head, l3 + 10, 0)
            struct.pack_into("!H", head, l3 + 10, reference_checksum(bytes(head[l3:l4])))
        tcp = bytes(head[l4:]) + chunk
        checksum = reference_checksum(pseudo_header(sup.src, sup.dst, len(tcp)) + tcp)
        struct.pack_into("!H", head, l4 + 16, checksum)
        out.append(bytes(head) + chunk)
    return out


def payload_of(size: int, seed: int = 9293) -> bytes:
    return random.Random(seed).randbytes(size)


def udp_frame_with_partial(payload: bytes) -> bytes:
    length = 8 + len(payload)
    partial = reference_ones_sum(pseudo_header(IP4_A, IP4_B, length, protocol=17))
    udp = struct.pack("!HHHH", 5353, 5353, length, partial) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, IP4_A, IP4_B)
    ip = ip[:10] + struct.pack("!H", reference_checksum(ip)) + ip[12:]
    return ethernet_header(ethernet.ETHERTYPE_IPV4, None) + ip + udp


def udp_checksum_ok(frame: bytes) -> bool:
    udp = frame[34:]
    return reference_checksum(pseudo_header(IP4_A, IP4_B, len(udp), protocol=17) + udp) == 0


@pytest.mark.parametrize("size", [0, 1, 17, 1372])
def test_udp_checksum_completed(size: int) -> None:
    frame = udp_frame_with_partial(payload_of(size, seed=size))
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6)
    [out] = software_segments(vnet, frame)
    assert udp_checksum_ok(out)
    assert out[:40] == frame[:40] and out[42:] == frame[42:]
    assert complete_checksum(bytearray(frame), 34, 6) == out


def test_udp_checksum_of_zero_is_sent_as_ffff() -> None:
    # Choose the last payload word so that the checksum computes to 0: RFC 768 sends 0xFFFF.
    frame = udp_frame_with_partial(b"abcdef" + bytes(12))
    rest = reference_ones_sum(frame[34:])  # partial in the field, the last word still 0
    frame = frame[:-2] + struct.pack("!H", 0xFFFF - rest)
    out = complete_checksum(frame, 34, 6)
    assert out[40:42] == b"\xff\xff"
    assert udp_checksum_ok(out)
    # With the field at a TCP offset (16) the same sum stays 0: TCP has no "no checksum".
    assert complete_checksum(frame, 34, 16)[50:52] == b"\x00\x00"


def test_tcp_checksum_completed_without_segmentation() -> None:
    sup = ipv4_super(payload_of(999), 1448, flags=ACK | PSH | FIN)
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_NONE, 0, 0, sup.l4, 16)
    [out] = software_segments(vnet, sup.frame)
    tcp = out[sup.l4 :]
    assert reference_checksum(pseudo_header(IP4_A, IP4_B, len(tcp)) + tcp) == 0
    assert out[: sup.l4 + 16] == sup.frame[: sup.l4 + 16]
    assert out[sup.l4 + 18 :] == sup.frame[sup.l4 + 18 :]


def test_complete_checksum_rejects_a_field_beyond_the_frame() -> None:
    with pytest.raises(BadPacket) as caught:
        complete_checksum(bytes(40), 34, 6)
    assert caught.value.reason is DropReason.BAD_OFFLOAD
    with pytest.raises(BadPacket):
        complete_checksum(bytes(40), -2, 6)


def test_frames_without_work_come_back_as_they_are() -> None:
    frame = udp_frame_with_partial(b"hello")
    assert PLAIN_VNET_HDR == bytes(10) == VNET_HDR.pack(0, 0, 0, 0, 0, 0)
    assert len(PLAIN_VNET_HDR) == VNET_HDR_LEN == VNET_HDR.size
    assert software_segments(PLAIN_VNET_HDR, frame) == [frame]
    assert software_segments(VNET_HDR.pack(VNET_DATA_VALID, 0, 0, 0, 0, 0), frame) == [frame]
    assert software_segments(PLAIN_VNET_HDR, b"") == [b""]


# -- segmentation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_len", "mss", "flags"),
    [
        (65535 - 20 - 32, 1448, ACK | PSH),  # the largest IPv4 super-frame
        (64000, 1348, ACK | PSH | FIN | CWR | ECE),
        (10 * 1448, 1448, ACK | FIN),  # an exact multiple
        (5000, 1347, ACK | PSH),  # odd MSS: odd payload lengths at even TCP offsets
        (4001, 1000, ACK | CWR),  # odd last segment
        (1448, 1448, ACK | PSH | FIN | CWR),  # fits: one segment keeps every flag
        (100, 1448, ACK | PSH),
        (0, 536, ACK | FIN),  # no payload at all
    ],
)
def test_ipv4_super_frame(payload_len: int, mss: int, flags: int) -> None:
    sup = ipv4_super(payload_of(payload_len), mss, flags=flags, gso_type=GSO_TCPV4 | GSO_ECN)
    segments = software_segments(sup.vnet, sup.frame)
    check_segments(sup, segments, mss)
    assert segments == reference_segments(sup, mss)


@pytest.mark.parametrize(
    "extensions",
    [
        None,
        [(0, b"\x01\x04\x00\x00\x00\x00")],  # hop-by-hop with a PadN option
        [(0, bytes(6)), (60, b"\x01\x0c" + bytes(12))],  # ... and destination options of 16 bytes
        [(43, b"\x02\x00" + bytes(4) + IP6_HOME)],  # routing type 2, no segments left
    ],
)
@pytest.mark.parametrize(("payload_len", "mss"), [(65000, 1428), (3000, 1000), (999, 1220)])
def test_ipv6_super_frame(extensions: list[tuple[int, bytes]] | None, payload_len: int, mss: int) -> None:
    sup = ipv6_super(payload_of(payload_len), mss, flags=ACK | PSH | FIN | CWR, extensions=extensions)
    segments = software_segments(sup.vnet, sup.frame)
    check_segments(sup, segments, mss)
    assert segments == reference_segments(sup, mss)


def test_ipv6_routing_header_checksum_uses_the_final_destination() -> None:
    # Segments left 1: the header's destination is a waypoint, the final one is in the
    # routing header (RFC 8200 section 8.1). The sender's partial sum knows it.
    routing = (43, b"\x02\x01" + bytes(4) + IP6_HOME)
    sup = ipv6_super(payload_of(5000), 1400, extensions=[routing], final_dst=IP6_HOME)
    segments = software_segments(sup.vnet, sup.frame)
    check_segments(sup, segments, 1400)


def test_ipv4_with_options_checksum_follows_the_senders_partial() -> None:
    # Loose source route (RFC 791): the pseudo-header holds the final destination.
    final = bytes([172, 32, 0, 99])
    lsrr = b"\x83\x07\x04" + final + b"\x00"  # type, length, pointer, one address, EOL
    sup = ipv4_super(payload_of(6000), 1448, ip_options=lsrr, partial_dst=final)
    segments = software_segments(sup.vnet, sup.frame)
    check_segments(sup, segments, 1448)


def test_vlan_tagged_super_frames() -> None:
    for sup in (
        ipv4_super(payload_of(9000), 1448, vlan=42),
        ipv6_super(payload_of(9000), 1448, vlan=42),
    ):
        assert sup.l3 == 18
        segments = software_segments(sup.vnet, sup.frame)
        check_segments(sup, segments, 1448)
        assert segments == reference_segments(sup, 1448)


# -- smaller super-frames (a lossy link) -------------------------------------------------------


def lsrr_super() -> Super:
    final = bytes([172, 32, 0, 99])  # a loose source route: the partial sum knows the destination
    return ipv4_super(payload_of(9000), 1448, ip_options=b"\x83\x07\x04" + final + b"\x00", partial_dst=final)


SMALLER_CASES = {
    "ipv4": lambda: ipv4_super(
        payload_of(63000), 1377, flags=ACK | PSH | FIN | CWR, gso_type=GSO_TCPV4 | GSO_ECN
    ),
    "ipv4 odd": lambda: ipv4_super(payload_of(5001), 1347, seq=2**32 - 3000, ip_id=0xFFFE),
    "ipv4 options": lsrr_super,
    "ipv6 waypoint": lambda: ipv6_super(
        payload_of(8000), 1400, extensions=[(43, b"\x02\x01" + bytes(4) + IP6_HOME)], final_dst=IP6_HOME
    ),
    "vlan": lambda: ipv6_super(payload_of(9000), 1448, vlan=42),
}


@pytest.mark.parametrize("case", SMALLER_CASES)
@pytest.mark.parametrize("segments", [1, 2, 5, 45])
def test_smaller_super_frames_cut_into_the_segments_of_the_whole(case: str, segments: int) -> None:
    sup = SMALLER_CASES[case]()
    whole = software_segments(sup.vnet, sup.frame)
    pieces = smaller_super_frames(sup.vnet, sup.frame, segments)
    assert len(pieces) == -(-len(whole) // segments)
    cut_again = []
    for piece in pieces:
        vnet, frame = piece[:VNET_HDR_LEN], piece[VNET_HDR_LEN:]
        flags, _, _, gso_size, csum_start, csum_offset = check_vnet_untrusted(vnet, len(frame))
        assert (flags, gso_size, csum_start, csum_offset) == (
            VNET_NEEDS_CSUM,
            VNET_HDR.unpack(sup.vnet)[3],
            sup.l4,
            16,
        )
        # The checksum is left as Linux leaves it: the pseudo-header sum for this piece.
        tcp_len = len(frame) - sup.l4
        partial = struct.unpack_from("!H", frame, sup.l4 + 16)[0]
        assert partial == reference_ones_sum(pseudo_header(sup.src, sup.dst, tcp_len))
        cut_again += software_segments(vnet, frame)
    assert cut_again == whole
    if len(pieces) == 1:
        assert pieces == [sup.vnet + sup.frame]


def test_smaller_super_frames_leave_other_frames_alone() -> None:
    frame = udp_frame_with_partial(b"hello")
    vnet = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 6)
    assert smaller_super_frames(vnet, frame, 2) == [vnet + frame]
    sup = ipv4_super(payload_of(1000), 1448)
    assert smaller_super_frames(sup.vnet, sup.frame, 2) == [sup.vnet + sup.frame]
    with pytest.raises(ValueError, match="0 segments"):
        smaller_super_frames(sup.vnet, sup.frame, 0)


def test_sequence_number_and_ip_id_wrap() -> None:
    sup = ipv4_super(payload_of(20000), 1448, seq=2**32 - 3000, ip_id=0xFFFE)
    segments = software_segments(sup.vnet, sup.frame)
    check_segments(sup, segments, 1448)
    ids = [struct.unpack_from("!H", s, 18)[0] for s in segments]
    assert ids[:4] == [0xFFFE, 0xFFFF, 0, 1]
    seqs = [struct.unpack_from("!I", s, 38)[0] for s in segments]
    assert seqs[:3] == [2**32 - 3000, 2**32 - 1552, 2**32 - 104] and seqs[3] == 1344


def test_tcp_options_and_no_options() -> None:
    for options in (b"", TIMESTAMP_OPTION, b"\x01" * 40):
        sup = ipv4_super(payload_of(4000), 1000, options=options)
        check_segments(sup, software_segments(sup.vnet, sup.frame), 1000)


# -- untrusted headers and frames ------------------------------------------------------------

GOOD = (VNET_NEEDS_CSUM, GSO_TCPV4, 66, 1448, 34, 16)


@pytest.mark.parametrize(
    ("fields", "frame_len"),
    [
        ((4, 0, 0, 0, 0, 0), 100),  # unknown flag bit
        ((0x80 | VNET_NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16), 100),
        ((0, GSO_ECN, 0, 0, 0, 0), 100),  # ECN without TCP
        ((VNET_NEEDS_CSUM, GSO_UDP, 42, 1400, 34, 6), 3000),
        ((VNET_NEEDS_CSUM, GSO_UDP_L4, 42, 1400, 34, 6), 3000),
        ((VNET_NEEDS_CSUM, GSO_UDP | GSO_ECN, 42, 1400, 34, 6), 3000),
        ((VNET_NEEDS_CSUM, 2, 66, 1448, 34, 16), 3000),  # no such type
        ((VNET_NEEDS_CSUM, 0, 0, 0, 34, 10), 100),  # offset neither UDP's nor TCP's
        ((VNET_NEEDS_CSUM, 0, 0, 0, 13, 16), 100),  # inside the Ethernet header
        ((VNET_NEEDS_CSUM, 0, 0, 0, 83, 16), 100),  # field ends past the frame
        ((VNET_NEEDS_CSUM, 0, 0, 0, 0xFFFF, 0xFFFF), 100),
        ((0, GSO_TCPV4, 66, 1448, 34, 16), 3000),  # segmentation without NEEDS_CSUM
        ((VNET_DATA_VALID, GSO_TCPV6, 86, 1448, 54, 16), 3000),
        ((VNET_NEEDS_CSUM, GSO_TCPV4, 42, 1448, 34, 6), 3000),  # TCP segmentation, UDP checksum
        ((VNET_NEEDS_CSUM, GSO_TCPV4, 66, 0, 34, 16), 3000),
        ((VNET_NEEDS_CSUM, GSO_TCPV4, 66, 7, 34, 16), 3000),
        ((VNET_NEEDS_CSUM, GSO_TCPV4, 3001, 1448, 34, 16), 3000),  # header length past the frame
        (GOOD, MAX_SUPER_FRAME + 1),
        ((0, 0, 0, 0, 0, 0), MAX_SUPER_FRAME + 1),
    ],
)
def test_check_vnet_rejects(fields: tuple[int, ...], frame_len: int) -> None:
    with pytest.raises(BadPacket) as caught:
        check_vnet_untrusted(VNET_HDR.pack(*fields), frame_len)
    assert caught.value.reason is DropReason.BAD_OFFLOAD


def test_check_vnet_accepts_what_a_tap_produces() -> None:
    assert check_vnet_untrusted(VNET_HDR.pack(*GOOD), 3000) == GOOD
    ecn = (VNET_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 86, 1428, 54, 16)
    assert check_vnet_untrusted(VNET_HDR.pack(*ecn), MAX_SUPER_FRAME) == ecn
    assert check_vnet_untrusted(PLAIN_VNET_HDR, 60) == (0, 0, 0, 0, 0, 0)
    udp = (VNET_NEEDS_CSUM | VNET_DATA_VALID, 0, 0, 0, 34, 6)
    assert check_vnet_untrusted(VNET_HDR.pack(*udp), 42) == udp


@pytest.mark.parametrize("vnet", [b"", bytes(9), bytes(11)])
def test_check_vnet_rejects_wrong_sizes(vnet: bytes) -> None:
    with pytest.raises(BadPacket):
        check_vnet_untrusted(vnet, 100)


def bad_frames() -> list[tuple[str, bytes, bytes]]:
    v4 = ipv4_super(payload_of(3000), 1000)
    v6 = ipv6_super(payload_of(3000), 1000)

    def patched(frame: bytes, at: int, value: bytes) -> bytes:
        return frame[:at] + value + frame[at + len(value) :]

    tcpv6_header = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV6, 0, 1000, 34, 16)
    tcpv4_header = VNET_HDR.pack(VNET_NEEDS_CSUM, GSO_TCPV4, 0, 1000, 54, 16)
    too_many = [(60, bytes(6))] * 9
    many = ipv6_super(payload_of(100), 50, extensions=too_many)
    return [
        ("IPv4 frame, TCPv6 header", tcpv6_header, v4.frame),
        ("IPv6 frame, TCPv4 header", tcpv4_header, v6.frame),
        ("not TCP", v4.vnet, patched(v4.frame, 23, b"\x11")),
        ("IPv4 version", v4.vnet, patched(v4.frame, 14, b"\x65")),
        ("IHL too small", v4.vnet, patched(v4.frame, 14, b"\x44")),
        ("IHL past checksum start", v4.vnet, patched(v4.frame, 14, b"\x46")),
        ("IHL 4 at checksum start", patched(v4.vnet, 6, b"\x1e\x00"), patched(v4.frame, 14, b"\x44")),
        ("fragment offset", v4.vnet, patched(v4.frame, 20, b"\x00\x10")),
        ("more fragments", v4.vnet, patched(v4.frame, 20, b"\x20\x00")),
        ("data offset 4", v4.vnet, patched(v4.frame, 46, b"\x40")),
        ("TCP header past the frame", no_hint(v4.vnet), v4.frame[:53]),
        ("TCP options past the frame", no_hint(v4.vnet), patched(v4.frame[:80], 46, b"\xf0")),
        ("IPv6 version", v6.vnet, patched(v6.frame, 14, b"\x40")),
        ("IPv6 next header UDP", v6.vnet, patched(v6.frame, 20, b"\x11")),
        ("IPv6 fragment header", *_with_fragment_header()),
        ("too many IPv6 extensions", many.vnet, many.frame),
        ("checksum start inside IPv6 header", VNET_HDR.pack(1, GSO_TCPV6, 0, 1000, 34, 16), v6.frame),
        ("not IP", v4.vnet, patched(v4.frame, 12, b"\x08\x06")),
        ("tag hides IPv4", v4.vnet, patched(v4.frame, 12, b"\x81\x00")),
        ("segment longer than IPv4 allows", *_oversized_segment()),
    ]


def no_hint(vnet: bytes) -> bytes:
    """The same header with hdr_len 0, so that the frame itself must be checked."""
    return vnet[:2] + b"\x00\x00" + vnet[4:]


def _with_fragment_header() -> tuple[bytes, bytes]:
    sup = ipv6_super(payload_of(3000), 1000, extensions=[(44, bytes(6))])
    return sup.vnet, sup.frame


def _oversized_segment() -> tuple[bytes, bytes]:
    # With 40 bytes of IP options and 60 of TCP header, a tagged frame within
    # MAX_SUPER_FRAME can hold one "segment" longer than the 16-bit IPv4 total length.
    sup = ipv4_super(
        payload_of(65400), 0xFFFF, ip_options=b"\x01" * 39 + b"\x00", options=b"\x01" * 40, vlan=1
    )
    frame = sup.frame + bytes(50)
    assert len(frame) <= MAX_SUPER_FRAME and len(frame) - sup.l3 > 0xFFFF
    return sup.vnet, frame


@pytest.mark.parametrize(("vnet", "frame"), [pytest.param(v, f, id=name) for name, v, f in bad_frames()])
def test_software_segments_rejects_frames_that_do_not_match(vnet: bytes, frame: bytes) -> None:
    with pytest.raises(BadPacket) as caught:
        software_segments(vnet, frame)
    assert caught.value.reason is DropReason.BAD_OFFLOAD


def test_fuzzed_inputs_raise_only_bad_packet() -> None:
    rng = random.Random(1624)
    seeds = [
        ipv4_super(payload_of(3000), 1000),
        ipv4_super(payload_of(200), 64, vlan=3, ip_options=b"\x01\x01\x01\x00"),
        ipv6_super(
            payload_of(3000), 1000, extensions=[(0, bytes(6)), (43, b"\x02\x01" + bytes(4) + IP6_HOME)]
        ),
        ipv6_super(payload_of(10), 8),
    ]
    udp = udp_frame_with_partial(b"x" * 33)
    pairs = [(s.vnet, s.frame) for s in seeds] + [(VNET_HDR.pack(1, 0, 0, 0, 34, 6), udp)]
    outcomes = {"ok": 0, "bad": 0}
    for _ in range(4000):
        vnet, frame = rng.choice(pairs)
        vnet_bytes, frame_bytes = bytearray(vnet), bytearray(frame[:120])
        for _ in range(rng.randrange(1, 4)):
            if rng.random() < 0.3:
                vnet_bytes[rng.randrange(len(vnet_bytes))] = rng.randrange(256)
            else:
                frame_bytes[rng.randrange(len(frame_bytes))] = rng.randrange(256)
        mutated = bytes(frame_bytes) + frame[120:]
        if rng.random() < 0.3:
            mutated = mutated[: rng.randrange(len(mutated) + 1)]
        if rng.random() < 0.05:
            vnet_bytes = bytearray(rng.randbytes(rng.choice([10, 10, 9, 0])))
        try:
            segments = software_segments(bytes(vnet_bytes), mutated)
        except BadPacket as error:
            assert error.reason is DropReason.BAD_OFFLOAD
            outcomes["bad"] += 1
        else:
            assert segments and all(isinstance(s, bytes) for s in segments)
            outcomes["ok"] += 1
    assert outcomes["ok"] > 100 and outcomes["bad"] > 100
