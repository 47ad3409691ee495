"""Ethernet helpers for the inside (TAP) hot path, and TCP MSS clamping.

Every frame read from ``naas0`` passes through here before it is switched: the
switch reads the destination MAC (``dst_mac``), learns the source (``src_mac``),
replicates group-addressed frames (``is_multicast``, the I/G bit of IEEE 802) and
looks at the EtherType to hand ARP and DHCP to their local responders
(``ethertype``, which looks through one IEEE 802.1Q tag).

The helpers take ``bytes`` and slice; they never copy a frame that they do not
change, and they do not raise on short frames (a short frame simply has no
EtherType, reported as 0). Frames are untagged or carry one 802.1Q tag:

    0      6      12          14 (or 18 when tagged)
    | dst  | src  | type/TPID | [TCI u16 | type] | payload ...

TCP MSS clamping (``clamp_tcp_mss``) keeps TCP inside the overlay MTU so that
nothing relies on ICMP "fragmentation needed" getting through (RFC 4459 section
3.2 calls this MSS clamping; RFC 879 / RFC 6691 define the MSS option). It runs
on every frame, so it bails out at the first test that fails - EtherType, IP
protocol, the SYN flag - and only a SYN with an oversized MSS is copied. The TCP
checksum is then updated incrementally (RFC 1624 equation 3) instead of being
recomputed over the whole segment.
"""

from __future__ import annotations

from naas.core.wire import ETHERNET_HEADER_LEN

# -- spec constants -----------------------------------------------------------------------

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q tag protocol identifier
ETHERTYPE_IPV6 = 0x86DD

MAC_LEN = 6
VLAN_TAG_LEN = 4

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FLAG_SYN = 0x02
TCP_OPTION_EOL = 0  # RFC 9293 section 3.2: end of option list
TCP_OPTION_NOP = 1  # no operation (padding)
TCP_OPTION_MSS = 2  # maximum segment size, length 4, value u16

_IPV4_BYTES = ETHERTYPE_IPV4.to_bytes(2, "big")
_VLAN_BYTES = ETHERTYPE_VLAN.to_bytes(2, "big")
_IPV4_MIN_HEADER = 20
_TCP_MIN_HEADER = 20
_TCP_CHECKSUM_OFFSET = 16


def dst_mac(frame: bytes) -> bytes:
    """The destination MAC (bytes 0..6)."""
    return frame[0:6]


def src_mac(frame: bytes) -> bytes:
    """The source MAC (bytes 6..12)."""
    return frame[6:12]


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (broadcast included): the I/G bit, bit 0 of byte 0."""
    return bool(mac[0] & 1)


def ethertype(frame: bytes) -> int:
    """The EtherType of the payload, looking through one 802.1Q tag; 0 if too short."""
    kind = int.from_bytes(frame[12:14], "big")
    if kind == ETHERTYPE_VLAN and len(frame) >= ETHERNET_HEADER_LEN + VLAN_TAG_LEN:
        return int.from_bytes(frame[16:18], "big")
    return kind


def header_length(frame: bytes) -> int:
    """Where the payload starts: 14, or 18 behind one 802.1Q tag."""
    if frame[12:14] == _VLAN_BYTES:
        return ETHERNET_HEADER_LEN + VLAN_TAG_LEN
    return ETHERNET_HEADER_LEN


def build_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """An untagged Ethernet II frame (no padding, no FCS: the TAP adds neither)."""
    if len(dst) != MAC_LEN or len(src) != MAC_LEN:
        raise ValueError("MAC addresses are 6 bytes")
    return dst + src + ethertype.to_bytes(2, "big") + payload


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (plus a partial sum ``initial``, e.g. a
    pseudo-header's). Verifying: the checksum of data that includes its checksum is 0.

    Uses 2**16 == 1 (mod 0xFFFF): the one's complement sum of the 16-bit words is the
    whole big-endian integer modulo 0xFFFF (read in C, no loop over words; an odd
    length is padded with a zero byte, a shift by 8), except that a non-zero sum is
    0xFFFF rather than 0.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    if initial:
        value += initial
    return 0xFFFF - (value % 0xFFFF or (0xFFFF if value else 0))


def _checksum_replace(checksum: int, old: int, new: int) -> int:
    """RFC 1624 equation 3: HC' = ~(~HC + ~m + m') in one's complement arithmetic."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def clamp_tcp_mss(frame: bytes, max_mss: int, *, checksum_partial: bool = False) -> bytes:
    """Lower the MSS option of an IPv4 TCP SYN (or SYN-ACK) to ``max_mss``.

    Returns a new frame only when the MSS was rewritten; any other frame (not IPv4
    TCP, not a SYN, no MSS option, MSS already small enough, malformed) comes back
    as the same object. ``checksum_partial`` is for frames whose TCP checksum is
    still to be completed by the kernel (virtio ``NEEDS_CSUM``): the field then holds
    only the pseudo-header sum, which the MSS does not enter, so it is left alone.
    """
    if not 0 <= max_mss <= 0xFFFF:
        raise ValueError(f"MSS out of range: {max_mss}")
    kind = frame[12:14]
    l3 = ETHERNET_HEADER_LEN
    if kind == _VLAN_BYTES:
        l3 += VLAN_TAG_LEN
        kind = frame[16:18]
    if kind != _IPV4_BYTES or len(frame) < l3 + _IPV4_MIN_HEADER:
        return frame
    if frame[l3 + 9] != IPPROTO_TCP or frame[l3] >> 4 != 4:
        return frame
    if (frame[l3 + 6] & 0x1F) or frame[l3 + 7]:
        return frame  # a non-first fragment: no TCP header here
    l4 = l3 + (frame[l3] & 0x0F) * 4
    end = min(len(frame), l3 + int.from_bytes(frame[l3 + 2 : l3 + 4], "big"))
    if end < l4 + _TCP_MIN_HEADER or l4 < l3 + _IPV4_MIN_HEADER:
        return frame
    if not frame[l4 + 13] & TCP_FLAG_SYN:
        return frame
    options_end = l4 + (frame[l4 + 12] >> 4) * 4
    if options_end > end:
        return frame
    at = l4 + _TCP_MIN_HEADER
    while at < options_end:
        option = frame[at]
        if option == TCP_OPTION_EOL:
            return frame
        if option == TCP_OPTION_NOP:
            at += 1
            continue
        if at + 1 >= options_end:
            return frame
        length = frame[at + 1]
        if length < 2 or at + length > options_end:
            return frame
        if option == TCP_OPTION_MSS and length == 4:
            return _rewrite_mss(frame, l4, at + 2, max_mss, checksum_partial)
        at += length
    return frame


def _rewrite_mss(frame: bytes, l4: int, value_at: int, max_mss: int, partial: bool) -> bytes:
    old = int.from_bytes(frame[value_at : value_at + 2], "big")
    if old <= max_mss:
        return frame
    out = bytearray(frame)
    out[value_at : value_at + 2] = max_mss.to_bytes(2, "big")
    if not partial:
        # A 16-bit field at an odd offset from the TCP header straddles two checksum
        # words: it adds in byte-swapped, and so does the update.
        if (value_at - l4) % 2:
            old_word, new_word = _swap16(old), _swap16(max_mss)
        else:
            old_word, new_word = old, max_mss
        at = l4 + _TCP_CHECKSUM_OFFSET
        checksum = int.from_bytes(frame[at : at + 2], "big")
        out[at : at + 2] = _checksum_replace(checksum, old_word, new_word).to_bytes(2, "big")
    return bytes(out)


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)
