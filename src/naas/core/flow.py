"""What a frame is, for the firewall: its flow, read from the Ethernet frame up to L4.

Theory of operation. Every FRAME a peer sends, and every frame read from ``naas0``
that leaves for a peer, is parsed once here by ``parse_flow_untrusted`` before the
firewall (core/firewall.py) looks it up in the connection table (core/conntrack.py)
and, for a new flow, asks the policy (core/policy.py). The parser reads, in order:

    Ethernet header      dst, src, EtherType (wire.ETHERNET_HEADER)
    up to two tags       802.1ad S-tag and/or 802.1Q C-tag: VLAN ids (wire.VLAN_TAG)
    then one of
      IPv4 header        protocol, addresses, fragment offset (wire.IPV4_HEADER)
        TCP              ports and flags (wire.TCP_HEADER)
        UDP              ports (wire.UDP_HEADER)
        ICMP             type; echo identifier; for an error, the embedded datagram
      ARP                sender MAC and IPv4 address (wire.ARP_BODY)
      IPv6               the ICMPv6 type, if ICMPv6 is the first next header (what
                         neighbour discovery needs, RFC 4861); no addresses, no ports:
                         the policy matches IPv6 by EtherType, and ``proto`` is -1
      anything else      the EtherType only

Only the headers are read: checksums are not verified (the receiving host does that)
and the payload is not looked at. A frame whose Ethernet, VLAN, IPv4, L4 or ARP
headers are truncated or contradict each other (IHL < 5, a total length shorter than
the header or longer than the frame, a TCP data offset < 5, a UDP length that does not
fit, an ICMP error quoting less than a header and 8 bytes) raises
``BadPacket(DropReason.BAD_FRAME)``: the firewall must not guess at a frame the
receiving stack may read differently. Bytes after the IPv4 total length are Ethernet
padding and ignored. For the same reason, a TCP fragment at offset 8 bytes (offset
field 1), which could rewrite the flags of the first one, is refused (RFC 1858
section 3.2), and so is a first fragment too short to hold the whole TCP header.
IPv6 is not refused: whatever does not add up in it only leaves ``icmp_type`` at -1.

A non-first IPv4 fragment carries no L4 header: its ``fragment`` is True and it has no
ports (0). An ICMP error (destination unreachable, source quench, redirect, time
exceeded, parameter problem: RFC 792) carries the IPv4 header and first 8 bytes of the
datagram that caused it; ``related`` is that datagram's flow key, so the firewall lets
the error through when that datagram's connection is known.

The flow key (``flow_key``) is the conntrack 5-tuple ``(proto, ip_src, src_port,
ip_dst, dst_port)``, the first five fields of ``Flow`` (so it is one slice). For ICMP
echo both ports are the echo identifier: a request ``(1, A, id, B, id)`` and its reply
``(1, B, id, A, id)`` are each other's ``reverse_key``.

Speed: this runs per packet. The cache-hit path (core/firewall.py) first tries
``fast_key``: the key of the commonest frame (untagged IPv4, no options, TCP, UDP or
ICMP echo) in one ``unpack_from`` of 48 bytes, with no validation beyond its own
length, which is enough to find a flow already in the table; any miss takes the full
parser before a decision. One ``unpack_from`` per header on the caller's buffer
(bytes or memoryview, at an offset; an untagged IPv4 frame's Ethernet and IPv4 headers
in one call), no copies but the two MACs, and one tuple out: ``Flow`` is a NamedTuple,
built with ``tuple.__new__`` (its generated ``__new__`` costs as much again).
"""

from __future__ import annotations

from typing import NamedTuple

from naas.core.wire import (
    ARP_BODY,
    COMMON_FLOW,
    ETHERNET_HEADER,
    ETHERNET_IPV4_FLOW,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_VLAN,
    ICMP_HEADER,
    IPV4_FLOW,
    IPV6_FLOW,
    IPV6_HEADER_LEN,
    TCP_HEADER,
    UDP_HEADER,
    VLAN_TAG,
    BadPacket,
    DropReason,
)
from naas.model.policy import PROTO_ICMP, PROTO_TCP, PROTO_UDP

# -- spec constants -----------------------------------------------------------------------

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_ECHOES = frozenset({ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY})
# RFC 792 / RFC 1122 errors, which quote the offending datagram's header + 8 bytes:
# destination unreachable, source quench, redirect, time exceeded, parameter problem.
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP_QUOTE_LEN = 8  # bytes of the offending datagram's payload an error carries, at least

IPPROTO_ICMPV6 = 58  # an IPv6 next header
_ICMPV6_MIN = 4  # type, code, checksum

ARP_HTYPE_ETHERNET = 1
MAX_VLAN_TAGS = 2  # an S-tag and a C-tag (802.1ad); a third TPID is left as the EtherType
VLAN_ID_MASK = 0x0FFF

FlowKey = tuple[int, int, int, int, int]  # (proto, ip_src, src_port, ip_dst, dst_port)
ReadableBuffer = bytes | bytearray | memoryview

NOT_IP = -1  # ``proto`` and ``icmp_type`` of what is not IPv4 (or not ICMP)

_VLAN_TAG_LEN = VLAN_TAG.size
_FRAGMENT_OFFSET = 0x1FFF  # of the IPv4 flags/fragment field
_MORE_FRAGMENTS = 0x2000
_NO_VLANS: tuple[int, ...] = ()
_TPIDS = frozenset({ETHERTYPE_VLAN, ETHERTYPE_QINQ})  # sets, not tuples: nothing built per test
_PORTED = frozenset({PROTO_TCP, PROTO_UDP})

_ethernet = ETHERNET_HEADER.unpack_from
_tag = VLAN_TAG.unpack_from
_ipv4 = IPV4_FLOW.unpack_from
_ipv6 = IPV6_FLOW.unpack_from
_ethernet_ipv4 = ETHERNET_IPV4_FLOW.unpack_from
_tcp = TCP_HEADER.unpack_from
_udp = UDP_HEADER.unpack_from
_icmp = ICMP_HEADER.unpack_from
_arp = ARP_BODY.unpack_from
_new = tuple.__new__  # Flow(...) runs a Python-level __new__: twice the cost
_ETHERNET_LEN = ETHERNET_HEADER.size
_IPV4_LEN = IPV4_FLOW.size
_TCP_LEN = TCP_HEADER.size
_UDP_LEN = UDP_HEADER.size
_ICMP_LEN = ICMP_HEADER.size
_ARP_LEN = ARP_BODY.size


class Flow(NamedTuple):
    """One frame's flow. The first five fields are its conntrack key (``flow_key``)."""

    proto: int  # IPv4 protocol number; -1 when not IPv4
    ip_src: int  # IPv4 addresses as integers; 0 when not IPv4
    src_port: int  # TCP/UDP port, ICMP echo identifier; 0 otherwise (and for fragments)
    ip_dst: int
    dst_port: int
    ethertype: int  # under the VLAN tags
    vlans: tuple[int, ...]  # VLAN ids, outermost first
    src_mac: bytes
    dst_mac: bytes
    icmp_type: int  # ICMP type, or ICMPv6 type of IPv6; -1 otherwise (and for fragments)
    tcp_flags: int  # 0 when not TCP
    fragment: bool  # a non-first IPv4 fragment: no L4 header, no ports
    related: FlowKey | None  # an ICMP error: the key of the datagram it is about
    arp_sender_ip: int  # ARP: the sender's IPv4 address and MAC; else 0 and b""
    arp_sender_mac: bytes


_common = COMMON_FLOW.unpack_from
_COMMON_LEN = COMMON_FLOW.size
_ICMP_ECHO_TYPES = (0, 8)  # echo reply, echo request (as the high byte of a 16-bit read)


def fast_key(frame: ReadableBuffer, offset: int = 0) -> tuple[FlowKey, int] | None:
    """The flow key and TCP flags of the commonest frame - untagged IPv4 without options,
    not a fragment, TCP, UDP or ICMP echo, at least 48 bytes - in one unpack; None for
    any other frame, which then takes `parse_flow_untrusted`.

    It checks no lengths but its own: use it only to find an entry already in the
    connection table (a hit means the flow's first frame passed the full parser); a
    decision about a new flow needs `parse_flow_untrusted`."""
    if len(frame) - offset < _COMMON_LEN:
        return None
    ethertype, version_ihl, fragment, proto, src, dst, first, second, third, flags = _common(frame, offset)
    if ethertype != ETHERTYPE_IPV4 or version_ihl != 0x45 or fragment & 0x3FFF:
        return None
    if proto == PROTO_TCP:
        return (proto, src, first, dst, second), flags
    if proto == PROTO_UDP:
        return (proto, src, first, dst, second), 0
    if proto == PROTO_ICMP and first >> 8 in _ICMP_ECHO_TYPES:
        return (proto, src, third, dst, third), 0
    return None


def flow_key(flow: Flow) -> FlowKey:
    """The conntrack key ``(proto, ip_src, src_port, ip_dst, dst_port)``."""
    return flow[:5]


def reverse_key(key: FlowKey) -> FlowKey:
    """The key of the same connection seen from its other end."""
    proto, ip_src, src_port, ip_dst, dst_port = key
    return (proto, ip_dst, dst_port, ip_src, src_port)


def _bad(detail: str) -> BadPacket:
    return BadPacket(DropReason.BAD_FRAME, detail)


def parse_flow_untrusted(frame: ReadableBuffer, offset: int = 0) -> Flow:
    """The flow of the Ethernet frame at ``frame[offset:]``; ``BadPacket(BAD_FRAME)``
    when its headers are truncated or inconsistent (see the module docstring)."""
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    size = len(frame)
    at = offset + _ETHERNET_LEN
    if size >= at + _IPV4_LEN:  # room for an untagged IPv4 header: read both in one call
        dst_mac, src_mac, ethertype, version_ihl, total, fragment, proto, ip_src, ip_dst = _ethernet_ipv4(
            frame, offset
        )
    elif size >= at:
        dst_mac, src_mac, ethertype = _ethernet(frame, offset)
        version_ihl = total = fragment = proto = ip_src = ip_dst = 0  # read below, if it is IPv4
    else:
        raise _bad(f"Ethernet header: {size - offset} bytes")
    vlans = _NO_VLANS
    if ethertype in _TPIDS:
        vlans, ethertype, at = _vlan_tags(frame, at, size)
        if ethertype == ETHERTYPE_IPV4 and size >= at + _IPV4_LEN:
            version_ihl, total, fragment, proto, ip_src, ip_dst = _ipv4(frame, at)

    if ethertype == ETHERTYPE_IPV4:
        if size < at + _IPV4_LEN:
            raise _bad(f"IPv4 header: {size - at} bytes")
        if not 0x45 <= version_ihl <= 0x4F:
            raise _bad(f"IPv4 version/IHL {version_ihl:#04x}")
        l4 = at + ((version_ihl & 0x0F) << 2)
        end = at + total
        if end < l4 or end > size:
            raise _bad(f"IPv4 total length {total}, header {l4 - at}, {size - at} bytes")
        if fragment & _FRAGMENT_OFFSET:
            if proto == PROTO_TCP and fragment & _FRAGMENT_OFFSET == 1:
                raise _bad("TCP fragment at offset 8 (RFC 1858)")
            return _new(Flow, (
                proto, ip_src, 0, ip_dst, 0, ethertype, vlans, src_mac, dst_mac,
                NOT_IP, 0, True, None, 0, b"",
            ))  # fmt: skip

        src_port = dst_port = tcp_flags = 0
        icmp_type = NOT_IP
        related = None
        if proto == PROTO_TCP:
            if end < l4 + _TCP_LEN:
                raise _bad(f"TCP header: {end - l4} bytes")
            src_port, dst_port, data_offset, tcp_flags = _tcp(frame, l4)
            if data_offset < 0x50 or l4 + ((data_offset >> 4) << 2) > end:
                raise _bad(f"TCP data offset {data_offset >> 4}, {end - l4} bytes")
        elif proto == PROTO_UDP:
            if end < l4 + _UDP_LEN:
                raise _bad(f"UDP header: {end - l4} bytes")
            src_port, dst_port, length = _udp(frame, l4)
            # the UDP length covers the whole datagram, of which a first fragment has a part
            if length < _UDP_LEN or (l4 + length > end and not fragment & _MORE_FRAGMENTS):
                raise _bad(f"UDP length {length}, {end - l4} bytes")
        elif proto == PROTO_ICMP:
            if end < l4 + _ICMP_LEN:
                raise _bad(f"ICMP header: {end - l4} bytes")
            icmp_type, _, _, identifier, _ = _icmp(frame, l4)
            if icmp_type in ICMP_ECHOES:
                src_port = dst_port = identifier
            elif icmp_type in ICMP_ERRORS:
                related = _quoted_key(frame, l4 + _ICMP_LEN, end)
        return _new(Flow, (
            proto, ip_src, src_port, ip_dst, dst_port, ethertype, vlans, src_mac, dst_mac,
            icmp_type, tcp_flags, False, related, 0, b"",
        ))  # fmt: skip

    if ethertype == ETHERTYPE_ARP:
        if size < at + _ARP_LEN:
            raise _bad(f"ARP body: {size - at} bytes")
        htype, ptype, hlen, plen, _, sender_mac, sender_ip, _, _ = _arp(frame, at)
        if htype != ARP_HTYPE_ETHERNET or ptype != ETHERTYPE_IPV4 or hlen != 6 or plen != 4:
            raise _bad(f"ARP hardware {htype}/{hlen} protocol {ptype:#06x}/{plen}")
        return _new(Flow, (
            NOT_IP, 0, 0, 0, 0, ethertype, vlans, src_mac, dst_mac,
            NOT_IP, 0, False, None, sender_ip, sender_mac,
        ))  # fmt: skip

    icmp_type = _icmpv6_type(frame, at, size) if ethertype == ETHERTYPE_IPV6 else NOT_IP
    return _new(
        Flow, (NOT_IP, 0, 0, 0, 0, ethertype, vlans, src_mac, dst_mac, icmp_type, 0, False, None, 0, b"")
    )


def _icmpv6_type(frame: ReadableBuffer, at: int, size: int) -> int:
    """The ICMPv6 type of the IPv6 packet at ``at`` if ICMPv6 directly follows its fixed
    header (as in neighbour discovery), else -1 (also when the lengths do not add up)."""
    l4 = at + IPV6_HEADER_LEN
    if size < l4 + _ICMPV6_MIN:
        return NOT_IP
    version, payload_length, next_header = _ipv6(frame, at)
    if version >> 4 != 6 or next_header != IPPROTO_ICMPV6 or not _ICMPV6_MIN <= payload_length <= size - l4:
        return NOT_IP
    return frame[l4]


def _vlan_tags(frame: ReadableBuffer, at: int, size: int) -> tuple[tuple[int, ...], int, int]:
    """The VLAN ids of the (up to ``MAX_VLAN_TAGS``) tags starting at ``at``, just
    after the first TPID; the EtherType they enclose; where the payload starts."""
    if size < at + _VLAN_TAG_LEN:
        raise _bad(f"802.1Q tag: {size - at} bytes")
    outer, ethertype = _tag(frame, at)
    at += _VLAN_TAG_LEN
    if ethertype not in _TPIDS:
        return (outer & VLAN_ID_MASK,), ethertype, at
    if size < at + _VLAN_TAG_LEN:
        raise _bad(f"second 802.1Q tag: {size - at} bytes")
    inner, ethertype = _tag(frame, at)
    return (outer & VLAN_ID_MASK, inner & VLAN_ID_MASK), ethertype, at + _VLAN_TAG_LEN


def _quoted_key(frame: ReadableBuffer, at: int, end: int) -> FlowKey:
    """The flow key of the datagram an ICMP error quotes (its IPv4 header and 8 bytes)
    at ``frame[at:end]``. The quoted total length is the original's, not the quote's."""
    if end < at + _IPV4_LEN:
        raise _bad(f"ICMP error quotes {end - at} bytes")
    version_ihl, total, fragment, proto, ip_src, ip_dst = _ipv4(frame, at)
    header = (version_ihl & 0x0F) << 2
    if not 0x45 <= version_ihl <= 0x4F or total < header:
        raise _bad(f"ICMP error quotes IPv4 version/IHL {version_ihl:#04x}, length {total}")
    l4 = at + header
    if end < l4 + ICMP_QUOTE_LEN:
        raise _bad(f"ICMP error quotes {end - l4} bytes past the IPv4 header")
    if fragment & _FRAGMENT_OFFSET:
        return (proto, ip_src, 0, ip_dst, 0)
    if proto in _PORTED:  # TCP and UDP headers both start with the two ports
        src_port, dst_port = _udp(frame, l4)[:2]
        return (proto, ip_src, src_port, ip_dst, dst_port)
    if proto == PROTO_ICMP:
        icmp_type, _, _, identifier, _ = _icmp(frame, l4)
        if icmp_type in ICMP_ECHOES:
            return (proto, ip_src, identifier, ip_dst, identifier)
    return (proto, ip_src, 0, ip_dst, 0)
