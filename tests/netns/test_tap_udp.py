"""The two I/O seams against their contracts, on the real device and on the twin.

Each contract test body runs twice (parametrized fixture): on `MemoryTap` /
`MemoryUdpNetwork`, and on a `LinuxTap` inside a lab namespace / `LinuxUdpSocket` on
loopback. The TAP's "kernel side" is an AF_PACKET socket on the device::

    test --kernel_transmit--> AF_PACKET --> naas0 --> read_batch()
    test <--kernel_received-- AF_PACKET <-- naas0 <-- write_batch()

The last test drives a real ping through a TAP configured by `netconf`:

    ping 10.99.0.2 (in namespace) --> naas0 10.99.0.1/24 --> read_batch: ARP, ICMP echo
    write_batch: ARP reply, echo replies --> ping succeeds
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest

from naas.daemon import netconf
from naas.daemon.tap import LinuxTap, MemoryTap, TapDevice, TapDrop
from naas.daemon.udp import DatagramSocket, LinuxUdpSocket, MemoryUdpNetwork, UdpDrop
from naas.lab import Lab

pytestmark = pytest.mark.netns

TAP_MAC = bytes.fromhex("02aa00000001")
PEER_MAC = bytes.fromhex("02aa00000002")
TEST_ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nothing else on the link uses it
PACKET_OUTGOING = 4  # sockaddr_ll.sll_pkttype of frames the host itself sent
WAIT = 5.0  # seconds: upper bound of every wait in this file


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def make_frame(number: int, size: int = 60) -> bytes:
    header = PEER_MAC + TAP_MAC + struct.pack("!H", TEST_ETHERTYPE)
    body = struct.pack("!I", number)
    return header + body + bytes(size - len(header) - len(body))


# --- TAP harnesses ------------------------------------------------------------------------


class TapHarness:
    """The device under test plus a way to act as the kernel's network stack."""

    tap: TapDevice

    def kernel_transmit(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    def kernel_received(self, count: int) -> list[bytes]:
        """Test frames the stack received, waiting (bounded) until `count` arrived."""
        raise NotImplementedError

    def set_link(self, up: bool) -> None:
        raise NotImplementedError


class MemoryTapHarness(TapHarness):
    def __init__(self) -> None:
        self.memory = MemoryTap("naas0")
        self.tap = self.memory

    def kernel_transmit(self, frames: list[bytes]) -> None:
        assert self.memory.kernel_transmit(frames) == len(frames)

    def kernel_received(self, count: int) -> list[bytes]:
        return self.memory.kernel_receive()

    def set_link(self, up: bool) -> None:
        self.memory.link_up = up


class LinuxTapHarness(TapHarness):
    def __init__(self, lab: Lab) -> None:
        self.host = lab.host("h")
        with self.host.entered():
            self.tap = LinuxTap.open("naas0")
            self.host.run(["sysctl", "-q", "-w", "net.ipv6.conf.naas0.disable_ipv6=1"])
            netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1500, address=None)
            self.packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(TEST_ETHERTYPE))
        self.packet.bind(("naas0", TEST_ETHERTYPE))
        self.packet.settimeout(WAIT)

    def kernel_transmit(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.packet.send(frame)

    def kernel_received(self, count: int) -> list[bytes]:
        frames: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(frames) < count and time.monotonic() < deadline:
            try:
                frame, address = self.packet.recvfrom(65536)
            except TimeoutError:
                break
            except OSError as exc:  # the link went down meanwhile: reported once
                if exc.errno != errno.ENETDOWN:
                    raise
                continue
            if address[2] != PACKET_OUTGOING:
                frames.append(frame)
        return frames

    def set_link(self, up: bool) -> None:
        with self.host.entered():
            netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1500, address=None, up=up)

    def close(self) -> None:
        self.packet.close()


@pytest.fixture(params=["memory", "linux"])
def tap_harness(request: pytest.FixtureRequest) -> Iterator[TapHarness]:
    if request.param == "memory":
        harness: TapHarness = MemoryTapHarness()
        yield harness
        harness.tap.close()
        return
    lab_factory: Callable[..., Lab] = request.getfixturevalue("lab_factory")
    linux = LinuxTapHarness(lab_factory(sites={"lab": "10.100.9.0/24"}, hosts={"h": "lab"}))
    try:
        yield linux
    finally:
        linux.close()
        linux.tap.close()


def read_frames(tap: TapDevice, count: int, *, max_frames: int = 64) -> list[bytes]:
    """Read test frames until `count` arrived (bounded); every batch respects max_frames."""
    frames: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while len(frames) < count and time.monotonic() < deadline:
        if not readable(tap.fileno(), deadline - time.monotonic()):
            break
        batch = tap.read_batch(max_frames)
        assert len(batch) <= max_frames
        frames += [f for f in batch if f[12:14] == struct.pack("!H", TEST_ETHERTYPE)]
    return frames


def drain(tap: TapDevice) -> None:
    for _ in range(100):
        if not tap.read_batch(64):
            return


# --- TAP contract -------------------------------------------------------------------------


def test_tap_has_its_name(tap_harness: TapHarness) -> None:
    assert tap_harness.tap.name == "naas0"


def test_tap_read_returns_nothing_when_idle(tap_harness: TapHarness) -> None:
    tap = tap_harness.tap
    drain(tap)
    assert tap.read_batch(64) == []
    assert not readable(tap.fileno(), 0.05)


def test_tap_reads_frames_in_order_within_max(tap_harness: TapHarness) -> None:
    frames = [make_frame(n) for n in range(5)]
    tap_harness.kernel_transmit(frames)
    assert read_frames(tap_harness.tap, 5, max_frames=2) == frames


def test_tap_read_stops_once_max_bytes_are_in(tap_harness: TapHarness) -> None:
    tap = tap_harness.tap
    drain(tap)
    frames = [make_frame(n, 1000) for n in range(4)]
    tap_harness.kernel_transmit(frames)
    assert readable(tap.fileno(), WAIT)
    assert tap.read_batch(64, max_bytes=1500) == frames[:2]  # 2000 bytes >= 1500: no third read
    assert tap.read_batch(64, max_bytes=1000) == frames[2:3]
    assert read_frames(tap, 1) == frames[3:]


def test_tap_fileno_is_readable_while_frames_wait(tap_harness: TapHarness) -> None:
    tap = tap_harness.tap
    drain(tap)
    tap_harness.kernel_transmit([make_frame(1)])
    assert readable(tap.fileno(), WAIT)
    assert read_frames(tap, 1) == [make_frame(1)]
    assert not readable(tap.fileno(), 0.05)


def test_tap_writes_frames_in_order(tap_harness: TapHarness) -> None:
    frames = [make_frame(n, size) for n, size in enumerate((60, 1514, 100))]
    assert tap_harness.tap.write_batch(frames) == 3
    assert tap_harness.kernel_received(3) == frames
    assert sum(tap_harness.tap.drops.values()) == 0


def test_tap_drops_a_runt_frame_and_writes_the_rest(tap_harness: TapHarness) -> None:
    tap = tap_harness.tap
    assert tap.write_batch([b"runt", make_frame(7)]) == 1
    assert tap.drops[TapDrop.MALFORMED] == 1
    assert tap_harness.kernel_received(1) == [make_frame(7)]


def test_tap_drops_writes_while_link_is_down(tap_harness: TapHarness) -> None:
    tap = tap_harness.tap
    tap_harness.set_link(False)
    assert tap.write_batch([make_frame(1), make_frame(2)]) == 0
    assert tap.drops[TapDrop.LINK_DOWN] == 2
    tap_harness.set_link(True)
    assert tap.write_batch([make_frame(3)]) == 1
    assert tap_harness.kernel_received(1) == [make_frame(3)]


def test_tap_close_is_idempotent(tap_harness: TapHarness) -> None:
    tap_harness.tap.close()
    tap_harness.tap.close()


# --- UDP harnesses ------------------------------------------------------------------------


@dataclass
class UdpHarness:
    bind: Callable[[str, int], DatagramSocket]
    sockets: list[DatagramSocket]


@pytest.fixture(params=["memory", "linux"])
def udp(request: pytest.FixtureRequest) -> Iterator[UdpHarness]:
    sockets: list[DatagramSocket] = []
    network = MemoryUdpNetwork()

    def bind(host: str, port: int) -> DatagramSocket:
        sock: DatagramSocket = (
            network.bind(host, port) if request.param == "memory" else LinuxUdpSocket.bind(host, port)
        )
        sockets.append(sock)
        return sock

    try:
        yield UdpHarness(bind, sockets)
    finally:
        for sock in sockets:
            sock.close()


def loopback_hosts() -> list[Any]:
    hosts: list[Any] = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        hosts.append("::1")
    except OSError:
        hosts.append(pytest.param("::1", marks=pytest.mark.skip(reason="no IPv6 loopback")))
    return hosts


@pytest.fixture(params=loopback_hosts())
def host(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def receive(sock: DatagramSocket, count: int, *, max_datagrams: int = 64) -> list[Any]:
    received: list[Any] = []
    deadline = time.monotonic() + WAIT
    while len(received) < count and time.monotonic() < deadline:
        if not readable(sock.fileno(), deadline - time.monotonic()):
            break
        batch = sock.receive_batch(max_datagrams)
        assert len(batch) <= max_datagrams
        received += batch
    return received


# --- UDP contract -------------------------------------------------------------------------


def test_udp_bind_any_port_reports_the_real_one(udp: UdpHarness, host: str) -> None:
    sock = udp.bind(host, 0)
    assert sock.local_address[0] == host
    assert sock.local_address[1] > 0


def test_udp_receive_returns_nothing_when_idle(udp: UdpHarness, host: str) -> None:
    sock = udp.bind(host, 0)
    assert sock.receive_batch(64) == []
    assert not readable(sock.fileno(), 0.05)


def test_udp_round_trip_in_order_with_sender(udp: UdpHarness, host: str) -> None:
    a, b = udp.bind(host, 0), udp.bind(host, 0)
    payloads = [f"datagram {n}".encode() for n in range(200)]
    assert a.send_batch((p, b.local_address) for p in payloads) == 200
    received = receive(b, 200, max_datagrams=32)
    assert received == [(p, a.local_address) for p in payloads]
    assert not readable(b.fileno(), 0.05)


def test_udp_receive_stops_once_max_bytes_are_in(udp: UdpHarness, host: str) -> None:
    a, b = udp.bind(host, 0), udp.bind(host, 0)
    payloads = [bytes([n]) * 1000 for n in range(5)]
    assert a.send_batch((p, b.local_address) for p in payloads) == 5
    assert readable(b.fileno(), WAIT)
    time.sleep(0.05)  # loopback delivers inside the send; this only makes sure
    assert b.receive_batch(64, max_bytes=1500) == [(p, a.local_address) for p in payloads[:2]]
    assert b.receive_coalesced(64, max_bytes=1) == [(payloads[2], a.local_address, 1000)]
    assert receive(b, 2) == [(p, a.local_address) for p in payloads[3:]]


def test_udp_largest_datagram_passes_larger_is_dropped(udp: UdpHarness, host: str) -> None:
    a, b = udp.bind(host, 0), udp.bind(host, 0)
    largest = 65507 if ":" not in host else 65527
    assert a.send_batch([(bytes(largest + 1), b.local_address), (b"x" * largest, b.local_address)]) == 1
    assert a.drops[UdpDrop.TOO_BIG] == 1
    assert receive(b, 1) == [(b"x" * largest, a.local_address)]


def test_udp_send_to_nobody_neither_raises_nor_poisons(udp: UdpHarness, host: str) -> None:
    a, b = udp.bind(host, 0), udp.bind(host, 0)
    nobody = udp.bind(host, 0)
    nobody_address = nobody.local_address
    nobody.close()
    assert a.send_batch([(b"lost", nobody_address)]) == 1
    assert a.send_batch([(b"kept", b.local_address)]) == 1
    assert receive(b, 1) == [(b"kept", a.local_address)]
    assert a.receive_batch(64) == []  # no error report surfaces as data or exception


def test_udp_port_in_use_refused_then_free_after_close(udp: UdpHarness, host: str) -> None:
    first = udp.bind(host, 0)
    port = first.local_address[1]
    with pytest.raises(OSError) as refused:
        udp.bind(host, port)
    assert refused.value.errno == errno.EADDRINUSE
    first.close()
    first.close()  # idempotent
    assert udp.bind(host, port).local_address == (host, port)


# --- the loopback echo the agent's polls make (LinuxUdpSocket.echo) -------------------------


def test_udp_loopback_twin_echoes_through_the_kernel(host: str) -> None:
    with LinuxUdpSocket.bind(host, 0, offload=True) as mesh, mesh.loopback_twin() as twin:
        assert twin.local_address[0] == host  # the loopback of the mesh socket's family
        assert twin.local_address != mesh.local_address
        assert twin.gro == mesh.gro  # received by the same call as the mesh socket's datagrams
        with LinuxUdpSocket.bind(host, 0) as stranger:
            assert stranger.send_batch([(b"not yours", twin.local_address)]) == 1
            assert readable(twin.fileno(), WAIT)
            for _ in range(3):
                assert twin.echo(bytes(140))  # a stranger's datagram ahead of it is read and dropped
                assert not readable(twin.fileno(), 0)  # nothing left behind
        assert mesh.receive_batch(64) == []  # nothing reached the mesh socket


ECHO_WITHOUT_LOOPBACK = """
from naas.daemon.udp import LinuxUdpSocket
mesh = LinuxUdpSocket.bind("0.0.0.0", 0, offload=True)
twin = mesh.loopback_twin()
print(twin.echo(bytes(140)))
"""


def test_udp_echo_fails_where_loopback_is_down(lab_factory: Callable[..., Lab]) -> None:
    """The agent then stops its echoes (runner.Agent._warm_kernel_path)."""
    lab = lab_factory(hosts={"solo": "onprem"})
    solo = lab.host("solo")
    solo.run(["ip", "link", "set", "lo", "down"], check=True)
    done = solo.run([sys.executable, "-c", ECHO_WITHOUT_LOOPBACK], check=True)
    assert done.stdout.strip() == "False"  # the kernel drops it at the downed lo (or refuses the send)


# --- a real TAP with a real ping ----------------------------------------------------------


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_reply(request_frame: bytes) -> bytes | None:
    """The reply PEER_MAC would send to an ARP request for 10.99.0.2, else None."""
    arp = request_frame[14:42]
    _, _, _, _, op, sha, spa, _, tpa = struct.unpack("!HHBBH6s4s6s4s", arp)
    if op != 1 or IPv4Address(tpa) != IPv4Address("10.99.0.2"):
        return None
    assert sha == TAP_MAC and IPv4Address(spa) == IPv4Address("10.99.0.1")
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, PEER_MAC, tpa, sha, spa)
    return TAP_MAC + PEER_MAC + b"\x08\x06" + body


def echo_reply(frame: bytes) -> bytes | None:
    """The ICMP echo reply to an echo request in `frame`, else None."""
    ip = frame[14:]
    header_len = (ip[0] & 0x0F) * 4
    if ip[9] != 1 or ip[header_len] != 8:  # not ICMP, not echo request
        return None
    icmp = bytearray(ip[header_len : struct.unpack("!H", ip[2:4])[0]])
    icmp[0], icmp[2:4] = 0, b"\0\0"  # echo reply, checksum recomputed below
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    header = bytearray(ip[:header_len])
    header[12:16], header[16:20] = ip[16:20], ip[12:16]  # swap addresses
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return frame[6:12] + frame[0:6] + frame[12:14] + bytes(header) + bytes(icmp)


def test_ping_through_a_real_tap(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(sites={"lab": "10.100.9.0/24"}, hosts={"h": "lab"})
    host = lab.host("h")
    with host.entered():
        tap = LinuxTap.open("naas0")
        netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1400, address=IPv4Interface("10.99.0.1/24"))
        assert netconf.link_exists("naas0")
        assert netconf.interface_addresses("naas0") == [IPv4Interface("10.99.0.1/24")]
        assert netconf.route_mtu_to("10.99.0.2") == 1400
    ping = host.popen(
        ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    arp_requests = echo_requests = 0
    try:
        deadline = time.monotonic() + 3 * WAIT
        while ping.poll() is None and time.monotonic() < deadline:
            if not readable(tap.fileno(), 0.2):
                continue
            replies = []
            for frame in tap.read_batch(64):
                if frame[12:14] == b"\x08\x06" and (reply := arp_reply(frame)):
                    arp_requests += 1
                    replies.append(reply)
                elif frame[12:14] == b"\x08\x00" and (reply := echo_reply(frame)):
                    assert frame[0:6] == PEER_MAC  # the kernel used our ARP answer
                    echo_requests += 1
                    replies.append(reply)
            assert tap.write_batch(replies) == len(replies)
        output, _ = ping.communicate(timeout=WAIT)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait(timeout=WAIT)
        tap.close()
    assert arp_requests >= 1
    assert echo_requests == 3
    assert ping.returncode == 0, output


def test_netconf_addresses_mtu_and_errors(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(sites={"lab": "10.100.9.0/24"}, hosts={"h": "lab"})
    with lab.host("h").entered(), LinuxTap.open("naas0"):
        netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1400, address=None, up=False)
        assert netconf.interface_addresses("naas0") == []
        netconf.set_address("naas0", IPv4Interface("10.99.0.1/24"))
        netconf.set_address("naas0", IPv4Interface("10.98.0.1/16"))  # replaces
        assert netconf.interface_addresses("naas0") == [IPv4Interface("10.98.0.1/16")]
        netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1280, address=None)
        assert netconf.route_mtu_to("10.98.7.7") == 1280
        assert netconf.route_mtu_to("10.100.9.1") == 1500  # the lab's eth0
        assert netconf.route_mtu_to("2001:db8::1") == netconf.FALLBACK_MTU  # no route
        netconf.flush_addresses("naas0")
        assert netconf.interface_addresses("naas0") == []
        with pytest.raises(netconf.NetconfError, match="nope0: no such interface"):
            netconf.set_address("nope0", IPv4Interface("10.98.0.1/16"))
        with pytest.raises(netconf.NetconfError, match="naas0: set mac"):
            netconf.configure_interface("naas0", mac=TAP_MAC, mtu=100_000, address=None)
