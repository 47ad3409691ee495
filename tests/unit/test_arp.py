"""ARP parsing and local answers, with frames built by hand the way a kernel sends them."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest

from naas.core.arp import (
    OP_REPLY,
    OP_REQUEST,
    ArpPacket,
    build_arp_reply,
    build_gratuitous_arp,
    parse_arp_untrusted,
)
from naas.core.wire import BadPacket, DropReason

ASKER_MAC = bytes.fromhex("024e00000001")
MEMBER_MAC = bytes.fromhex("024e00000007")
ASKER_IP = IPv4Address("172.32.0.1")
MEMBER_IP = IPv4Address("172.32.0.7")
BROADCAST = b"\xff" * 6


def arp_frame(
    op: int = 1,
    sha: bytes = ASKER_MAC,
    spa: IPv4Address = ASKER_IP,
    tha: bytes = bytes(6),
    tpa: IPv4Address = MEMBER_IP,
    htype: int = 1,
    ptype: int = 0x0800,
    hlen: int = 6,
    plen: int = 4,
    dst: bytes = BROADCAST,
    pad: bool = True,
) -> bytes:
    body = struct.pack("!HHBBH", htype, ptype, hlen, plen, op)
    body += sha + spa.packed + tha + tpa.packed
    frame = dst + sha + b"\x08\x06" + body
    if pad:  # the minimum Ethernet frame is 60 bytes without FCS: 18 bytes of padding
        frame += bytes(60 - len(frame))
    return frame


def test_parse_request() -> None:
    frame = arp_frame()
    assert len(frame) == 60
    packet = parse_arp_untrusted(frame)
    assert packet == ArpPacket(OP_REQUEST, ASKER_MAC, ASKER_IP, bytes(6), MEMBER_IP)
    assert packet.is_request
    assert parse_arp_untrusted(arp_frame(pad=False)) == packet


def test_reply_answers_the_requester() -> None:
    request = parse_arp_untrusted(arp_frame())
    reply = build_arp_reply(request, MEMBER_MAC)
    assert reply[0:6] == ASKER_MAC  # Ethernet destination: the requester
    assert reply[6:12] == MEMBER_MAC
    assert reply[12:14] == b"\x08\x06"
    assert reply[14:22] == bytes.fromhex("0001080006040002")  # Ethernet/IPv4, 6/4, reply
    assert reply[22:28] == MEMBER_MAC and reply[28:32] == MEMBER_IP.packed
    assert reply[32:38] == ASKER_MAC and reply[38:42] == ASKER_IP.packed
    assert len(reply) == 42
    parsed = parse_arp_untrusted(reply)
    assert parsed == ArpPacket(OP_REPLY, MEMBER_MAC, MEMBER_IP, ASKER_MAC, ASKER_IP)
    assert not parsed.is_request


def test_reply_to_an_address_probe() -> None:
    # RFC 5227 probe: sender IP 0.0.0.0; the answer tells the prober the address is taken.
    probe = parse_arp_untrusted(arp_frame(spa=IPv4Address(0)))
    reply = parse_arp_untrusted(build_arp_reply(probe, MEMBER_MAC))
    assert reply.sender_ip == MEMBER_IP and reply.sender_mac == MEMBER_MAC
    assert reply.target_ip == IPv4Address(0) and reply.target_mac == ASKER_MAC


def test_gratuitous_arp() -> None:
    frame = build_gratuitous_arp(MEMBER_MAC, MEMBER_IP)
    assert frame[0:6] == BROADCAST and frame[6:12] == MEMBER_MAC
    packet = parse_arp_untrusted(frame)
    assert packet == ArpPacket(OP_REQUEST, MEMBER_MAC, MEMBER_IP, bytes(6), MEMBER_IP)


def test_misuse_raises_value_error() -> None:
    reply = parse_arp_untrusted(build_arp_reply(parse_arp_untrusted(arp_frame()), MEMBER_MAC))
    with pytest.raises(ValueError):
        build_arp_reply(reply, MEMBER_MAC)
    with pytest.raises(ValueError):
        build_arp_reply(parse_arp_untrusted(arp_frame()), MEMBER_MAC[:4])
    with pytest.raises(ValueError):
        build_gratuitous_arp(b"", MEMBER_IP)


@pytest.mark.parametrize(
    "frame",
    [
        arp_frame(pad=False)[:41],  # one byte short of the ARP body
        b"",
        arp_frame()[:12] + b"\x08\x00" + arp_frame()[14:],  # IPv4, not ARP
        arp_frame()[:12] + b"\x81\x00\x00\x01" + arp_frame()[12:],  # VLAN-tagged ARP
        arp_frame(htype=6),  # IEEE 802 hardware
        arp_frame(ptype=0x86DD),
        arp_frame(hlen=8),
        arp_frame(plen=16),
    ],
)
def test_malformed_frames_raise_bad_packet(frame: bytes) -> None:
    with pytest.raises(BadPacket) as caught:
        parse_arp_untrusted(frame)
    assert caught.value.reason is DropReason.BAD_FRAME


def test_fuzz_only_packets_or_bad_packet() -> None:
    rng = random.Random(826)
    seeds = [arp_frame(), arp_frame(pad=False), build_gratuitous_arp(MEMBER_MAC, MEMBER_IP)]
    parsed = rejected = 0
    for _ in range(2000):
        frame = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 3)):
            frame[rng.randrange(12, 22)] = rng.randrange(256)  # headers, where checks live
        if rng.random() < 0.2:
            del frame[rng.randrange(len(frame)) :]
        try:
            packet = parse_arp_untrusted(bytes(frame))
        except BadPacket as error:
            assert error.reason is DropReason.BAD_FRAME
            rejected += 1
            continue
        assert isinstance(packet, ArpPacket)
        parsed += 1
        if packet.is_request:
            assert parse_arp_untrusted(build_arp_reply(packet, MEMBER_MAC)).op == OP_REPLY
    assert parsed and rejected
