"""Virtio-net offloads done in software: partial checksums finished, TCP super-frames cut up.

The agent opens its TAP with ``IFF_VNET_HDR`` and turns on checksum and TCP
segmentation offload (``TUNSETOFFLOAD``), so each frame it reads comes behind a
10-byte ``struct virtio_net_hdr`` (virtio 1.x spec section 5.1.6, little-endian):

    0       1          2         4          6            8             10
    | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset | Ethernet frame ...

``NEEDS_CSUM`` in ``flags`` means the L4 checksum is unfinished: the field at
``csum_start + csum_offset`` holds only the pseudo-header sum (folded, not
complemented), and the checksum is the complement of the sum of every byte from
``csum_start`` to the end of the frame. ``DATA_VALID`` means it was verified already.
A ``gso_type`` of TCPV4 or TCPV6 marks a TCP "super-frame" of up to 64 KiB whose
payload is to leave as segments of ``gso_size`` bytes (the MSS); the ECN bit says
its CWR flag may be set. Offsets count from the start of the Ethernet frame.
``hdr_len`` is only a hint (Linux puts its linear head length there) and is not used.

Header and frame cross the mesh together. A member whose TAP has the same offloads
writes both to it unchanged; this module serves a member whose TAP has none.
``check_vnet_untrusted`` admits only headers our own TAP can produce, and
``software_segments`` turns header and frame into ordinary frames the way the
kernel's software fallback would (``skb_checksum_help``, ``inet_gso_segment``,
``tcp_gso_segment``); ``smaller_super_frames`` cuts a super-frame into smaller ones
for a lossy link (core/loss.py), by the same rules, whole segments at a time, with
checksums left unfinished. Each segment gets:

- the Ethernet header (one 802.1Q tag allowed), the IP header with any IPv6
  extension headers, and the TCP header, copied;
- its own IPv4 total length or IPv6 payload length; IPv4 also gets the ID of the
  super-frame plus the segment's index (mod 2**16, as Linux TSO numbers them) and a
  recomputed header checksum;
- a TCP sequence number advanced by the payload before it (mod 2**32); FIN and PSH
  only on the last segment and CWR only on the first (RFC 9293 section 3.1 for the
  flags, RFC 3168 section 6.1.2 for CWR marking only the first new data);
- a full TCP checksum over the pseudo-header (addresses, protocol 6, the segment's
  TCP length; RFC 9293 section 3.1, RFC 8200 section 8.1) and the segment.

The pseudo-header destination is the final one. Where it might not be the address in
the IP header (IPv4 options, which may source-route; an IPv6 routing header with
segments left), the address sum is instead recovered from the partial sum the
sender left in the super-frame, minus the super-frame's length, as the kernel does.

Checksums (RFC 1071) are the cost here, so no Python loop touches words. The ones'
complement sum of big-endian 16-bit words is the whole buffer read as one big-endian
integer modulo 0xFFFF, because 2**16 == 1 (mod 0xFFFF): ``int.from_bytes(data, "big")
% 0xFFFF`` runs in C. An odd length is padded with a zero byte, i.e. the integer is
shifted left by 8. One catch: a ones' complement sum that is not zero folds to 0xFFFF
(negative zero) where the remainder is 0. Sums of even-length pieces also add, so
what all segments share (the address part of the pseudo-header, the TCP header with
its changing fields zeroed, the IPv4 header with length, ID and checksum zeroed) is
summed once per super-frame, and each segment adds only its own fields and its
payload: the incremental arithmetic of RFC 1624, with nothing to subtract.

Everything is pure, bytes in and bytes out; input that does not fit raises
``BadPacket(DropReason.BAD_OFFLOAD)`` and nothing else.
"""

from __future__ import annotations

import struct

from naas.core.ethernet import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    IPPROTO_TCP,
    VLAN_TAG_LEN,
    internet_checksum,
)
from naas.core.wire import ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, BadPacket, DropReason

# -- virtio-net header (virtio spec 5.1.6, include/uapi/linux/virtio_net.h) -----------------

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = 10
VNET_FLAGS = 0  # VNET_HDR's flags byte (VNET_NEEDS_CSUM, VNET_DATA_VALID)
VNET_GSO_TYPE = 1  # its gso_type byte: non-zero for a super-frame
VNET_NEEDS_CSUM = 1
VNET_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UDP fragmentation offload: never negotiated, so never accepted
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # UDP segmentation offload: likewise
GSO_ECN = 0x80  # or-ed into TCPV4/TCPV6: the super-frame may carry CWR
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)  # no checksum to finish, no segmentation

UDP_CSUM_OFFSET = 6  # where the checksum field sits in a UDP header
TCP_CSUM_OFFSET = 16  # ... and in a TCP header
MIN_GSO_SIZE = 48  # Linux never sends a smaller MSS (net.ipv4.tcp_min_snd_mss); bounds the work per frame
# The largest IP packet (an IPv6 payload of 65535 bytes behind its 40-byte header; an
# IPv4 packet is at most 65535 in all) behind an Ethernet header with one 802.1Q tag.
# Linux's 64 KiB GSO limit stays below it, as does any frame of a 65535-byte MTU.
MAX_SUPER_FRAME = ETHERNET_HEADER_LEN + VLAN_TAG_LEN + IPV6_HEADER_LEN + 0xFFFF
MAX_IPV6_EXTENSION_HEADERS = 8  # walked between the IPv6 header and TCP, at most

TCP_MIN_HEADER = 20
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
TCP_FLAG_CWR = 0x80
IPV6_HOP_BY_HOP = 0
IPV6_ROUTING = 43
IPV6_DESTINATION_OPTIONS = 60

_VLAN_BYTES = ETHERTYPE_VLAN.to_bytes(2, "big")
_IPV4_BYTES = ETHERTYPE_IPV4.to_bytes(2, "big")
_IPV6_BYTES = ETHERTYPE_IPV6.to_bytes(2, "big")
_IPV6_SKIPPED_HEADERS = frozenset((IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DESTINATION_OPTIONS))
_IPV4_FRAGMENT_BITS = 0x3FFF  # MF and the fragment offset
_U16 = struct.Struct("!H")
_U16_U16 = struct.Struct("!HH")
_U32 = struct.Struct("!I")


def _bad(detail: str) -> BadPacket:
    return BadPacket(DropReason.BAD_OFFLOAD, detail)


# -- checksums ------------------------------------------------------------------------------


def _fold(total: int) -> int:
    """A non-negative sum of 16-bit words as a 16-bit ones' complement sum (0 only if it is 0)."""
    return total % 0xFFFF or (0xFFFF if total else 0)


def _word_sum(data: bytes | bytearray | memoryview) -> int:
    """The sum of ``data`` as big-endian 16-bit words (odd length: zero-padded), modulo
    0xFFFF: for adding to other sums, not folding on its own (it forgets 0 from 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def complete_checksum(frame: bytes | bytearray, csum_start: int, csum_offset: int) -> bytes:
    """``frame`` with its partial L4 checksum finished, as ``skb_checksum_help`` does.

    The field at ``csum_start + csum_offset`` holds the pseudo-header sum and is summed
    as it is with the rest of ``frame[csum_start:]``; the complement goes in its place.
    A UDP checksum (``csum_offset`` 6) of 0 is sent as 0xFFFF (RFC 768: 0 means none).
    """
    at = csum_start + csum_offset
    if csum_start < 0 or csum_offset < 0 or at + 2 > len(frame):
        raise _bad(f"checksum field at {csum_start}+{csum_offset} beyond a {len(frame)}-byte frame")
    view = memoryview(frame)
    checksum = internet_checksum(view[csum_start:])
    if checksum == 0 and csum_offset == UDP_CSUM_OFFSET:
        checksum = 0xFFFF
    return b"".join((view[:at], _U16.pack(checksum), view[at + 2 :]))


# -- the header -----------------------------------------------------------------------------


def check_vnet_untrusted(vnet: bytes, frame_len: int) -> tuple[int, int, int, int, int, int]:
    """The unpacked header (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    if it is one a peer's TAP may have produced for a frame of ``frame_len`` bytes."""
    if len(vnet) != VNET_HDR_LEN:
        raise _bad(f"virtio-net header of {len(vnet)} bytes")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(vnet)
    if flags & ~(VNET_NEEDS_CSUM | VNET_DATA_VALID):
        raise _bad(f"flags {flags:#04x}")
    if frame_len > MAX_SUPER_FRAME:
        raise _bad(f"frame of {frame_len} bytes")
    if flags & VNET_NEEDS_CSUM:
        if csum_offset not in (UDP_CSUM_OFFSET, TCP_CSUM_OFFSET):
            raise _bad(f"checksum offset {csum_offset}")
        if csum_start < ETHERNET_HEADER_LEN or csum_start + csum_offset + 2 > frame_len:
            raise _bad(f"checksum at {csum_start}+{csum_offset} in a {frame_len}-byte frame")
    segmentation = gso_type & ~GSO_ECN
    if segmentation == GSO_NONE:
        if gso_type != GSO_NONE:
            raise _bad("ECN without TCP segmentation")
    else:
        if segmentation not in (GSO_TCPV4, GSO_TCPV6):
            raise _bad(f"segmentation type {gso_type:#04x}")
        if not flags & VNET_NEEDS_CSUM or csum_offset != TCP_CSUM_OFFSET:
            raise _bad("TCP segmentation without a partial TCP checksum")
        if gso_size < MIN_GSO_SIZE:
            raise _bad(f"segment size {gso_size}")
        if hdr_len > frame_len:
            raise _bad(f"header length {hdr_len} in a {frame_len}-byte frame")
    return flags, gso_type, hdr_len, gso_size, csum_start, csum_offset


# -- software fallback ----------------------------------------------------------------------


def software_segments(vnet: bytes, frame: bytes) -> list[bytes]:
    """Ordinary Ethernet frames for a TAP without offloads: the checksum finished and a
    TCP super-frame cut into segments of ``gso_size`` payload bytes (the last may be
    shorter; a super-frame with no more than that is one segment)."""
    flags, gso_type, _, gso_size, csum_start, csum_offset = check_vnet_untrusted(vnet, len(frame))
    if gso_type == GSO_NONE:
        if flags & VNET_NEEDS_CSUM:
            return [complete_checksum(frame, csum_start, csum_offset)]
        return [frame]
    return _segment_tcp(frame, gso_type & ~GSO_ECN == GSO_TCPV6, gso_size, csum_start)


def smaller_super_frames(vnet: bytes, frame: bytes, segments: int) -> list[bytes]:
    """A TCP super-frame cut into super-frames of at most ``segments`` segments each,
    every one behind its own virtio-net header, its TCP checksum left unfinished (the
    pseudo-header sum for its own length), as Linux would have handed them over with a
    GSO limit of that many segments. Cut up in turn, they give the very segments
    `software_segments` makes of the whole (IPv4 IDs included). Frames that are not TCP
    super-frames come back as they are."""
    flags, gso_type, _, mss, l4, _ = check_vnet_untrusted(vnet, len(frame))
    if gso_type == GSO_NONE:
        return [vnet + frame]
    if segments < 1:
        raise ValueError(f"pieces of {segments} segments")
    layout = _TcpLayout(frame, gso_type & ~GSO_ECN == GSO_TCPV6, mss, l4)
    pieces = layout.cut(mss * segments)
    if len(pieces) == 1:
        return [vnet + frame]
    head, payload_at = layout.head, layout.payload_at
    # hdr_len: the headers' length, as Linux fills it in (a hint; nothing here reads it)
    piece_vnet = VNET_HDR.pack(flags, gso_type, payload_at, mss, l4, TCP_CSUM_OFFSET)
    view = memoryview(frame)
    out = []
    for index, (at, size, seq, tcp_flags) in enumerate(pieces):
        header = head[:]
        layout.set_ip(header, index * segments, size)
        _U32.pack_into(header, l4 + 4, seq)
        header[l4 + 13] = tcp_flags
        _U16.pack_into(header, l4 + 16, _fold(layout.pseudo + payload_at - l4 + size))
        out.append(b"".join((piece_vnet, header, view[at : at + size])))
    return out


def _segment_tcp(frame: bytes, ipv6: bool, mss: int, l4: int) -> list[bytes]:
    """Cut a TCP super-frame whose TCP header is at ``l4`` (check_vnet_untrusted has
    placed l4 + 18 inside the frame) into segments with their checksums finished."""
    layout = _TcpLayout(frame, ipv6, mss, l4)
    head, payload_at = layout.head, layout.payload_at
    # A segment's sums include its lengths, so they are never 0 and fold safely.
    tcp_shared = layout.pseudo + _word_sum(head[l4:payload_at]) + (payload_at - l4)
    view = memoryview(frame)
    segments: list[bytes] = []
    for index, (at, size, seq, flags) in enumerate(layout.cut(mss)):
        payload = view[at : at + size]
        header = head[:]
        layout.set_ip(header, index, size)
        payload_sum = int.from_bytes(payload, "big")
        if size & 1:
            payload_sum <<= 8
        tcp_sum = tcp_shared + size + (seq >> 16) + (seq & 0xFFFF) + flags + payload_sum % 0xFFFF
        _U32.pack_into(header, l4 + 4, seq)
        header[l4 + 13] = flags
        _U16.pack_into(header, l4 + 16, 0xFFFF - _fold(tcp_sum))
        segments.append(b"".join((header, payload)))
    return segments


class _TcpLayout:
    """A TCP super-frame checked and taken apart once, for cutting it in pieces of some
    whole number of segments: the headers every piece shares, with the fields that
    differ zeroed, and the sums that do not change."""

    __slots__ = (
        "first_id",
        "first_seq",
        "frame_len",
        "head",
        "ip_len_before_payload",
        "ip_shared",
        "ipv6",
        "l3",
        "l4",
        "payload_at",
        "pseudo",
        "tcp_flags",
    )

    def __init__(self, frame: bytes, ipv6: bool, mss: int, l4: int) -> None:
        frame_len = len(frame)
        l3 = ETHERNET_HEADER_LEN
        if frame[12:14] == _VLAN_BYTES:
            l3 += VLAN_TAG_LEN
        if ipv6:
            if frame[l3 - 2 : l3] != _IPV6_BYTES or l4 < l3 + IPV6_HEADER_LEN or frame[l3] >> 4 != 6:
                raise _bad("TCPv6 segmentation of a frame that is not IPv6")
            header_has_destination = _ipv6_extensions_lead_to_tcp(frame, l3, l4)
            addresses = frame[l3 + 8 : l3 + 40]
            ip_fixed_len = IPV6_HEADER_LEN  # not counted in the payload length
        else:
            version_ihl = frame[l3]
            if (
                frame[l3 - 2 : l3] != _IPV4_BYTES
                or version_ihl >> 4 != 4
                or l3 + (version_ihl & 0x0F) * 4 != l4
            ):
                raise _bad("TCPv4 segmentation of a frame that is not IPv4 with TCP at the checksum start")
            if l4 - l3 < IPV4_HEADER_LEN or frame[l3 + 9] != IPPROTO_TCP:
                raise _bad("TCPv4 segmentation of an IPv4 header under 20 bytes or not TCP")
            if int.from_bytes(frame[l3 + 6 : l3 + 8], "big") & _IPV4_FRAGMENT_BITS:
                raise _bad("TCPv4 segmentation of an IPv4 fragment")
            header_has_destination = l4 - l3 == IPV4_HEADER_LEN  # no options, so no source route
            addresses = frame[l3 + 12 : l3 + 20]
            ip_fixed_len = 0
        if l4 + TCP_MIN_HEADER > frame_len:
            raise _bad("TCP header beyond the frame")
        payload_at = l4 + (frame[l4 + 12] >> 4) * 4
        if payload_at < l4 + TCP_MIN_HEADER or payload_at > frame_len:
            raise _bad(f"TCP data offset {frame[l4 + 12] >> 4}")
        ip_len_before_payload = payload_at - l3 - ip_fixed_len
        if ip_len_before_payload + min(frame_len - payload_at, mss) > 0xFFFF:
            raise _bad("segment longer than an IP packet")

        head = bytearray(frame[:payload_at])
        self.first_seq = int.from_bytes(frame[l4 + 4 : l4 + 8], "big")
        self.tcp_flags = frame[l4 + 13]
        partial = int.from_bytes(frame[l4 + 16 : l4 + 18], "big")
        head[l4 + 4 : l4 + 8] = bytes(4)
        head[l4 + 13] = 0
        head[l4 + 16 : l4 + 18] = bytes(2)
        # The pseudo-header without its length: addresses and protocol.
        if header_has_destination:
            self.pseudo = _word_sum(addresses) + IPPROTO_TCP
        else:
            self.pseudo = (partial - (frame_len - l4)) % 0xFFFF  # the sender's
        self.first_id = self.ip_shared = 0
        if not ipv6:
            self.first_id = int.from_bytes(frame[l3 + 4 : l3 + 6], "big")
            head[l3 + 2 : l3 + 6] = bytes(4)
            head[l3 + 10 : l3 + 12] = bytes(2)
            self.ip_shared = _word_sum(head[l3:l4])
        self.head, self.frame_len, self.ipv6 = head, frame_len, ipv6
        self.l3, self.l4, self.payload_at = l3, l4, payload_at
        self.ip_len_before_payload = ip_len_before_payload

    def cut(self, step: int) -> list[tuple[int, int, int, int]]:
        """``(payload offset, size, sequence number, TCP flags)`` of each piece of
        ``step`` payload bytes (the last may be shorter; no payload is one piece): FIN
        and PSH only on the last piece and CWR only on the first (RFC 9293 section 3.1,
        RFC 3168 section 6.1.2)."""
        payload_len = self.frame_len - self.payload_at
        count = max(1, -(-payload_len // step))
        flags = self.tcp_flags
        if count == 1:
            return [(self.payload_at, payload_len, self.first_seq, flags)]
        middle = flags & ~(TCP_FLAG_FIN | TCP_FLAG_PSH | TCP_FLAG_CWR)
        pieces = [(self.payload_at, step, self.first_seq, flags & ~(TCP_FLAG_FIN | TCP_FLAG_PSH))]
        for index in range(1, count):
            at = self.payload_at + index * step
            size = step if index < count - 1 else payload_len - index * step
            pieces.append((at, size, (self.first_seq + index * step) & 0xFFFFFFFF, middle))
        last_at, last_size, last_seq, _ = pieces[-1]
        pieces[-1] = (last_at, last_size, last_seq, flags & ~TCP_FLAG_CWR)
        return pieces

    def set_ip(self, header: bytearray, segment_index: int, size: int) -> None:
        """The IP length of a piece with ``size`` payload bytes and, for IPv4, the ID of
        the segment at ``segment_index`` (the super-frame's plus the index, mod 2**16,
        as Linux TSO numbers them) and the header checksum."""
        ip_len = self.ip_len_before_payload + size
        if self.ipv6:
            _U16.pack_into(header, self.l3 + 4, ip_len)
        else:
            ip_id = (self.first_id + segment_index) & 0xFFFF
            _U16_U16.pack_into(header, self.l3 + 2, ip_len, ip_id)
            _U16.pack_into(header, self.l3 + 10, 0xFFFF - _fold(self.ip_shared + ip_len + ip_id))


def _ipv6_extensions_lead_to_tcp(frame: bytes, l3: int, l4: int) -> bool:
    """Check that the IPv6 header chain reaches TCP exactly at ``l4`` through options
    and routing headers only; True if the header's destination is the final one."""
    next_header = frame[l3 + 6]
    at = l3 + IPV6_HEADER_LEN
    destination_is_final = True
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        if at >= l4:
            break
        if next_header not in _IPV6_SKIPPED_HEADERS:
            raise _bad(f"IPv6 next header {next_header} before TCP")
        if next_header == IPV6_ROUTING and frame[at + 3]:  # segments left: not there yet
            destination_is_final = False
        next_header = frame[at]
        at += (frame[at + 1] + 1) * 8
    if at != l4 or next_header != IPPROTO_TCP:
        raise _bad("IPv6 headers do not lead to TCP at the checksum start")
    return destination_is_final
