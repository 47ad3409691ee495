"""Offloads of the real devices, inside a lab namespace.

(That naas0 with offloads reads and writes TCP super-frames is shown end to end in
tests/e2e/test_fast_path.py, with tcpdump on the receiving naas0.)

- where the kernel refuses an offload ioctl the device is reopened plainly (offload
  False) and works as without the option.
- UDP GSO/GRO on loopback: one ``send_coalesced`` run arrives at a GRO socket as a run
  with the same bytes and segment size, and at a plain socket as separate datagrams;
  with GSO turned off the same run leaves as separate datagrams.
"""

from __future__ import annotations

import errno
import fcntl
import select
import socket
import time
from collections.abc import Callable
from ipaddress import IPv4Interface

import pytest

from naas.daemon import netconf, tap
from naas.daemon.tap import LinuxTap
from naas.daemon.udp import LinuxUdpSocket
from naas.lab import Lab

pytestmark = pytest.mark.netns

TAP_MAC = bytes.fromhex("02aa00000001")
WAIT = 5.0


def test_tap_falls_back_to_plain_frames_without_the_offload_ioctls(
    lab_factory: Callable[..., Lab], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ioctl = fcntl.ioctl

    def refusing_ioctl(fd: int, request: int, *args: object) -> object:
        if request == tap.TUNSETOFFLOAD:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_ioctl(fd, request, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tap.fcntl, "ioctl", refusing_ioctl)
    lab = lab_factory(sites={"lab": "10.100.9.0/24"}, hosts={"h": "lab"})
    with lab.host("h").entered():
        device = LinuxTap.open("naas0", offload=True)
        try:
            assert not device.offload
            netconf.configure_interface("naas0", mac=TAP_MAC, mtu=1400, address=IPv4Interface("10.99.0.1/24"))
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.sendto(b"x", ("10.99.0.2", 9))  # the kernel asks for 10.99.0.2 first
            probe.close()
            deadline = time.monotonic() + WAIT
            frames: list[bytes] = []
            while not frames and time.monotonic() < deadline:
                if select.select([device.fileno()], [], [], 0.2)[0]:
                    frames = device.read_batch(64)
            assert frames, "nothing read from the plain TAP"
            assert all(frame[6:12] == TAP_MAC for frame in frames), "a plain frame starts with its MACs"
        finally:
            device.close()


def _receive_all(sock: LinuxUdpSocket, total: int) -> list[tuple[bytes, int]]:
    got: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + WAIT
    while sum(len(run) for run, _ in got) < total and time.monotonic() < deadline:
        if select.select([sock.fileno()], [], [], 0.2)[0]:
            got += [(run, segment) for run, _, segment in sock.receive_coalesced(64)]
    return got


def test_udp_gso_run_arrives_whole_with_gro_and_split_without(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(sites={"lab": "10.100.9.0/24"}, hosts={"h": "lab"})
    run = b"".join(bytes([n]) * 1000 for n in range(10)) + b"\xee" * 500
    with lab.host("h").entered():
        sender = LinuxUdpSocket.bind("127.0.0.1", 0, offload=True)
        with_gro = LinuxUdpSocket.bind("127.0.0.1", 0, offload=True)
        without = LinuxUdpSocket.bind("127.0.0.1", 0, offload=False)
    try:
        assert sender.gso and with_gro.gro and not without.gro
        assert sender.send_coalesced([(run, with_gro.local_address, 1000)]) == 1
        got = _receive_all(with_gro, len(run))
        assert b"".join(r for r, _ in got) == run
        assert len(got) == 1 and got[0][1] == 1000, "one run, its segment size in the GRO control message"

        assert sender.send_coalesced([(run, without.local_address, 1000)]) == 1
        got = _receive_all(without, len(run))
        assert [r for r, _ in got] == [run[at : at + 1000] for at in range(0, len(run), 1000)]

        sender.gso = False  # as after a kernel refused: one datagram per call
        assert sender.send_coalesced([(run, without.local_address, 1000)]) == 1
        got = _receive_all(without, len(run))
        assert len(got) == 11 and b"".join(r for r, _ in got) == run
    finally:
        for sock in (sender, with_gro, without):
            sock.close()
