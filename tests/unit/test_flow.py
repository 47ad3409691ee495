"""The firewall's flow parser, on frames built by hand with struct (not with the layouts
of naas.core.wire, so that a wrong layout cannot agree with itself).

    A 10.0.0.1 (MAC_A) ---- frame ----> B 10.0.0.2 (MAC_B)
                 <--- ICMP error --- router 10.0.0.254

Each valid frame parses; each inconsistent one, and every proper prefix of a valid
one, raises BadPacket(BAD_FRAME) and nothing else (also for random bytes: hypothesis).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from naas.core.flow import (
    Flow,
    fast_key,
    flow_key,
    parse_flow_untrusted,
    reverse_key,
)
from naas.core.wire import BadPacket, DropReason

MAC_A = bytes.fromhex("024e00000001")
MAC_B = bytes.fromhex("024e00000002")
IP_A = 0x0A000001
IP_B = 0x0A000002
ROUTER = 0x0A0000FE
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
MF = 0x2000
PROPERTIES = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- frame builders ------------------------------------------------------------------------


def ether(
    ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = (), src: bytes = MAC_A
) -> bytes:
    """An Ethernet frame; ``tags`` are (TPID, TCI) pairs, outermost first."""
    head = MAC_B + src
    for tpid, tci in tags:
        head += struct.pack("!HH", tpid, tci)
    return head + struct.pack("!H", ethertype) + payload


def ipv4(
    proto: int,
    payload: bytes,
    src: int = IP_A,
    dst: int = IP_B,
    frag: int = 0x4000,  # DF
    options: bytes = b"",
    version_ihl: int | None = None,
    total: int | None = None,
) -> bytes:
    if version_ihl is None:
        version_ihl = 0x40 | (5 + len(options) // 4)
    header_len = 20 + len(options)
    if total is None:
        total = header_len + len(payload)
    return (
        struct.pack("!BBHHHBBHII", version_ihl, 0, total, 7, frag, 64, proto, 0, src, dst) + options + payload
    )


def tcp(
    sport: int, dport: int, flags: int, payload: bytes = b"", options: bytes = b"", doff: int | None = None
) -> bytes:
    if doff is None:
        doff = 5 + len(options) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, doff << 4, flags, 65535, 0, 0) + options + payload
    )


def udp(sport: int, dport: int, payload: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if length is None else length, 0) + payload


def icmp(kind: int, code: int = 0, ident: int = 0, seq: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", kind, code, 0, ident, seq) + payload


def arp(op: int = 1, hlen: int = 6, plen: int = 4, htype: int = 1, ptype: int = 0x0800) -> bytes:
    return struct.pack("!HHBBH6sI6sI", htype, ptype, hlen, plen, op, MAC_A, IP_A, bytes(6), IP_B)


def tcp_frame(flags: int = SYN, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    return ether(0x0800, ipv4(6, tcp(40000, 443, flags, b"hello")), tags)


def icmp_error(kind: int, quoted_datagram: bytes, quote: int = 8) -> bytes:
    """An ICMP error from the router to A quoting the IPv4 header + ``quote`` bytes."""
    header_len = (quoted_datagram[0] & 0x0F) * 4
    body = icmp(kind, 3) + quoted_datagram[: header_len + quote]
    return ether(0x0800, ipv4(1, body, src=ROUTER, dst=IP_A), src=MAC_B)


def parse(frame: bytes) -> Flow:
    return parse_flow_untrusted(frame)


def raises_bad_frame(frame: bytes) -> str:
    with pytest.raises(BadPacket) as caught:
        parse(frame)
    assert caught.value.reason is DropReason.BAD_FRAME
    return str(caught.value)


# -- what the parser reads --------------------------------------------------------------------


def test_tcp() -> None:
    flow = parse(tcp_frame(SYN))
    assert flow == Flow(6, IP_A, 40000, IP_B, 443, 0x0800, (), MAC_A, MAC_B, -1, SYN, False, None, 0, b"")
    assert flow_key(flow) == (6, IP_A, 40000, IP_B, 443)
    assert reverse_key(flow_key(flow)) == (6, IP_B, 443, IP_A, 40000)


@pytest.mark.parametrize("flags", [SYN | ACK, ACK | PSH, FIN | ACK, RST, 0])
def test_tcp_flags(flags: int) -> None:
    assert parse(tcp_frame(flags)).tcp_flags == flags


def test_tcp_behind_ip_and_tcp_options() -> None:
    segment = tcp(40000, 443, SYN, b"x", options=bytes.fromhex("020405b4") + b"\x01\x01\x04\x02")
    flow = parse(ether(0x0800, ipv4(6, segment, options=bytes.fromhex("94040000"))))  # router alert
    assert flow_key(flow) == (6, IP_A, 40000, IP_B, 443)
    assert flow.tcp_flags == SYN


def test_udp_and_ethernet_padding() -> None:
    frame = ether(0x0800, ipv4(17, udp(5353, 53, b"q")))
    padded = frame + bytes(60 - len(frame))  # the minimum frame: padding after the datagram
    for candidate in (frame, padded):
        flow = parse(candidate)
        assert flow_key(flow) == (17, IP_A, 5353, IP_B, 53)
        assert (flow.tcp_flags, flow.icmp_type, flow.related, flow.fragment) == (0, -1, None, False)


def test_icmp_echo_request_and_reply_keys_are_mutual_reverses() -> None:
    request = parse(ether(0x0800, ipv4(1, icmp(8, ident=0x1234, seq=1, payload=b"ping"))))
    reply = parse(ether(0x0800, ipv4(1, icmp(0, ident=0x1234, seq=1, payload=b"ping"), src=IP_B, dst=IP_A)))
    assert flow_key(request) == (1, IP_A, 0x1234, IP_B, 0x1234)
    assert (request.icmp_type, reply.icmp_type) == (8, 0)
    assert flow_key(reply) == reverse_key(flow_key(request))
    assert request.related is None and request.tcp_flags == 0


def test_icmp_other_than_echo_and_errors_has_no_ports() -> None:
    flow = parse(ether(0x0800, ipv4(1, icmp(13, ident=7, seq=7, payload=bytes(12)))))  # timestamp
    assert flow_key(flow) == (1, IP_A, 0, IP_B, 0)
    assert flow.icmp_type == 13 and flow.related is None


OUTBOUND = {
    "udp": ipv4(17, udp(5353, 53, b"query")),
    "tcp": ipv4(6, tcp(40000, 443, SYN)),
    "echo": ipv4(1, icmp(8, ident=99, payload=b"ping")),
    "ip options": ipv4(17, udp(5353, 53, b"q"), options=bytes(8)),
    "other protocol": ipv4(47, b"GRE header"),
}


@pytest.mark.parametrize("kind", [3, 4, 5, 11, 12])
@pytest.mark.parametrize("name", sorted(OUTBOUND))
def test_an_icmp_error_is_related_to_the_datagram_it_quotes(kind: int, name: str) -> None:
    """A's datagram went out; the error coming back quotes it: ``related`` is the key
    of that outbound datagram, which the connection table holds."""
    datagram = OUTBOUND[name]
    outbound = parse(ether(0x0800, datagram))
    error = parse(icmp_error(kind, datagram))
    assert flow_key(error) == (1, ROUTER, 0, IP_A, 0)
    assert error.icmp_type == kind
    assert error.related == flow_key(outbound)


def test_an_icmp_error_may_quote_more_than_8_bytes() -> None:
    datagram = OUTBOUND["udp"]
    assert parse(icmp_error(3, datagram, quote=len(datagram))).related == (17, IP_A, 5353, IP_B, 53)


def test_an_icmp_error_about_a_fragment_has_no_ports() -> None:
    datagram = ipv4(17, bytes(16), frag=100)
    assert parse(icmp_error(11, datagram)).related == (17, IP_A, 0, IP_B, 0)


@pytest.mark.parametrize(
    ("quoted", "quote"),
    [
        (OUTBOUND["udp"], 7),  # fewer than 8 bytes after the header
        (OUTBOUND["udp"], -10),  # not even the whole header
        (ipv4(17, udp(1, 2), version_ihl=0x44), 8),  # IHL 4
        (ipv4(17, udp(1, 2), version_ihl=0x65), 8),  # IPv6 version in an IPv4 quote
        (ipv4(17, udp(1, 2), total=19), 8),  # total length shorter than the header
    ],
)
def test_an_icmp_error_with_a_broken_quote_is_bad(quoted: bytes, quote: int) -> None:
    raises_bad_frame(icmp_error(3, quoted, quote))


def test_arp() -> None:
    flow = parse(ether(0x0806, arp()))
    assert (flow.ethertype, flow.proto, flow.ip_src, flow.ip_dst) == (0x0806, -1, 0, 0)
    assert (flow.arp_sender_ip, flow.arp_sender_mac) == (IP_A, MAC_A)
    assert flow_key(flow) == (-1, 0, 0, 0, 0)


@pytest.mark.parametrize("body", [arp(hlen=8), arp(plen=16), arp(htype=6), arp(ptype=0x86DD)])
def test_arp_of_other_address_kinds_is_bad(body: bytes) -> None:
    raises_bad_frame(ether(0x0806, body))


def ipv6(next_header: int, payload: bytes, version: int = 6, length: int | None = None) -> bytes:
    length = len(payload) if length is None else length
    return struct.pack("!IHBB", version << 28, length, next_header, 255) + bytes(32) + payload


def test_icmpv6_type_for_neighbour_discovery() -> None:
    solicitation = ipv6(58, struct.pack("!BBHI", 135, 0, 0, 0) + bytes(16))
    flow = parse(ether(0x86DD, solicitation))
    assert (flow.ethertype, flow.proto, flow.icmp_type, flow_key(flow)) == (0x86DD, -1, 135, (-1, 0, 0, 0, 0))
    assert parse(ether(0x86DD, solicitation, ((0x8100, 5),))).icmp_type == 135


@pytest.mark.parametrize(
    "packet",
    [
        ipv6(17, udp(1, 2)),  # not ICMPv6
        ipv6(0, bytes(8) + struct.pack("!BBH", 135, 0, 0)),  # behind a hop-by-hop header: not read
        ipv6(58, struct.pack("!BBH", 135, 0, 0), version=4),
        ipv6(58, struct.pack("!BBH", 135, 0, 0), length=5),  # payload length past the frame
        ipv6(58, struct.pack("!BBH", 135, 0, 0), length=3),
        ipv6(58, b"\x87\x00"),  # ICMPv6 header cut
        ipv6(58, b"")[:39],  # IPv6 header cut
    ],
)
def test_ipv6_that_is_not_plain_icmpv6_has_no_icmp_type(packet: bytes) -> None:
    flow = parse(ether(0x86DD, packet))
    assert (flow.ethertype, flow.proto, flow.icmp_type) == (0x86DD, -1, -1)


@pytest.mark.parametrize("ethertype", [0x86DD, 0x88B5, 0x0842, 0x0000, 0xFFFF])
def test_ipv6_and_other_ethertypes_carry_no_ip_flow(ethertype: int) -> None:
    flow = parse(ether(ethertype, bytes(40)))
    assert flow == Flow(-1, 0, 0, 0, 0, ethertype, (), MAC_A, MAC_B, -1, 0, False, None, 0, b"")
    assert parse(ether(ethertype, b"")).ethertype == ethertype  # the payload is not read


@pytest.mark.parametrize(
    ("tags", "vlans"),
    [
        (((0x8100, 0x2064),), (100,)),  # priority 1, VLAN 100
        (((0x88A8, 0x0010), (0x8100, 0xE123)), (16, 0x123)),  # 802.1ad S-tag then C-tag
        (((0x8100, 0x0FFF), (0x8100, 0x0001)), (4095, 1)),
    ],
)
def test_vlan_tags_are_looked_through(tags: tuple[tuple[int, int], ...], vlans: tuple[int, ...]) -> None:
    flow = parse(tcp_frame(SYN | ACK, tags))
    assert flow.vlans == vlans
    assert flow.ethertype == 0x0800
    assert flow_key(flow) == (6, IP_A, 40000, IP_B, 443)
    assert flow.tcp_flags == SYN | ACK
    tagged_arp = parse(ether(0x0806, arp(), tags))
    assert (tagged_arp.vlans, tagged_arp.arp_sender_ip) == (vlans, IP_A)


def test_a_third_tag_is_left_as_the_ethertype() -> None:
    flow = parse(tcp_frame(SYN, ((0x88A8, 1), (0x8100, 2), (0x8100, 3))))
    assert (flow.vlans, flow.ethertype, flow.proto) == ((1, 2), 0x8100, -1)


def test_non_first_fragments_have_no_ports() -> None:
    flow = parse(ether(0x0800, ipv4(17, bytes(64), frag=185)))  # offset 1480 bytes
    assert flow.fragment
    assert flow_key(flow) == (17, IP_A, 0, IP_B, 0)
    last = parse(ether(0x0800, ipv4(6, b"\xff" * 8, frag=0x2000 | 3)))  # bytes too short for TCP
    assert last.fragment and (last.src_port, last.tcp_flags) == (0, 0)
    icmp_rest = parse(ether(0x0800, ipv4(1, bytes(8), frag=10)))
    assert icmp_rest.icmp_type == -1 and icmp_rest.related is None


def test_a_first_fragment_has_its_ports() -> None:
    first = parse(ether(0x0800, ipv4(17, udp(5000, 6000, bytes(16), length=3000), frag=MF)))
    assert not first.fragment
    assert flow_key(first) == (17, IP_A, 5000, IP_B, 6000)


@pytest.mark.parametrize(
    "frame",
    [
        ether(0x0800, ipv4(6, tcp(1, 2, SYN), version_ihl=0x44)),  # IHL 4
        ether(0x0800, ipv4(6, tcp(1, 2, SYN), version_ihl=0x65)),  # not version 4
        ether(0x0800, ipv4(6, tcp(1, 2, SYN), version_ihl=0x46)),  # IHL 6: TCP runs past the datagram
        ether(0x0800, ipv4(6, b"", version_ihl=0x4F, total=40)),  # IHL 15: longer than the datagram
        ether(0x0800, ipv4(6, tcp(1, 2, SYN), total=19)),  # total length shorter than the header
        ether(0x0800, ipv4(6, tcp(1, 2, SYN), total=41)),  # total length past the frame
        ether(0x0800, ipv4(6, tcp(1, 2, SYN)[:19])),  # TCP header cut
        ether(0x0800, ipv4(6, tcp(1, 2, SYN, doff=4))),  # data offset < 5
        ether(0x0800, ipv4(6, tcp(1, 2, SYN, doff=6))),  # options past the datagram
        ether(0x0800, ipv4(6, tcp(1, 2, SYN)[:19], frag=MF)),  # a tiny first fragment (RFC 1858)
        ether(0x0800, ipv4(6, bytes(64), frag=1)),  # TCP at offset 8: rewrites flags (RFC 1858)
        ether(0x0800, ipv4(17, udp(1, 2)[:7])),  # UDP header cut
        ether(0x0800, ipv4(17, udp(1, 2, b"abc", length=7))),  # UDP length < 8
        ether(0x0800, ipv4(17, udp(1, 2, b"abc", length=12))),  # UDP length past the datagram
        ether(0x0800, ipv4(1, icmp(8)[:7])),  # ICMP header cut
        ether(0x0800, ipv4(1, icmp(3))),  # an error quoting nothing
        ether(0x0806, arp()[:27]),  # ARP body cut
        ether(0x0800, b""),  # IPv4 EtherType, no header
        ether(0x0800, ipv4(6, tcp(1, 2, SYN))[:19]),  # IPv4 header cut
        MAC_B + MAC_A + b"\x81\x00\x00\x01",  # a tag with no EtherType after it
    ],
)
def test_inconsistent_headers_are_bad_frames(frame: bytes) -> None:
    raises_bad_frame(frame)


VALID_FRAMES = {
    "tcp": tcp_frame(SYN),
    "tcp with options": ether(0x0800, ipv4(6, tcp(1, 2, SYN, options=bytes(12)), options=bytes(4))),
    "udp": ether(0x0800, ipv4(17, udp(5353, 53, b"query"))),
    "echo": ether(0x0800, ipv4(1, icmp(8, ident=5, payload=b"ping"))),
    "error": icmp_error(3, OUTBOUND["tcp"]),
    "error about an echo": icmp_error(11, OUTBOUND["echo"]),
    "fragment": ether(0x0800, ipv4(17, bytes(24), frag=3)),
    "other protocol": ether(0x0800, ipv4(47, bytes(8))),
    "arp": ether(0x0806, arp()),
    "vlan tcp": tcp_frame(SYN, ((0x8100, 7),)),
    "qinq udp": ether(0x0800, ipv4(17, udp(1, 2, b"x")), ((0x88A8, 1), (0x8100, 2))),
    "qinq arp": ether(0x0806, arp(), ((0x88A8, 1), (0x8100, 2))),
    "icmpv6": ether(0x86DD, ipv6(58, struct.pack("!BBH", 136, 0, 0) + bytes(20))),
}


@pytest.mark.parametrize("name", sorted(set(VALID_FRAMES) - {"icmpv6"}))
def test_every_proper_prefix_of_a_frame_is_bad(name: str) -> None:
    """These frames end where their IPv4 total length (or ARP body) says: any cut is a
    truncation, and is refused as one, never as another exception."""
    frame = VALID_FRAMES[name]
    parse(frame)
    for length in range(len(frame)):
        with pytest.raises(BadPacket) as caught:
            parse(frame[:length])
        assert caught.value.reason is DropReason.BAD_FRAME, length


def test_a_cut_ipv6_frame_is_only_not_icmpv6() -> None:
    frame = VALID_FRAMES["icmpv6"]
    assert parse(frame).icmp_type == 136
    for length in range(len(frame)):
        try:
            flow = parse(frame[:length])
        except BadPacket:
            assert length < 14  # only a cut Ethernet header
            continue
        assert (flow.ethertype, flow.icmp_type) == (0x86DD, -1)


@pytest.mark.parametrize("name", sorted(VALID_FRAMES))
def test_a_frame_at_an_offset_in_a_memoryview(name: str) -> None:
    frame = VALID_FRAMES[name]
    buffer = memoryview(b"\xee" * 24 + frame + b"\x00" * 10)
    assert parse_flow_untrusted(buffer, 24) == parse(frame)
    assert parse_flow_untrusted(bytearray(frame)) == parse(frame)


def test_a_negative_offset_is_our_own_mistake() -> None:
    with pytest.raises(ValueError):
        parse_flow_untrusted(tcp_frame(), -1)


# -- properties ---------------------------------------------------------------------------------


def _check(data: bytes) -> None:
    try:
        flow = parse(data)
    except BadPacket as error:
        assert error.reason is DropReason.BAD_FRAME
        return
    assert isinstance(flow, Flow)
    assert -1 <= flow.proto <= 255 and 0 <= flow.src_port <= 0xFFFF and 0 <= flow.dst_port <= 0xFFFF
    assert len(flow.vlans) <= 2 and len(flow.src_mac) == len(flow.dst_mac) == 6
    if flow.fragment:
        assert flow.src_port == flow.dst_port == 0


@PROPERTIES
@given(st.binary(max_size=120))
def test_random_bytes_parse_or_raise_bad_packet(data: bytes) -> None:
    _check(data)


@PROPERTIES
@given(
    st.sampled_from(sorted(VALID_FRAMES)).flatmap(
        lambda name: st.tuples(
            st.just(VALID_FRAMES[name]),
            st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
            st.integers(0, 200),
        )
    )
)
def test_mutated_frames_parse_or_raise_bad_packet(case: tuple[bytes, list[tuple[int, int]], int]) -> None:
    """Valid frames with bytes replaced and cut: reach past the first header checks."""
    frame, changes, cut = case
    data = bytearray(frame)
    for at, value in changes:
        if at < len(data):
            data[at] = value
    _check(bytes(data[: max(cut, 14)]))
    _check(bytes(data))


@pytest.mark.parametrize("name", sorted(VALID_FRAMES))
def test_the_fast_key_is_the_parsers_key_or_none(name: str) -> None:
    """fast_key (one unpack, for the connection table's hits) never disagrees with the
    full parser: the same key and TCP flags, or None for what it does not read."""
    frame = b"\x00" * 3 + VALID_FRAMES[name] + b"\x00" * 40  # at an offset, padded past 48 bytes
    common = fast_key(frame, 3)
    flow = parse_flow_untrusted(frame, 3)
    if common is not None:
        assert common == (flow_key(flow), flow.tcp_flags)


def test_the_fast_key_reads_the_common_frames() -> None:
    syn = ether(0x0800, ipv4(6, tcp(40000, 22, SYN)))
    assert fast_key(syn) == ((6, IP_A, 40000, IP_B, 22), SYN)
    echo = ether(0x0800, ipv4(1, icmp(8, ident=77, payload=b"x" * 20)))
    assert fast_key(echo) == ((1, IP_A, 77, IP_B, 77), 0)
    assert fast_key(ether(0x0800, ipv4(17, udp(53, 5353, b"y" * 20)))) == ((17, IP_A, 53, IP_B, 5353), 0)
    unreachable = ether(0x0800, ipv4(1, icmp(3, 3, payload=b"z" * 28)))
    tagged = ether(0x0800, ipv4(6, tcp(1, 2, SYN)), tags=((0x8100, 7),))
    options = ether(0x0800, ipv4(6, tcp(1, 2, SYN), options=b"\x01" * 4))
    fragment = ether(0x0800, ipv4(6, tcp(1, 2, SYN), frag=0x2000 | 8))
    short = ether(0x0800, ipv4(17, udp(1, 2)))
    for other in (unreachable, tagged, options, fragment, short):
        assert fast_key(other) is None
