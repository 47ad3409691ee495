"""A DHCPv4 responder for ``naas0`` (RFC 2131, options from RFC 2132), pure.

In layer 3 mode each host answers the DHCP client on its own ``naas0`` with the
address the member was enrolled with (it is in the member's certificate), so DHCP
never crosses the mesh and there is no lease database: the "pool" has one address.

    client on naas0                     this host (inside, writes into the TAP)
    DHCPDISCOVER (broadcast)   ----->   parse_dhcp_untrusted -> answer
                               <-----   DHCPOFFER  yiaddr = enrolled address
    DHCPREQUEST  (broadcast)   ----->   requested IP == enrolled ? ACK : NAK
                               <-----   DHCPACK    (or DHCPNAK)
    ... at T1: DHCPREQUEST (unicast, ciaddr set) -> DHCPACK  (renewing)

A REQUEST is told apart by its fields (RFC 2131 section 4.3.2): SELECTING carries
a server identifier (54) and a requested IP (50); INIT-REBOOT only a requested IP;
RENEWING / REBINDING neither, with the address in ``ciaddr``. A SELECTING request
for another server is ignored. DHCPINFORM gets an ACK with configuration but no
address and no lease times (section 3.4). RELEASE and DECLINE need no answer: the
address is the member's for as long as its certificate says so.

Replies are full Ethernet frames (IPv4 header checksum, UDP checksum, ports 67 -> 68)
to be written into the TAP. Per the project's choice (simpler than section 4.1,
and every client accepts it), they are broadcast to ff:ff:ff:ff:ff:ff /
255.255.255.255 when the client set the BROADCAST flag or has no address yet
(``ciaddr`` 0), and a DHCPNAK always is; otherwise they are unicast to ``ciaddr``.
The server identifier is the host's own overlay address; the reply never leaves
the host, so it does not matter that the client has the same address.

Parsing (``parse_dhcp_untrusted``) returns None for anything that is not an
untagged IPv4/UDP datagram to port 67, so the switch carries on with it, and
raises ``BadPacket(BAD_FRAME)`` for a datagram to port 67 that is not a well-formed
BOOTREQUEST with a DHCP message type. The UDP checksum is not checked (frames from
a TAP with checksum offload may carry a partial one); option overload (52) and
split options (RFC 3396, concatenated) are understood.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from naas.core.ethernet import (
    ETHERTYPE_IPV4,
    IPPROTO_UDP,
    MAC_LEN,
    build_frame,
    internet_checksum,
)
from naas.core.wire import ETHERNET_HEADER_LEN, BadPacket, DropReason
from naas.model.ids import BROADCAST_MAC

# -- spec constants -----------------------------------------------------------------------

SERVER_PORT = 67
CLIENT_PORT = 68
BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000  # RFC 2131 figure 2: leftmost bit of "flags"
MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 section 3
MIN_BOOTP_LEN = 300  # RFC 1542 section 2.1: some relays and clients drop shorter
INFINITE_LEASE = 0xFFFF_FFFF
DEFAULT_TTL = 64

OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_HOSTNAME = 12
OPT_DOMAIN_NAME = 15
OPT_INTERFACE_MTU = 26
OPT_BROADCAST_ADDRESS = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_RENEWAL_TIME = 58  # T1
OPT_REBINDING_TIME = 59  # T2
OPT_CLIENT_ID = 61
OPT_END = 255


class MessageType(enum.IntEnum):
    """Option 53 values (RFC 2132 section 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


# -- layouts (network byte order) ---------------------------------------------------------

IPV4_HEADER = struct.Struct(
    "!B"  # version (4) and header length in 32-bit words
    "B"  # type of service
    "H"  # total length
    "H"  # identification
    "H"  # flags (3 bits) and fragment offset (13 bits)
    "B"  # time to live
    "B"  # protocol (17 = UDP)
    "H"  # header checksum
    "4s"  # source address
    "4s"  # destination address
)  # 20 bytes, no options
UDP_HEADER = struct.Struct("!HHHH")  # source port, destination port, length, checksum
UDP_PSEUDO_HEADER = struct.Struct("!4s4sBBH")  # source, destination, zero, protocol, length
BOOTP = struct.Struct(
    "!B"  # op: 1 = BOOTREQUEST, 2 = BOOTREPLY
    "B"  # htype: hardware address type (1 = Ethernet)
    "B"  # hlen: hardware address length (6)
    "B"  # hops: relay agents crossed
    "I"  # xid: transaction id chosen by the client
    "H"  # secs: seconds since the client began
    "H"  # flags: BROADCAST bit
    "4s"  # ciaddr: client address, when it has one
    "4s"  # yiaddr: "your" address, offered / acknowledged
    "4s"  # siaddr: next server (unused, 0)
    "4s"  # giaddr: relay agent (0 on naas0)
    "16s"  # chaddr: client hardware address, padded
    "64s"  # sname: server host name, or options when overloaded
    "128s"  # file: boot file name, or options when overloaded
)  # 236 bytes, then the magic cookie and the options

_IPV4_TYPE_BYTES = b"\x08\x00"
_ZERO_IP = IPv4Address(0)
_BROADCAST_IP = IPv4Address("255.255.255.255")
_OPTIONS_AT = BOOTP.size + len(MAGIC_COOKIE)
_FIXED_LENGTHS = {OPT_MESSAGE_TYPE: 1, OPT_REQUESTED_IP: 4, OPT_SERVER_ID: 4, OPT_OVERLOAD: 1}


@dataclass(frozen=True, slots=True)
class DhcpRequest:
    """A client message (BOOTREQUEST) as read from ``naas0``."""

    message_type: MessageType
    xid: int
    flags: int
    ciaddr: IPv4Address
    giaddr: IPv4Address
    chaddr: bytes  # the client's MAC (hlen is always 6 here)
    src_mac: bytes  # Ethernet source of the frame
    requested_ip: IPv4Address | None = None  # option 50
    server_id: IPv4Address | None = None  # option 54
    client_id: bytes | None = None  # option 61
    hostname: str | None = None  # option 12
    parameter_list: tuple[int, ...] = ()  # option 55

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


def parse_dhcp_untrusted(frame: bytes) -> DhcpRequest | None:
    """The DHCP request in an Ethernet frame, None if the frame is not to UDP port 67."""
    l3 = ETHERNET_HEADER_LEN
    if frame[12:14] != _IPV4_TYPE_BYTES or len(frame) < l3 + IPV4_HEADER.size:
        return None
    version_ihl, _, total, _, fragment, _, protocol, _, _, _ = IPV4_HEADER.unpack_from(frame, l3)
    l4 = l3 + (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or protocol != IPPROTO_UDP or fragment & 0x1FFF:
        return None
    if l4 < l3 + IPV4_HEADER.size or len(frame) < l4 + UDP_HEADER.size:
        return None
    _, dst_port, udp_length, _ = UDP_HEADER.unpack_from(frame, l4)
    if dst_port != SERVER_PORT:
        return None
    # From here on the datagram is ours: anything wrong with it is a bad frame.
    if fragment & 0x2000:
        raise BadPacket(DropReason.BAD_FRAME, "fragmented DHCP datagram")
    if total < l4 - l3 + UDP_HEADER.size or l3 + total > len(frame):
        raise BadPacket(DropReason.BAD_FRAME, f"IPv4 total length {total}")
    if udp_length < UDP_HEADER.size or l4 + udp_length > l3 + total:
        raise BadPacket(DropReason.BAD_FRAME, f"UDP length {udp_length}")
    return _parse_bootp(frame[l4 + UDP_HEADER.size : l4 + udp_length], frame[6:12])


def _parse_bootp(payload: bytes, src_mac: bytes) -> DhcpRequest:
    if len(payload) < _OPTIONS_AT:
        raise BadPacket(DropReason.BAD_FRAME, f"BOOTP message of {len(payload)} bytes")
    op, htype, hlen, _, xid, _, flags, ciaddr, _, _, giaddr, chaddr, sname, file = BOOTP.unpack_from(payload)
    if op != BOOTREQUEST:
        raise BadPacket(DropReason.BAD_FRAME, f"BOOTP op {op} to the server port")
    if htype != HTYPE_ETHERNET or hlen != MAC_LEN:
        raise BadPacket(DropReason.BAD_FRAME, f"hardware type {htype} length {hlen}")
    if payload[BOOTP.size : _OPTIONS_AT] != MAGIC_COOKIE:
        raise BadPacket(DropReason.BAD_FRAME, "no DHCP magic cookie")
    options: dict[int, bytes] = {}
    _parse_options(payload[_OPTIONS_AT:], options)
    overload = options.get(OPT_OVERLOAD, b"\x00")[0]
    if overload & 1:  # RFC 2132 section 9.3: file first, then sname
        _parse_options(file, options)
    if overload & 2:
        _parse_options(sname, options)
    kind = options.get(OPT_MESSAGE_TYPE)
    if kind is None:
        raise BadPacket(DropReason.BAD_FRAME, "no DHCP message type")
    try:
        message_type = MessageType(kind[0])
    except ValueError:
        raise BadPacket(DropReason.BAD_FRAME, f"DHCP message type {kind[0]}") from None
    requested = options.get(OPT_REQUESTED_IP)
    server_id = options.get(OPT_SERVER_ID)
    hostname = options.get(OPT_HOSTNAME)
    return DhcpRequest(
        message_type=message_type,
        xid=xid,
        flags=flags,
        ciaddr=IPv4Address(ciaddr),
        giaddr=IPv4Address(giaddr),
        chaddr=chaddr[:MAC_LEN],
        src_mac=bytes(src_mac),
        requested_ip=IPv4Address(requested) if requested is not None else None,
        server_id=IPv4Address(server_id) if server_id is not None else None,
        client_id=options.get(OPT_CLIENT_ID),
        hostname=(hostname.decode("utf-8", "replace").rstrip("\x00") if hostname is not None else None),
        parameter_list=tuple(options.get(OPT_PARAMETER_LIST, b"")),
    )


def _parse_options(data: bytes, into: dict[int, bytes]) -> None:
    """Read code/length/value options up to END; repeated codes are concatenated."""
    at = 0
    while at < len(data):
        code = data[at]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            at += 1
            continue
        if at + 1 >= len(data) or at + 2 + data[at + 1] > len(data):
            raise BadPacket(DropReason.BAD_FRAME, f"option {code} truncated")
        value = data[at + 2 : at + 2 + data[at + 1]]
        into[code] = into[code] + value if code in into else value
        expected = _FIXED_LENGTHS.get(code)
        if expected is not None and len(into[code]) != expected:
            raise BadPacket(DropReason.BAD_FRAME, f"option {code} of {len(into[code])} bytes")
        at += 2 + data[at + 1]


def _option(code: int, value: bytes) -> bytes:
    """One option; a value over 255 bytes is split into several (RFC 3396)."""
    out = b""
    for at in range(0, max(len(value), 1), 255):
        chunk = value[at : at + 255]
        out += bytes((code, len(chunk))) + chunk
    return out


class DhcpResponder:
    """Answers the DHCP client on ``naas0`` with the member's enrolled address."""

    def __init__(
        self,
        server_mac: bytes,
        server_ip: IPv4Address,
        subnet: IPv4Network,
        lease_seconds: int,
        gateway: IPv4Address | None,
        mtu: int | None,
        domain: str | None = None,
    ) -> None:
        if len(server_mac) != MAC_LEN:
            raise ValueError("MAC addresses are 6 bytes")
        if not 0 < lease_seconds <= INFINITE_LEASE:
            raise ValueError(f"lease out of range: {lease_seconds}")
        if mtu is not None and not 68 <= mtu <= 0xFFFF:  # RFC 2132 section 5.1: >= 68
            raise ValueError(f"MTU out of range: {mtu}")
        self.server_mac = server_mac
        self.server_ip = server_ip
        self.subnet = subnet
        server_id = _option(OPT_SERVER_ID, server_ip.packed)
        config = _option(OPT_SUBNET_MASK, subnet.netmask.packed)
        config += _option(OPT_BROADCAST_ADDRESS, subnet.broadcast_address.packed)
        if gateway is not None:
            config += _option(OPT_ROUTER, gateway.packed)
        if mtu is not None:
            config += _option(OPT_INTERFACE_MTU, mtu.to_bytes(2, "big"))
        if domain is not None:
            config += _option(OPT_DOMAIN_NAME, domain.encode("ascii"))
        lease = _option(OPT_LEASE_TIME, lease_seconds.to_bytes(4, "big"))
        if lease_seconds != INFINITE_LEASE:  # RFC 2131 section 4.4.5: T1 = 0.5, T2 = 0.875
            lease += _option(OPT_RENEWAL_TIME, (lease_seconds // 2).to_bytes(4, "big"))
            lease += _option(OPT_REBINDING_TIME, (lease_seconds * 7 // 8).to_bytes(4, "big"))
        # Options after the message type, precomputed once (RFC 2131 table 3).
        self._lease_options = server_id + lease + config  # OFFER, ACK
        self._inform_options = server_id + config  # ACK to INFORM: no lease times
        self._nak_options = server_id

    def answer(
        self, request: DhcpRequest, client_mac: bytes, client_ip: IPv4Interface | None
    ) -> bytes | None:
        """The reply frame to write into the TAP, or None when there is nothing to say.

        ``client_ip`` is the address enrolled for the member whose MAC is
        ``client_mac``; None (no such member) or a request from another hardware
        address means the request is not ours to answer.
        """
        if client_ip is None or request.chaddr != client_mac:
            return None
        if client_ip.ip not in self.subnet:
            raise ValueError(f"{client_ip} is outside {self.subnet}")
        kind = request.message_type
        address = client_ip.ip
        if kind == MessageType.DISCOVER:
            return self._reply(request, MessageType.OFFER, address, _ZERO_IP, self._lease_options)
        if kind == MessageType.INFORM:
            return self._reply(request, MessageType.ACK, _ZERO_IP, request.ciaddr, self._inform_options)
        if kind != MessageType.REQUEST:
            return None  # RELEASE, DECLINE, and server messages sent to port 67
        if request.server_id is not None:  # SELECTING
            if request.server_id != self.server_ip:
                return None  # the client chose another server
            if request.requested_ip is None:
                return None  # section 4.3.2: MUST carry the requested IP
            wanted = request.requested_ip
        elif request.requested_ip is not None:  # INIT-REBOOT
            if request.requested_ip is None:
                return None  # section 4.3.2: MUST carry the requested IP
            wanted = request.requested_ip
        elif request.ciaddr != _ZERO_IP:  # RENEWING or REBINDING
            wanted = request.ciaddr
        else:
            return None  # a REQUEST naming no address: malformed, ignore
        if wanted != address:
            return self._reply(request, MessageType.NAK, _ZERO_IP, _ZERO_IP, self._nak_options)
        return self._reply(request, MessageType.ACK, address, request.ciaddr, self._lease_options)

    def _reply(
        self,
        request: DhcpRequest,
        kind: MessageType,
        yiaddr: IPv4Address,
        ciaddr: IPv4Address,
        options: bytes,
    ) -> bytes:
        if request.client_id is not None:  # RFC 6842: echo the client identifier
            options += _option(OPT_CLIENT_ID, request.client_id)
        bootp = BOOTP.pack(
            BOOTREPLY,
            HTYPE_ETHERNET,
            MAC_LEN,
            0,
            request.xid,
            0,
            request.flags & FLAG_BROADCAST,
            ciaddr.packed,
            yiaddr.packed,
            bytes(4),
            request.giaddr.packed,
            request.chaddr,
            b"",
            b"",
        )
        bootp += MAGIC_COOKIE + bytes((OPT_MESSAGE_TYPE, 1, kind)) + options + b"\xff"
        bootp += bytes(max(0, MIN_BOOTP_LEN - len(bootp)))
        if kind == MessageType.NAK or request.broadcast or request.ciaddr == _ZERO_IP:
            dst_mac, dst_ip = BROADCAST_MAC, _BROADCAST_IP
        else:
            dst_mac, dst_ip = request.chaddr, request.ciaddr
        packet = _udp_ipv4(self.server_ip, dst_ip, SERVER_PORT, CLIENT_PORT, bootp)
        return build_frame(dst_mac, self.server_mac, ETHERTYPE_IPV4, packet)


def _udp_ipv4(src: IPv4Address, dst: IPv4Address, src_port: int, dst_port: int, payload: bytes) -> bytes:
    """An IPv4 packet (no options, DF clear) carrying one UDP datagram, checksums set."""
    udp_length = UDP_HEADER.size + len(payload)
    pseudo = UDP_PSEUDO_HEADER.pack(src.packed, dst.packed, 0, IPPROTO_UDP, udp_length)
    udp = UDP_HEADER.pack(src_port, dst_port, udp_length, 0) + payload
    checksum = internet_checksum(pseudo + udp) or 0xFFFF  # RFC 768: 0 means "none"
    udp = udp[:6] + checksum.to_bytes(2, "big") + udp[8:]
    total = IPV4_HEADER.size + udp_length
    header = IPV4_HEADER.pack(0x45, 0, total, 0, 0, DEFAULT_TTL, IPPROTO_UDP, 0, src.packed, dst.packed)
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp
