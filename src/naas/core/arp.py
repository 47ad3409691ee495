"""ARP for Ethernet and IPv4 (RFC 826), answered locally in layer 3 mode.

Each member's overlay MAC and IP are in its certificate, so every host already knows
the answer to "who has 172.32.0.7?" for every member. The switch hands an ARP
request from ``naas0`` to ``parse_arp_untrusted``; if the target is a known member it
writes ``build_arp_reply`` back into the TAP instead of flooding the request over the
mesh. Requests for unknown addresses (bridged VMs, addresses configured by hand) are
switched as usual. ``build_gratuitous_arp`` announces an address (RFC 5227 section
2.3, an ARP announcement: a broadcast request whose sender and target IP are both
the announced address), e.g. after a member moved.

Only untagged frames are parsed: an ARP inside an 802.1Q tag belongs to a VLAN that
the overlay address does not live on, so it raises ``BadPacket`` here and the caller
should switch it (dispatch on ``frame[12:14]``, not on ``ethernet.ethertype``).
Ethernet padding after the 28-byte ARP body is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from naas.core.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, MAC_LEN, build_frame
from naas.core.wire import ARP_BODY, ETHERNET_HEADER_LEN, BadPacket, DropReason
from naas.model.ids import BROADCAST_MAC

# -- spec constants -----------------------------------------------------------------------

HTYPE_ETHERNET = 1  # hardware type: Ethernet (10Mb)
OP_REQUEST = 1
OP_REPLY = 2

_ARP_TYPE_BYTES = ETHERTYPE_ARP.to_bytes(2, "big")
_ZERO_MAC = bytes(MAC_LEN)


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """One Ethernet/IPv4 ARP message (any operation; requests are ``OP_REQUEST``)."""

    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    @property
    def is_request(self) -> bool:
        return self.op == OP_REQUEST


def parse_arp_untrusted(frame: bytes) -> ArpPacket:
    """Parse an untagged Ethernet frame carrying ARP; raise ``BadPacket`` otherwise."""
    if len(frame) < ETHERNET_HEADER_LEN + ARP_BODY.size:
        raise BadPacket(DropReason.BAD_FRAME, f"ARP frame of {len(frame)} bytes")
    if frame[12:14] != _ARP_TYPE_BYTES:
        raise BadPacket(DropReason.BAD_FRAME, "not an untagged ARP frame")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP_BODY.unpack_from(frame, ETHERNET_HEADER_LEN)
    if htype != HTYPE_ETHERNET or ptype != ETHERTYPE_IPV4:
        raise BadPacket(DropReason.BAD_FRAME, f"ARP hardware {htype} protocol {ptype:#06x}")
    if hlen != MAC_LEN or plen != 4:
        raise BadPacket(DropReason.BAD_FRAME, f"ARP address lengths {hlen}/{plen}")
    return ArpPacket(op, sha, IPv4Address(spa), tha, IPv4Address(tpa))


def _pack_arp(op: int, sha: bytes, spa: IPv4Address, tha: bytes, tpa: IPv4Address) -> bytes:
    return ARP_BODY.pack(HTYPE_ETHERNET, ETHERTYPE_IPV4, MAC_LEN, 4, op, sha, int(spa), tha, int(tpa))


def build_arp_reply(request: ArpPacket, answer_mac: bytes) -> bytes:
    """The Ethernet frame answering ``request``: "target_ip is at answer_mac".

    Addressed (Ethernet and ARP) to the requester's sender MAC and IP; this also
    answers an RFC 5227 probe (sender IP 0.0.0.0), which is how the prober learns that
    the address is taken.
    """
    if request.op != OP_REQUEST:
        raise ValueError(f"not an ARP request: op {request.op}")
    if len(answer_mac) != MAC_LEN:
        raise ValueError("MAC addresses are 6 bytes")
    body = _pack_arp(OP_REPLY, answer_mac, request.target_ip, request.sender_mac, request.sender_ip)
    return build_frame(request.sender_mac, answer_mac, ETHERTYPE_ARP, body)


def build_gratuitous_arp(mac: bytes, ip: IPv4Address) -> bytes:
    """A broadcast ARP announcement of ``ip`` at ``mac`` (RFC 5227 section 2.3)."""
    if len(mac) != MAC_LEN:
        raise ValueError("MAC addresses are 6 bytes")
    body = _pack_arp(OP_REQUEST, mac, ip, _ZERO_MAC, ip)
    return build_frame(BROADCAST_MAC, mac, ETHERTYPE_ARP, body)
