"""Binary formats of the mesh (UDP) protocol; see docs/protocol.md.

Every datagram starts with the same 12-byte outer header, the only part a relay
reads: it forwards on ``dst_node`` and decrements ``hop_limit`` without decrypting.

    0      1         2        4           8           12
    | type | hop_lim | flags  | dst_node  | src_node  | type-specific ...

    INITIATION (1): sender_index u32 | Noise IK message 1 | mac1 (16) | mac2 (16)
    RESPONSE   (2): sender_index u32 | receiver_index u32 | Noise IK message 2
    DATA       (3): receiver_index u32 | counter u64 | AEAD(inner) incl. 16-byte tag
    FRAGMENT   (4): receiver_index u32 | counter u64 | index u8 | count u8 | piece
                    (one of ``count`` pieces of an AEAD(inner) too big for one datagram;
                    see core/fragments.py)
    COOKIE_REPLY (5): receiver_index u32 | nonce (12) | sealed cookie (16 + 16)
                    (the answer of a responder under load to an initiation without a
                    valid mac2; see core/cookie.py)

The AEAD additional data of a DATA packet, and of a FRAGMENT message, is bytes 2..24
(flags, dst, src, receiver index, counter): every header byte but the type and the hop
limit, which a relay rewrites. The type need not be: DATA and FRAGMENT seal the same
way, and handshakes are never opened as either.
The decrypted ``inner`` starts with one kind byte: KEEPALIVE (empty), FRAME (an
Ethernet frame), CONTROL (a JSON control message, see core/control_messages.py) or
OFFLOAD_FRAME (a 10-byte virtio-net header, then an Ethernet frame whose checksum or TCP
segmentation is still to be done: see core/offload.py).

Parsers of bytes from the network end in ``_untrusted`` and raise ``BadPacket``
carrying a ``DropReason``; callers turn it into a counted drop.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

# -- protocol constants -----------------------------------------------------------------

PROTOCOL_NAME = b"Noise_IK_25519_AESGCM_SHA256"
# + network name: peers of other networks, or of another protocol version, fail the handshake.
# naas/2 added FRAGMENT datagrams and OFFLOAD_FRAME inners; naas/3 the MACs of
# initiations and COOKIE_REPLY datagrams (core/cookie.py); naas/4 the network document
# (the ``doc`` control message, node 0 in member digests: core/network_document.py).
PROLOGUE_PREFIX = b"naas/4 "

TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
TYPE_FRAGMENT = 4
TYPE_COOKIE_REPLY = 5

INNER_KEEPALIVE = 0
INNER_FRAME = 1
INNER_CONTROL = 2
INNER_OFFLOAD_FRAME = 3

DEFAULT_HOP_LIMIT = 8

# -- layouts (network byte order) ----------------------------------------------------------

OUTER = struct.Struct("!BBHII")  # type, hop limit, flags (0), destination node, source node
INITIATION_HEAD = struct.Struct("!I")  # sender index
RESPONSE_HEAD = struct.Struct("!II")  # sender index, receiver index
DATA_HEAD = struct.Struct("!IQ")  # receiver index, counter (also the AEAD nonce)
SEALED_HEADER = struct.Struct("!BBHIIIQ")  # OUTER then DATA_HEAD: DATA and FRAGMENT headers
HANDSHAKE_TIMESTAMP = struct.Struct("!Q")  # initiation payload prefix: wall clock, ms
COOKIE_REPLY_HEAD = struct.Struct("!I")  # receiver index (the initiation's sender index)

NOISE_KEY_LEN = 32
NOISE_TAG_LEN = 16
AEAD_TAG_LEN = 16
INITIATION_NOISE_MIN = NOISE_KEY_LEN + (NOISE_KEY_LEN + NOISE_TAG_LEN) + NOISE_TAG_LEN
MAC_LEN = 16  # mac1 and mac2 of an initiation (core/cookie.py)
COOKIE_NONCE_LEN = 12
COOKIE_REPLY_LEN = OUTER.size + COOKIE_REPLY_HEAD.size + COOKIE_NONCE_LEN + MAC_LEN + AEAD_TAG_LEN  # 60
RESPONSE_NOISE_MIN = NOISE_KEY_LEN + NOISE_TAG_LEN
DATA_HEADER_LEN = OUTER.size + DATA_HEAD.size  # 24
INITIATION_MIN = OUTER.size + INITIATION_HEAD.size + INITIATION_NOISE_MIN + 2 * MAC_LEN  # 144
assert SEALED_HEADER.size == DATA_HEADER_LEN
DATA_AAD_SLICE = slice(2, DATA_HEADER_LEN)
# Bytes a DATA packet adds to an Ethernet frame: header, inner kind byte, AEAD tag.
DATA_OVERHEAD = DATA_HEADER_LEN + 1 + AEAD_TAG_LEN  # 41
UDP_HEADER_LEN = 8
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
ETHERNET_HEADER_LEN = 14
MAX_DATAGRAM = 65535

# -- inner frame layouts (network byte order) ----------------------------------------------
# What a FRAME inner carries: an Ethernet frame from a member's naas0, read by the
# firewall's flow parser (core/flow.py). Fields the data path never reads are pad bytes
# ("x"), so that unpacking them allocates nothing.

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q customer tag (C-tag) protocol identifier
ETHERTYPE_QINQ = 0x88A8  # IEEE 802.1ad service tag (S-tag) protocol identifier
ETHERTYPE_IPV6 = 0x86DD

ETHERNET_HEADER = struct.Struct(
    "!6s"  # destination MAC
    "6s"  # source MAC
    "H"  # EtherType, or the TPID of an 802.1Q / 802.1ad tag
)  # 14 bytes
VLAN_TAG = struct.Struct(
    "!H"  # TCI: priority (3 bits), drop eligible (1), VLAN id (12)
    "H"  # the EtherType (or next TPID) it encloses
)  # 4 bytes, after the TPID that announced it
IPV4_HEADER = struct.Struct(
    "!B"  # version (4 bits, 4) and IHL (4 bits, header length in 32-bit words, >= 5)
    "B"  # TOS: DSCP and ECN
    "H"  # total length: header and payload, bytes
    "H"  # identification
    "H"  # flags (3 bits: reserved, DF, MF) and fragment offset (13 bits, 8-byte units)
    "B"  # TTL
    "B"  # protocol (6 TCP, 17 UDP, 1 ICMP)
    "H"  # header checksum
    "I"  # source address
    "I"  # destination address
)  # 20 bytes, then options up to IHL * 4 (RFC 791 section 3.1)
TCP_HEADER = struct.Struct(
    "!H"  # source port
    "H"  # destination port
    "8x"  # sequence and acknowledgment numbers (not read)
    "B"  # data offset (4 bits, header length in 32-bit words, >= 5) and reserved bits
    "B"  # flags: CWR ECE URG ACK PSH RST SYN FIN
    "6x"  # window, checksum, urgent pointer (not read)
)  # 20 bytes, then options up to data offset * 4 (RFC 9293 section 3.1)
UDP_HEADER = struct.Struct(
    "!H"  # source port
    "H"  # destination port
    "H"  # length: header and payload, bytes (>= 8)
    "2x"  # checksum (not read)
)  # 8 bytes (RFC 768)
ICMP_HEADER = struct.Struct(
    "!B"  # type
    "B"  # code
    "H"  # checksum
    "H"  # identifier (echo, RFC 792); unused in errors
    "H"  # sequence number (echo); unused in errors
)  # 8 bytes; an error is followed by the offending datagram's header and 8 bytes
ARP_BODY = struct.Struct(
    "!H"  # hardware type (1 = Ethernet)
    "H"  # protocol type (0x0800 = IPv4)
    "B"  # hardware address length (6)
    "B"  # protocol address length (4)
    "H"  # operation (1 = request, 2 = reply)
    "6s"  # sender hardware address
    "I"  # sender protocol address
    "6s"  # target hardware address
    "I"  # target protocol address
)  # 28 bytes (RFC 826, Ethernet and IPv4)
IPV6_FLOW = struct.Struct(
    "!B"  # version (4 bits, 6) and the high bits of the traffic class
    "3x"  # the rest of the traffic class, flow label
    "H"  # payload length: what follows this 40-byte header, bytes
    "B"  # next header (58: ICMPv6)
    "x"  # hop limit
)  # 8 bytes of the 40: the addresses are not read (RFC 8200 section 3)
# The fields of IPV4_HEADER that the flow parser reads, the others skipped; and the same
# behind an untagged Ethernet header, to read the common frame's two headers in one call.
_IPV4_FLOW_FIELDS = (
    "B"  # version and IHL
    "x"  # TOS
    "H"  # total length
    "2x"  # identification
    "H"  # flags and fragment offset
    "x"  # TTL
    "B"  # protocol
    "2x"  # header checksum
    "I"  # source address
    "I"  # destination address
)
# The connection table's key of the commonest frame in one call (core/flow.py fast_key):
# an untagged Ethernet header, a 20-byte IPv4 header and the first 14 bytes after it.
COMMON_FLOW = struct.Struct(
    "!12x"  # destination and source MAC (read by port security apart)
    "H"  # EtherType
    "B"  # IPv4 version and IHL (0x45: no options)
    "5x"  # TOS, total length, identification
    "H"  # flags and fragment offset
    "x"  # TTL
    "B"  # protocol
    "2x"  # header checksum
    "I"  # source address
    "I"  # destination address
    "H"  # TCP/UDP source port; ICMP type and code
    "H"  # TCP/UDP destination port; ICMP checksum
    "H"  # TCP sequence number's high half; ICMP echo identifier
    "7x"  # the rest of the sequence and acknowledgment numbers; echo sequence ...
    "B"  # TCP flags (after the data offset byte)
)  # 48 bytes
IPV4_FLOW = struct.Struct("!" + _IPV4_FLOW_FIELDS)  # 20 bytes
ETHERNET_IPV4_FLOW = struct.Struct("!6s6sH" + _IPV4_FLOW_FIELDS)  # ETHERNET_HEADER, IPV4_FLOW: 34 bytes
assert ETHERNET_HEADER.size == ETHERNET_HEADER_LEN

# -- field positions, for the data path's per-frame tests ------------------------------------
# The data path compares a few header bytes per frame and per datagram; a slice of the
# bytes is several times cheaper than an unpack, so it slices at these positions, which
# are those of the layouts above (checked below).


def shifted(field: slice, by: int) -> slice:
    """``field`` in a buffer where the header starts ``by`` bytes in (an inner's kind
    byte, a virtio-net header)."""
    return slice(field.start + by, field.stop + by)


FRAME_AT = 1  # an inner FRAME's Ethernet frame starts after its kind byte
OUTER_TYPE = 0  # OUTER: the type byte
OUTER_HOP_LIMIT = 1
OUTER_FLAGS = slice(2, 4)
OUTER_DST_NODE = slice(4, 8)
OUTER_SRC_NODE = slice(8, 12)
OUTER_FIXED = slice(0, 4)  # type, hop limit, flags: what a plain DATA datagram starts with
ETH_DST = slice(0, 6)
ETH_SRC = slice(6, 12)
ETH_TYPE = slice(12, 14)  # under no VLAN tag
ETH_GROUP_BYTE = 0  # the destination MAC's first byte: its lowest bit is the group (I/G) bit
ETH_DST_PREFIX = slice(0, 2)  # a member MAC's 02:4e (model/ids.py) ...
ETH_DST_NODE = slice(2, 6)  # ... and its node id
ETH_SRC_PREFIX = slice(6, 8)
IPV4_PROTOCOL = ETHERNET_HEADER_LEN + 9  # the protocol byte of an untagged IPv4 frame
assert struct.calcsize("!BBH") == OUTER_DST_NODE.start and struct.calcsize("!BBHI") == OUTER_SRC_NODE.start
assert struct.calcsize("!6s6s") == ETH_TYPE.start
assert ETHERNET_HEADER_LEN + struct.calcsize("!BBHHHB") == IPV4_PROTOCOL
assert IPV4_HEADER.size == IPV4_FLOW.size == IPV4_HEADER_LEN
assert ETHERNET_IPV4_FLOW.size == ETHERNET_HEADER_LEN + IPV4_HEADER_LEN
assert COMMON_FLOW.size == ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + 14
assert UDP_HEADER.size == UDP_HEADER_LEN


def overlay_mtu(underlay_mtu: int, ipv6_underlay: bool = False) -> int:
    """The naas0 MTU that fits one overlay frame in one underlay packet, exactly."""
    ip_header = IPV6_HEADER_LEN if ipv6_underlay else IPV4_HEADER_LEN
    return underlay_mtu - ip_header - UDP_HEADER_LEN - DATA_OVERHEAD - ETHERNET_HEADER_LEN


class DropReason(enum.Enum):
    """Why a datagram or frame was dropped; each has a counter in ``naas status``."""

    TOO_SHORT = "too_short"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FLAGS = "bad_flags"
    WRONG_DESTINATION = "wrong_destination"
    HOP_LIMIT_EXCEEDED = "hop_limit_exceeded"
    UNKNOWN_SENDER = "unknown_sender"
    HANDSHAKE_FAILED = "handshake_failed"
    BAD_CERTIFICATE = "bad_certificate"
    STALE_INITIATION = "stale_initiation"
    UNKNOWN_INDEX = "unknown_index"
    DECRYPT_FAILED = "decrypt_failed"
    REPLAYED = "replayed"
    SESSION_EXPIRED = "session_expired"
    BAD_INNER = "bad_inner"
    BAD_CONTROL = "bad_control"
    NO_ROUTE = "no_route"
    QUEUE_FULL = "queue_full"
    BAD_FRAME = "bad_frame"
    FRAME_TOO_BIG = "frame_too_big"
    BAD_OFFLOAD = "bad_offload"  # a virtio-net header (checksum or segmentation) not fitting its frame
    BAD_FRAGMENT = "bad_fragment"  # a FRAGMENT datagram whose index, count or size does not add up
    FRAGMENTS_INCOMPLETE = "fragments_incomplete"  # a fragmented message given up before it was whole
    BAD_MAC = "bad_mac"  # an initiation whose mac1 does not hold (core/cookie.py)
    COOKIE_REQUIRED = "cookie_required"  # under load, an initiation without a valid mac2: a cookie went back
    RATE_LIMITED = "rate_limited"  # an initiation past its host's rate while under load
    HANDSHAKE_BUSY = "handshake_busy"  # an initiation past the handshakes one batch may take
    BAD_COOKIE_REPLY = "bad_cookie_reply"  # a COOKIE_REPLY of the wrong size, or that does not open
    REVOKED = "revoked"  # a handshake or a relayed datagram of a member the network document revoked
    BAD_DOCUMENT = "bad_document"  # a network document that does not parse, or whose signature fails
    SPOOFED_SOURCE = "spoofed_source"  # a frame whose source MAC or IPv4 is not its sender's
    POLICY_DENIED = "policy_denied"  # a frame the policy does not allow from its sender (core/firewall.py)


class BadPacket(Exception):
    """Untrusted input that does not parse; always caught at the edge and counted."""

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Initiation:
    src_node: int
    sender_index: int
    noise_message: bytes


@dataclass(frozen=True, slots=True)
class Response:
    src_node: int
    sender_index: int
    receiver_index: int
    noise_message: bytes


def pack_initiation(dst: int, src: int, sender_index: int, noise_message: bytes) -> bytes:
    """An INITIATION with both MACs zero: core/cookie.py fills them in."""
    return (
        OUTER.pack(TYPE_INITIATION, DEFAULT_HOP_LIMIT, 0, dst, src)
        + INITIATION_HEAD.pack(sender_index)
        + noise_message
        + bytes(2 * MAC_LEN)
    )


def parse_initiation_untrusted(datagram: bytes) -> Initiation:
    start = OUTER.size + INITIATION_HEAD.size
    if len(datagram) < INITIATION_MIN:
        raise BadPacket(DropReason.TOO_SHORT, "initiation")
    (sender_index,) = INITIATION_HEAD.unpack_from(datagram, OUTER.size)
    _, _, _, _, src = OUTER.unpack_from(datagram)
    return Initiation(src, sender_index, bytes(datagram[start : len(datagram) - 2 * MAC_LEN]))


@dataclass(frozen=True, slots=True)
class CookieReply:
    src_node: int
    receiver_index: int
    body: bytes  # nonce | sealed cookie (core/cookie.py opens it)


def pack_cookie_reply(dst: int, src: int, receiver_index: int, body: bytes) -> bytes:
    outer = OUTER.pack(TYPE_COOKIE_REPLY, DEFAULT_HOP_LIMIT, 0, dst, src)
    return outer + COOKIE_REPLY_HEAD.pack(receiver_index) + body


def parse_cookie_reply_untrusted(datagram: bytes) -> CookieReply:
    if len(datagram) != COOKIE_REPLY_LEN:
        raise BadPacket(DropReason.BAD_COOKIE_REPLY, f"{len(datagram)} bytes")
    (receiver_index,) = COOKIE_REPLY_HEAD.unpack_from(datagram, OUTER.size)
    _, _, _, _, src = OUTER.unpack_from(datagram)
    return CookieReply(src, receiver_index, bytes(datagram[OUTER.size + COOKIE_REPLY_HEAD.size :]))


def pack_response(dst: int, src: int, sender_index: int, receiver_index: int, noise_message: bytes) -> bytes:
    return (
        OUTER.pack(TYPE_RESPONSE, DEFAULT_HOP_LIMIT, 0, dst, src)
        + RESPONSE_HEAD.pack(sender_index, receiver_index)
        + noise_message
    )


def parse_response_untrusted(datagram: bytes) -> Response:
    start = OUTER.size + RESPONSE_HEAD.size
    if len(datagram) < start + RESPONSE_NOISE_MIN:
        raise BadPacket(DropReason.TOO_SHORT, "response")
    sender_index, receiver_index = RESPONSE_HEAD.unpack_from(datagram, OUTER.size)
    _, _, _, _, src = OUTER.unpack_from(datagram)
    return Response(src, sender_index, receiver_index, bytes(datagram[start:]))


def with_hop_limit(datagram: bytes, hop_limit: int) -> bytes:
    """The same datagram with a new hop limit (what a relay rewrites)."""
    return datagram[:1] + bytes((hop_limit,)) + datagram[2:]
