"""Ethernet helpers and TCP MSS clamping, checked against a checksum computed here."""

from __future__ import annotations

import random
import struct

import pytest

from checksums import pseudo_header, reference_checksum
from naas.core import ethernet
from naas.core.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    build_frame,
    clamp_tcp_mss,
    dst_mac,
    ethertype,
    header_length,
    internet_checksum,
    is_multicast,
    src_mac,
)

MAC_A = bytes.fromhex("024e00000001")
MAC_B = bytes.fromhex("024e00000002")
IP_A = bytes([172, 32, 0, 1])
IP_B = bytes([172, 32, 0, 2])


def tcp_checksum_ok(frame: bytes) -> bool:
    l3 = header_length(frame)
    ihl = (frame[l3] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, l3 + 2)[0]
    segment = frame[l3 + ihl : l3 + total]
    pseudo = pseudo_header(frame[l3 + 12 : l3 + 16], frame[l3 + 16 : l3 + 20], len(segment))
    return reference_checksum(pseudo + segment) == 0


def tcp_frame(
    options: bytes,
    flags: int = 0x02,
    vlan: int | None = None,
    fragment: int = 0,
    payload: bytes = b"",
) -> bytes:
    """Ethernet + IPv4 + TCP with a correct TCP checksum (and IP header checksum)."""
    assert len(options) % 4 == 0
    data_offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1000, 0, data_offset << 4, flags, 64240, 0, 0)
    tcp += options + payload
    pseudo = pseudo_header(IP_A, IP_B, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", reference_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, fragment, 64, 6, 0, IP_A, IP_B)
    ip = ip[:10] + struct.pack("!H", reference_checksum(ip)) + ip[12:]
    head = MAC_B + MAC_A
    if vlan is not None:
        head += struct.pack("!HH", ETHERTYPE_VLAN, vlan)
    return head + struct.pack("!H", ETHERTYPE_IPV4) + ip + tcp


def mss_of(frame: bytes) -> int | None:
    l4 = header_length(frame) + 20
    end = l4 + (frame[l4 + 12] >> 4) * 4
    at = l4 + 20
    while at < end:
        if frame[at] == 0:
            return None
        if frame[at] == 1:
            at += 1
            continue
        if frame[at] == 2:
            return int(struct.unpack_from("!H", frame, at + 2)[0])
        at += frame[at + 1]
    return None


MSS_1460 = b"\x02\x04\x05\xb4"
LINUX_SYN_OPTIONS = MSS_1460 + b"\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"


# -- frame accessors -------------------------------------------------------------------------


def test_macs_and_ethertype() -> None:
    frame = build_frame(MAC_B, MAC_A, ETHERTYPE_ARP, b"payload")
    assert frame == MAC_B + MAC_A + b"\x08\x06payload"
    assert dst_mac(frame) == MAC_B
    assert src_mac(frame) == MAC_A
    assert ethertype(frame) == ETHERTYPE_ARP
    assert header_length(frame) == 14


def test_ethertype_looks_through_one_vlan_tag() -> None:
    frame = MAC_B + MAC_A + b"\x81\x00\x00\x05\x86\xdd" + b"x" * 40
    assert ethertype(frame) == ETHERTYPE_IPV6
    assert header_length(frame) == 18
    assert ethertype(MAC_B + MAC_A + b"\x81\x00\x00") == ETHERTYPE_VLAN  # tag cut short
    assert ethertype(MAC_B + MAC_A[:3]) == 0  # no EtherType at all


def test_is_multicast() -> None:
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(bytes.fromhex("01005e000001"))  # IPv4 multicast
    assert is_multicast(bytes.fromhex("333300000001"))  # IPv6 multicast
    assert not is_multicast(MAC_A)
    assert not is_multicast(bytes.fromhex("525400123456"))


def test_build_frame_rejects_bad_macs() -> None:
    with pytest.raises(ValueError):
        build_frame(MAC_A[:5], MAC_B, ETHERTYPE_IPV4, b"")


# -- checksum --------------------------------------------------------------------------------


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_internet_checksum_matches_reference() -> None:
    rng = random.Random(1071)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 80))
        assert internet_checksum(data) == reference_checksum(data), data.hex()
    assert internet_checksum(b"\xff\xff") == reference_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"") == 0xFFFF


def test_internet_checksum_takes_bytes_bytearray_and_views() -> None:
    rng = random.Random(1071)
    for _ in range(400):
        data = rng.randbytes(rng.choice([rng.randrange(0, 64), rng.randrange(0, 3000)]))
        expected = reference_checksum(data)
        assert internet_checksum(data) == expected, data.hex()
        assert internet_checksum(bytearray(data)) == expected
        assert internet_checksum(memoryview(data)) == expected


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 5, 1399, 1400, 65535])
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80, 0x01])
def test_internet_checksum_edge_patterns(length: int, fill: int) -> None:
    data = bytes([fill]) * length
    assert internet_checksum(data) == reference_checksum(data)


def test_internet_checksum_where_the_sum_is_a_multiple_of_0xffff() -> None:
    # Non-zero data summing to 0xFFFF ("negative zero") has checksum 0, all-zero data 0xFFFF.
    for data in (b"\xff\xff", b"\x12\x34\xed\xcb", b"\xff\xff" * 7, b"\xff"):
        assert internet_checksum(data) == reference_checksum(data)
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x00\x00\x00") == 0xFFFF
    assert internet_checksum(b"") == 0xFFFF


# -- MSS clamping ----------------------------------------------------------------------------


def test_clamp_rewrites_mss_and_keeps_checksum_valid() -> None:
    syn = tcp_frame(LINUX_SYN_OPTIONS)
    assert tcp_checksum_ok(syn) and mss_of(syn) == 1460
    clamped = clamp_tcp_mss(syn, 1360)
    assert mss_of(clamped) == 1360
    assert tcp_checksum_ok(clamped)
    differing = [i for i in range(len(syn)) if syn[i] != clamped[i]]
    l4 = 14 + 20
    assert set(differing) <= {l4 + 16, l4 + 17, l4 + 22, l4 + 23}  # checksum and MSS only
    assert len(clamped) == len(syn)


def test_clamp_syn_ack_and_vlan_tagged() -> None:
    syn_ack = tcp_frame(MSS_1460, flags=0x12, vlan=42)
    clamped = clamp_tcp_mss(syn_ack, 1360)
    assert mss_of(clamped) == 1360 and tcp_checksum_ok(clamped)


def test_clamp_mss_at_odd_offset() -> None:
    # One NOP before the MSS puts its value at an odd offset from the TCP header.
    syn = tcp_frame(b"\x01" + MSS_1460 + b"\x01\x01\x01")
    clamped = clamp_tcp_mss(syn, 1200)
    assert mss_of(clamped) == 1200 and tcp_checksum_ok(clamped)


def test_clamp_with_partial_checksum_leaves_the_field() -> None:
    syn = tcp_frame(MSS_1460)
    clamped = clamp_tcp_mss(syn, 1360, checksum_partial=True)
    assert mss_of(clamped) == 1360
    assert clamped[14 + 20 + 16 : 14 + 20 + 18] == syn[14 + 20 + 16 : 14 + 20 + 18]


@pytest.mark.parametrize(
    "frame",
    [
        tcp_frame(MSS_1460, flags=0x10, payload=b"data"),  # ACK, not a SYN
        tcp_frame(b"\x02\x04\x04\x00"),  # MSS 1024, already small
        tcp_frame(b""),  # SYN without options
        tcp_frame(b"\x00" + MSS_1460[:3]),  # EOL before anything
        tcp_frame(b"\x03\x03\x07\x01"),  # window scale only
        tcp_frame(MSS_1460, fragment=0x0010),  # non-first fragment
        MAC_B + MAC_A + b"\x86\xdd" + bytes(60),  # IPv6
        build_frame(MAC_B, MAC_A, ETHERTYPE_ARP, bytes(28)),
        MAC_B + MAC_A + b"\x08\x00" + b"\x45\x00",  # truncated IPv4
    ],
)
def test_clamp_leaves_other_frames_alone(frame: bytes) -> None:
    assert clamp_tcp_mss(frame, 1360) is frame


def test_clamp_random_option_layouts() -> None:
    rng = random.Random(4459)
    for _ in range(300):
        before = b"".join(rng.choice([b"\x01", b"\x04\x02", b"\x03\x03\x07"]) for _ in range(3))
        mss = rng.randrange(0, 0x10000)
        options = before + struct.pack("!BBH", 2, 4, mss)
        options += b"\x00" * (-len(options) % 4)
        syn = tcp_frame(options, payload=rng.randbytes(rng.randrange(0, 5)))
        limit = rng.randrange(500, 9000)
        clamped = clamp_tcp_mss(syn, limit)
        assert mss_of(clamped) == min(mss, limit)
        assert tcp_checksum_ok(clamped)
        assert (clamped is syn) == (mss <= limit)


def test_clamp_never_raises_on_mutated_frames() -> None:
    rng = random.Random(2024)
    seeds = [tcp_frame(LINUX_SYN_OPTIONS), tcp_frame(MSS_1460, vlan=3)]
    for _ in range(2000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.3:
            del frame[rng.randrange(len(frame)) :]
        result = clamp_tcp_mss(bytes(frame), 1360)
        assert isinstance(result, bytes)
        assert len(result) == len(frame)


def test_clamp_rejects_impossible_limit() -> None:
    with pytest.raises(ValueError):
        clamp_tcp_mss(tcp_frame(MSS_1460), 70000)


def test_module_constants() -> None:
    assert (ethernet.ETHERTYPE_IPV4, ethernet.ETHERTYPE_ARP) == (0x0800, 0x0806)
    assert (ethernet.ETHERTYPE_IPV6, ethernet.ETHERTYPE_VLAN) == (0x86DD, 0x8100)
