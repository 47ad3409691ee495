"""The DHCP responder against client messages built byte by byte here.

The messages copy what busybox udhcpc puts on the wire (option order, client id
``01 + MAC``, max message size 576, its parameter request list, vendor class). Every
reply is taken apart independently of the module: IPv4 header checksum and UDP
checksum (with pseudo-header) are recomputed here.

    udhcpc on naas0 --DISCOVER--> responder --OFFER--> udhcpc --REQUEST--> ACK / NAK
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from naas.core.dhcp import DhcpRequest, DhcpResponder, MessageType, parse_dhcp_untrusted
from naas.core.wire import BadPacket, DropReason

CLIENT_MAC = bytes.fromhex("024e00000007")
OTHER_MAC = bytes.fromhex("525400aabbcc")
SERVER_MAC = bytes.fromhex("024e00000007")  # the host answers its own naas0
CLIENT_ADDR = IPv4Interface("172.32.0.7/16")
SERVER_IP = CLIENT_ADDR.ip
GATEWAY = IPv4Address("172.32.0.1")
BROADCAST_MAC = b"\xff" * 6
ZERO = IPv4Address(0)
ALL_ONES = IPv4Address("255.255.255.255")
COOKIE = bytes([99, 130, 83, 99])
XID = 0x3903F326
LEASE = 86400
UDHCPC_PARAMS = bytes([1, 3, 6, 12, 15, 28, 42, 51, 54, 119])


def checksum(data: bytes) -> int:
    """RFC 1071 the obvious way, independent of naas.core.ethernet."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    payload: bytes,
    src_ip: IPv4Address = ZERO,
    dst_ip: IPv4Address = ALL_ONES,
    dst_port: int = 67,
    src_mac: bytes = CLIENT_MAC,
    dst_mac: bytes = BROADCAST_MAC,
    fragment: int = 0,
    protocol: int = 17,
) -> bytes:
    udp = struct.pack("!HHHH", 68, dst_port, 8 + len(payload), 0) + payload
    pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, 17, len(udp))
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0x10, 20 + len(udp), 0, fragment, 64, protocol, 0,
        src_ip.packed, dst_ip.packed,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def bootp(
    options: list[tuple[int, bytes]],
    flags: int = 0,
    ciaddr: IPv4Address = ZERO,
    chaddr: bytes = CLIENT_MAC,
    op: int = 1,
    hlen: int = 6,
    sname: bytes = b"",
    file: bytes = b"",
    end: bytes = b"\xff",
) -> bytes:
    fixed = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", op, 1, hlen, 0, XID, 0, flags, ciaddr.packed,
        bytes(4), bytes(4), bytes(4), chaddr, sname, file,
    )  # fmt: skip
    body = b"".join(bytes((code, len(value))) + value for code, value in options)
    return fixed + COOKIE + body + end


def udhcpc_options(kind: int, *extra: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    return [
        (53, bytes([kind])),
        (61, b"\x01" + CLIENT_MAC),
        *extra,
        (57, struct.pack("!H", 576)),
        (55, UDHCPC_PARAMS),
        (60, b"udhcp 1.36.1"),
        (12, b"client7"),
    ]


def discover(flags: int = 0) -> bytes:
    return udp_frame(bootp(udhcpc_options(1), flags=flags))


def request_selecting(wanted: IPv4Address, server: IPv4Address = SERVER_IP) -> bytes:
    return udp_frame(bootp(udhcpc_options(3, (50, wanted.packed), (54, server.packed))))


@dataclass
class Reply:
    dst_mac: bytes
    src_mac: bytes
    src_ip: IPv4Address
    dst_ip: IPv4Address
    op: int
    xid: int
    flags: int
    ciaddr: IPv4Address
    yiaddr: IPv4Address
    siaddr: IPv4Address
    chaddr: bytes
    options: dict[int, bytes]
    bootp_len: int


def decode(frame: bytes) -> Reply:
    """Take a reply apart, checking both checksums and every length on the way."""
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    vihl, _, total, _, fragment, ttl, proto, _, src, dst = struct.unpack("!BBHHHBBH4s4s", ip)
    assert (vihl, proto, fragment) == (0x45, 17, 0) and ttl > 0
    assert checksum(ip) == 0, "IPv4 header checksum"
    assert total == len(frame) - 14
    udp = frame[34:]
    sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", udp)
    assert (sport, dport, ulen) == (67, 68, len(udp)) and ucsum != 0
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    assert checksum(pseudo + udp) == 0, "UDP checksum"
    msg = udp[8:]
    assert len(msg) >= 300
    op, htype, hlen, _, xid, _, flags, ci, yi, si, _, chaddr = struct.unpack_from("!BBBBIHH4s4s4s4s16s", msg)
    assert (htype, hlen) == (1, 6)
    assert msg[236:240] == COOKIE
    options: dict[int, bytes] = {}
    at = 240
    while msg[at] != 255:
        if msg[at] == 0:
            at += 1
            continue
        code, length = msg[at], msg[at + 1]
        options[code] = options.get(code, b"") + msg[at + 2 : at + 2 + length]
        at += 2 + length
    assert not any(msg[at + 1 :]), "only padding after END"
    return Reply(
        frame[0:6], frame[6:12], IPv4Address(src), IPv4Address(dst), op, xid, flags,
        IPv4Address(ci), IPv4Address(yi), IPv4Address(si), chaddr[:6], options, len(msg),
    )  # fmt: skip


def responder(**overrides: object) -> DhcpResponder:
    settings: dict[str, object] = {
        "server_mac": SERVER_MAC,
        "server_ip": SERVER_IP,
        "subnet": IPv4Network("172.32.0.0/16"),
        "lease_seconds": LEASE,
        "gateway": GATEWAY,
        "mtu": 1359,
        "domain": "mesh.example",
    }
    settings.update(overrides)
    return DhcpResponder(**settings)  # type: ignore[arg-type]


def exchange(frame: bytes, server: DhcpResponder | None = None) -> Reply | None:
    request = parse_dhcp_untrusted(frame)
    assert request is not None
    answer = (server or responder()).answer(request, CLIENT_MAC, CLIENT_ADDR)
    return None if answer is None else decode(answer)


def message_type(reply: Reply) -> MessageType:
    return MessageType(reply.options[53][0])


# -- the udhcpc conversation -----------------------------------------------------------------


def test_discover_is_parsed_like_udhcpc_sent_it() -> None:
    request = parse_dhcp_untrusted(discover())
    assert request is not None
    assert request.message_type is MessageType.DISCOVER
    assert (request.xid, request.chaddr, request.src_mac) == (XID, CLIENT_MAC, CLIENT_MAC)
    assert request.ciaddr == ZERO and not request.broadcast
    assert request.client_id == b"\x01" + CLIENT_MAC
    assert request.hostname == "client7"
    assert request.parameter_list == tuple(UDHCPC_PARAMS)
    assert request.requested_ip is None and request.server_id is None


def test_discover_gets_an_offer_of_the_enrolled_address() -> None:
    offer = exchange(discover())
    assert offer is not None
    assert message_type(offer) is MessageType.OFFER
    assert (offer.op, offer.xid, offer.chaddr) == (2, XID, CLIENT_MAC)
    assert offer.yiaddr == CLIENT_ADDR.ip
    assert offer.ciaddr == ZERO and offer.siaddr == ZERO
    assert (offer.dst_mac, offer.dst_ip) == (BROADCAST_MAC, ALL_ONES)  # no address yet
    assert (offer.src_mac, offer.src_ip) == (SERVER_MAC, SERVER_IP)
    opts = offer.options
    assert opts[54] == SERVER_IP.packed
    assert struct.unpack("!III", opts[51] + opts[58] + opts[59]) == (LEASE, LEASE // 2, 75600)
    assert opts[1] == bytes([255, 255, 0, 0])
    assert opts[28] == IPv4Address("172.32.255.255").packed
    assert opts[3] == GATEWAY.packed
    assert opts[26] == struct.pack("!H", 1359)
    assert opts[15] == b"mesh.example"
    assert opts[61] == b"\x01" + CLIENT_MAC  # RFC 6842 echo


def test_request_for_the_offered_address_is_acked() -> None:
    ack = exchange(request_selecting(CLIENT_ADDR.ip))
    assert ack is not None and message_type(ack) is MessageType.ACK
    assert ack.yiaddr == CLIENT_ADDR.ip
    assert ack.dst_ip == ALL_ONES
    assert struct.unpack("!I", ack.options[51]) == (LEASE,)


def test_request_for_another_address_is_nakked() -> None:
    nak = exchange(request_selecting(IPv4Address("172.32.9.9")))
    assert nak is not None and message_type(nak) is MessageType.NAK
    assert nak.yiaddr == ZERO and nak.ciaddr == ZERO
    assert (nak.dst_mac, nak.dst_ip) == (BROADCAST_MAC, ALL_ONES)
    assert nak.options[54] == SERVER_IP.packed
    assert not {51, 58, 59, 1, 3} & nak.options.keys()


def test_request_to_another_server_is_ignored() -> None:
    assert exchange(request_selecting(CLIENT_ADDR.ip, IPv4Address("172.32.0.2"))) is None


def test_selecting_without_requested_address_is_ignored() -> None:
    frame = udp_frame(bootp(udhcpc_options(3, (54, SERVER_IP.packed))))
    assert exchange(frame) is None


def test_init_reboot() -> None:
    ack = exchange(udp_frame(bootp(udhcpc_options(3, (50, CLIENT_ADDR.ip.packed)))))
    assert ack is not None and message_type(ack) is MessageType.ACK
    nak = exchange(udp_frame(bootp(udhcpc_options(3, (50, GATEWAY.packed)))))
    assert nak is not None and message_type(nak) is MessageType.NAK


def test_renewing_is_unicast_to_the_client() -> None:
    ip = CLIENT_ADDR.ip
    frame = udp_frame(bootp(udhcpc_options(3), ciaddr=ip), src_ip=ip, dst_ip=SERVER_IP)
    ack = exchange(frame)
    assert ack is not None and message_type(ack) is MessageType.ACK
    assert (ack.dst_mac, ack.dst_ip) == (CLIENT_MAC, ip)
    assert ack.ciaddr == ip and ack.yiaddr == ip


def test_rebinding_with_broadcast_flag_is_broadcast() -> None:
    ip = CLIENT_ADDR.ip
    ack = exchange(udp_frame(bootp(udhcpc_options(3), ciaddr=ip, flags=0x8000), src_ip=ip))
    assert ack is not None and message_type(ack) is MessageType.ACK
    assert (ack.dst_mac, ack.dst_ip, ack.flags) == (BROADCAST_MAC, ALL_ONES, 0x8000)
    stale = IPv4Address("172.32.1.1")
    nak = exchange(udp_frame(bootp(udhcpc_options(3), ciaddr=stale), src_ip=stale))
    assert nak is not None and message_type(nak) is MessageType.NAK


def test_request_naming_no_address_is_ignored() -> None:
    assert exchange(udp_frame(bootp(udhcpc_options(3)))) is None


def test_inform_gets_configuration_without_address_or_lease() -> None:
    ip = CLIENT_ADDR.ip
    ack = exchange(udp_frame(bootp([(53, b"\x08")], ciaddr=ip), src_ip=ip))
    assert ack is not None and message_type(ack) is MessageType.ACK
    assert ack.yiaddr == ZERO and ack.ciaddr == ip
    assert (ack.dst_mac, ack.dst_ip) == (CLIENT_MAC, ip)
    assert not {51, 58, 59} & ack.options.keys()
    assert ack.options[1] == bytes([255, 255, 0, 0]) and ack.options[3] == GATEWAY.packed


@pytest.mark.parametrize("kind", [4, 7])  # DECLINE, RELEASE
def test_release_and_decline_need_no_answer(kind: int) -> None:
    assert exchange(udp_frame(bootp(udhcpc_options(kind, (54, SERVER_IP.packed))))) is None


def test_not_ours_to_answer() -> None:
    request = parse_dhcp_untrusted(discover())
    assert request is not None
    assert responder().answer(request, CLIENT_MAC, None) is None
    assert responder().answer(request, OTHER_MAC, CLIENT_ADDR) is None  # a bridged VM


def test_optional_options_are_left_out() -> None:
    offer = exchange(discover(), responder(gateway=None, mtu=None, domain=None))
    assert offer is not None
    assert not {3, 26, 15} & offer.options.keys()
    assert offer.options[1] == bytes([255, 255, 0, 0])


def test_broadcast_flag_is_echoed() -> None:
    offer = exchange(discover(flags=0x8000))
    assert offer is not None and offer.flags == 0x8000 and offer.dst_ip == ALL_ONES


def test_responder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        responder(lease_seconds=0)
    with pytest.raises(ValueError):
        responder(mtu=40)
    request = parse_dhcp_untrusted(discover())
    assert request is not None
    with pytest.raises(ValueError):
        responder().answer(request, CLIENT_MAC, IPv4Interface("10.0.0.7/8"))


# -- parsing: what is not ours, what is broken -----------------------------------------------


def test_other_traffic_is_not_ours() -> None:
    payload = bootp(udhcpc_options(1))
    assert parse_dhcp_untrusted(udp_frame(payload, dst_port=53)) is None
    assert parse_dhcp_untrusted(udp_frame(payload, protocol=6)) is None
    assert parse_dhcp_untrusted(udp_frame(payload, fragment=0x0020)) is None  # later fragment
    tagged = discover()[:12] + b"\x81\x00\x00\x02" + discover()[12:]
    assert parse_dhcp_untrusted(tagged) is None
    assert parse_dhcp_untrusted(discover()[:12] + b"\x08\x06" + bytes(28)) is None
    assert parse_dhcp_untrusted(b"") is None
    assert parse_dhcp_untrusted(discover()[:30]) is None
    request = parse_dhcp_untrusted(discover())
    assert request is not None
    answer = responder().answer(request, CLIENT_MAC, CLIENT_ADDR)
    assert answer is not None and parse_dhcp_untrusted(answer) is None  # to port 68


def test_ethernet_padding_is_ignored() -> None:
    request = parse_dhcp_untrusted(discover() + bytes(20))
    assert request is not None and request.message_type is MessageType.DISCOVER


def test_overloaded_and_split_options() -> None:
    # Message type in the "file" field (option 52 = 1), client id split in two (RFC 3396).
    file = bytes((53, 1, 3, 50, 4)) + CLIENT_ADDR.ip.packed + b"\xff"
    payload = bootp([(52, b"\x01"), (61, b"\x01\x02\x4e"), (61, CLIENT_MAC[2:])], file=file)
    request = parse_dhcp_untrusted(udp_frame(payload))
    assert request is not None
    assert request.message_type is MessageType.REQUEST
    assert request.requested_ip == CLIENT_ADDR.ip
    assert request.client_id == b"\x01" + CLIENT_MAC


def test_long_client_id_is_echoed_split() -> None:
    long_id = bytes(range(200)) * 2
    chunks = [(61, long_id[:255]), (61, long_id[255:])]
    ack = exchange(udp_frame(bootp([(53, b"\x01"), *chunks])))
    assert ack is not None and ack.options[61] == long_id


def _replace(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value) :]


BOOTP_AT = 14 + 20 + 8


@pytest.mark.parametrize(
    "frame",
    [
        _replace(discover(), 14 + 2, struct.pack("!H", 2000)),  # IPv4 longer than frame
        _replace(discover(), 14 + 2, struct.pack("!H", 24)),  # IPv4 shorter than UDP header
        _replace(discover(), 34 + 4, struct.pack("!H", 4000)),  # UDP longer than IPv4
        _replace(discover(), 34 + 4, struct.pack("!H", 7)),  # UDP shorter than its header
        udp_frame(bootp(udhcpc_options(1))[:200]),  # BOOTP cut short
        udp_frame(bootp(udhcpc_options(1))[:236] + b"\x00\x00\x00\x00"),  # no magic cookie
        udp_frame(bootp([(53, b"\x01")], end=b"\x0c\x20abc")),  # option runs past the end
        udp_frame(bootp([(53, b"\x01")], end=b"\x0c")),  # option without its length
        udp_frame(bootp([(12, b"x")])),  # no message type
        udp_frame(bootp([(53, b"\x01\x01")])),  # message type of two bytes
        udp_frame(bootp([(53, b"\x0b")])),  # unknown message type
        udp_frame(bootp([(53, b"\x01"), (50, b"\x01\x02")])),  # short requested IP
        udp_frame(bootp(udhcpc_options(1), op=2)),  # a BOOTREPLY to the server port
        udp_frame(bootp(udhcpc_options(1), hlen=16)),  # not an Ethernet address
        udp_frame(bootp(udhcpc_options(1)), fragment=0x2000),  # first of several fragments
    ],
)
def test_malformed_requests_raise_bad_packet(frame: bytes) -> None:
    with pytest.raises(BadPacket) as caught:
        parse_dhcp_untrusted(frame)
    assert caught.value.reason is DropReason.BAD_FRAME


def test_fuzz_mutated_frames() -> None:
    rng = random.Random(2131)
    seeds = [
        discover(),
        request_selecting(CLIENT_ADDR.ip),
        udp_frame(bootp([(53, b"\x08")], ciaddr=CLIENT_ADDR.ip)),
    ]
    server = responder()
    outcomes = {"request": 0, "none": 0, "bad": 0}
    for _ in range(2000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 5)):
            # Mostly headers and options, where the checks are; sometimes anywhere.
            region = rng.choice([(12, BOOTP_AT), (BOOTP_AT, BOOTP_AT + 12), (278, len(frame))])
            frame[rng.randrange(*region)] = rng.randrange(256)
        if rng.random() < 0.25:
            del frame[rng.randrange(len(frame)) :]
        try:
            request = parse_dhcp_untrusted(bytes(frame))
        except BadPacket as error:
            assert error.reason is DropReason.BAD_FRAME
            outcomes["bad"] += 1
            continue
        if request is None:
            outcomes["none"] += 1
            continue
        assert isinstance(request, DhcpRequest)
        outcomes["request"] += 1
        answer = server.answer(request, request.chaddr, CLIENT_ADDR)
        if answer is not None:
            decode(answer)
    assert all(outcomes.values()), outcomes
