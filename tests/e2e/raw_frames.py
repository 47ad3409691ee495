"""Frames and sockets for e2e tests that speak raw Ethernet inside a lab host: an
AF_PACKET socket on a host's naas0, a socket of any kind opened in its namespace, a
bounded capture, and builders of Ethernet (with an optional 802.1Q tag), IPv4, ICMP
echo, TCP SYN and ARP reply bytes with correct checksums (tests/checksums.py)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

from checksums import reference_checksum
from naas.lab.story import Story

# -- sockets inside a host's namespace ------------------------------------------------------


@contextlib.contextmanager
def socket_in(story: Story, host: str, family: int, kind: int, proto: int = 0) -> Iterator[socket.socket]:
    """A socket of ``host``'s namespace (it stays there after the thread leaves)."""
    with story.lab.host(host).entered():
        sock = socket.socket(family, kind, proto)
    try:
        yield sock
    finally:
        sock.close()


ETH_P_ALL = 0x0003


@contextlib.contextmanager
def raw(story: Story, host: str) -> Iterator[socket.socket]:
    """An AF_PACKET socket on ``host``'s naas0: sends whole frames, receives everything."""
    with story.lab.host(host).entered():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.bind(("naas0", 0))
        except OSError:
            sock.close()
            raise
    try:
        yield sock
    finally:
        sock.close()


def capture(sock: socket.socket, seconds: float, until: bytes | None = None) -> list[bytes]:
    """Frames ``sock`` receives for ``seconds`` (less if one holds ``until``)."""
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, 0.1))
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        frames.append(frame)
        if until is not None and until in frame:
            break
    return frames


def carrying(frames: list[bytes], marker: bytes) -> list[bytes]:
    return [frame for frame in frames if marker in frame]


# -- frames ---------------------------------------------------------------------------------


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return dst + src + tag + struct.pack("!H", ethertype) + payload.ljust(46, b"\0")


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0x4E41,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", reference_checksum(header)) + header[12:] + payload


def icmp_echo(payload: bytes) -> bytes:
    message = struct.pack("!BBHHH", 8, 0, 0, 0x4E41, 1) + payload
    return message[:2] + struct.pack("!H", reference_checksum(message)) + message[4:]


def tcp_syn(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0) + payload
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(segment))
    return segment[:16] + struct.pack("!H", reference_checksum(pseudo + segment)) + segment[18:]


def arp_reply(sender_mac: bytes, sender_ip: str, target_mac: bytes, target_ip: str) -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        2,
        sender_mac,
        socket.inet_aton(sender_ip),
        target_mac,
        socket.inet_aton(target_ip),
    )
