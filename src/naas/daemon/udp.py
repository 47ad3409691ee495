"""The outside seam: the underlay UDP socket, moved in batches.

Theory of operation
-------------------
Every NaaS datagram (handshakes, probes, encrypted frames, relayed packets) travels over
one UDP socket per underlay address. The runner waits for ``fileno()`` to poll readable,
then drains it with `receive_batch` (``recvfrom`` until ``EAGAIN`` or the batch limit) and
flushes the core's output with `send_batch` (``sendto`` each datagram). Peers are named
by ``(host, port)`` with host an IP literal; IPv6 sockets are ``IPV6_V6ONLY`` so that an
IPv4 peer never shows up under an ``::ffff:`` alias (bind one socket per family).

The underlay is allowed to be unhappy: a full socket buffer, a peer's network that
vanished, a local firewall rule (``EPERM`` from nftables) or an oversized datagram drops
that datagram, counts it per `UdpDrop` reason and goes on with the batch. Only our own
misuse (a bad address, a closed socket) raises.

Socket buffers are raised to 4 MiB so that a burst of a few thousand datagrams survives
one scheduling delay: ``SO_RCVBUFFORCE`` when we may (root), otherwise ``SO_RCVBUF``,
which the kernel caps at ``net.core.rmem_max`` without failing.

Offloads (``bind(..., offload=True)``, the agent's default). A *coalesced* buffer is a
run of datagrams to (or from) one address, all ``segment`` bytes long but the last,
which may be shorter. `send_coalesced` hands one to the kernel in a single ``sendmsg``
with ``UDP_SEGMENT`` (UDP GSO, Linux 4.18): the kernel, or the NIC, cuts it into
datagrams late, so 45 datagrams cost one system call and one trip down the stack.
`receive_coalesced` turns on ``UDP_GRO`` (Linux 5.0): the kernel hands back runs of
datagrams from one sender in one ``recvmsg``, with the segment size in a control
message. Where the kernel lacks either, the same calls fall back to one datagram per
system call (``gso`` / ``gro`` say which is in use); the bytes on the wire are the same.

`MemoryUdpNetwork` is the in-memory twin: sockets addressed by ``(host, port)`` that hand
datagrams to each other's bounded queues, each with an ``eventfd`` to poll.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Protocol

from naas.core.fragments import MAX_RUN_BYTES, MAX_RUN_SEGMENTS, datagrams_of

Address = tuple[str, int]  # (IP literal, port)

DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024
ECHO_BUFFER = 64 * 1024  # a loopback twin's socket buffers (LinuxUdpSocket.echo)
ECHO_READS = 4  # datagrams an echo reads at most: its own, and any a stranger sent first
RECEIVE_BUFFER = 65536  # larger than any UDP payload, or any run of coalesced ones
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send-side segmentation (GSO), u16 segment size
UDP_GRO = 104  # linux/udp.h: receive-side coalescing, int segment size in a cmsg
_SEGMENT = struct.Struct("=H")
_GRO_SEGMENT = struct.Struct("=i")
_GRO_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SEGMENT.size)
MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}  # 65535 - headers
# asm-generic/socket.h; the socket module only names them from Python 3.12 on.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class UdpDrop(Enum):
    """Why a datagram given to `send_batch` did not leave (or one was not received)."""

    BUSY = "busy"  # EAGAIN / ENOBUFS: socket or device queue full
    UNREACHABLE = "unreachable"  # no route, network down, or a reported ICMP error
    FILTERED = "filtered"  # EPERM: a local firewall rule refused it
    TOO_BIG = "too_big"  # EMSGSIZE: larger than the path or protocol allows


_DROPS = {
    errno.EAGAIN: UdpDrop.BUSY,
    errno.ENOBUFS: UdpDrop.BUSY,
    errno.EHOSTUNREACH: UdpDrop.UNREACHABLE,
    errno.ENETUNREACH: UdpDrop.UNREACHABLE,
    errno.ENETDOWN: UdpDrop.UNREACHABLE,
    errno.EHOSTDOWN: UdpDrop.UNREACHABLE,
    errno.ECONNREFUSED: UdpDrop.UNREACHABLE,
    errno.EPERM: UdpDrop.FILTERED,
    errno.EMSGSIZE: UdpDrop.TOO_BIG,
}


class DatagramSocket(Protocol):
    """One bound UDP endpoint moved in batches. The runner owns it; not thread-safe."""

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port)``; the port is the real one when 0 was asked."""
        ...

    @property
    def drops(self) -> dict[UdpDrop, int]:
        """Datagrams dropped so far, per reason (a copy)."""
        ...

    def fileno(self) -> int:
        """A descriptor that polls readable while `receive_batch` would return data."""
        ...

    def receive_batch(self, max_datagrams: int, max_bytes: int = sys.maxsize) -> list[tuple[bytes, Address]]:
        """Pending ``(payload, sender)`` pairs, oldest first, at most `max_datagrams`,
        and no more once the payloads hold `max_bytes` or more.

        Never blocks; returns ``[]`` when nothing is pending. A pending error report
        (e.g. ICMP unreachable) is counted in `drops` and skipped.
        """
        ...

    def send_batch(self, datagrams: Iterable[tuple[bytes, Address]]) -> int:
        """Send each ``(payload, destination)`` in order; returns how many left.

        A datagram refused for a `UdpDrop` reason is counted and skipped, never raised.
        """
        ...

    def receive_coalesced(
        self, max_buffers: int, max_bytes: int = sys.maxsize
    ) -> list[tuple[bytes, Address, int]]:
        """Like `receive_batch`, with runs of datagrams: ``(run, sender, segment size)``."""
        ...

    def send_coalesced(self, runs: Iterable[tuple[bytes | bytearray, Address, int]]) -> int:
        """Send each ``(run, destination, segment size)``; returns how many runs left."""
        ...

    def close(self) -> None:
        """Release the port. Idempotent."""
        ...


def _family_of(host: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        raise ValueError(f"not an IP address literal: {host!r}") from None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _set_buffer(sock: socket.socket, forced: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)  # root: ignores rmem/wmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)  # capped by the sysctl, no error


class LinuxUdpSocket:
    """A non-blocking kernel UDP socket (see module docstring)."""

    __slots__ = ("_drops", "_local", "_sock", "_v6", "gro", "gso")

    def __init__(self, sock: socket.socket, *, offload: bool = False):
        sock.setblocking(False)
        self._sock = sock
        self._v6 = sock.family == socket.AF_INET6
        host, port = sock.getsockname()[:2]
        self._local: Address = (host, port)
        self._drops = dict.fromkeys(UdpDrop, 0)
        self.gso = offload and _try_option(sock, UDP_SEGMENT, 0)  # send runs in one call
        self.gro = offload and _try_option(sock, UDP_GRO, 1)  # receive runs in one call

    @classmethod
    def bind(
        cls,
        host: str,
        port: int,
        *,
        buffer_bytes: int = DEFAULT_SOCKET_BUFFER,
        offload: bool = False,
        reuse_port: bool = False,
    ) -> LinuxUdpSocket:
        """Bind `host` (IPv4 or IPv6 literal, wildcard allowed) and `port` (0: any).

        ``offload`` asks for UDP GSO and GRO where the kernel has them (module docstring);
        ``reuse_port`` sets ``SO_REUSEPORT`` (daemon/steering.py).
        """
        family = _family_of(host)
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, offload=offload)

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def drops(self) -> dict[UdpDrop, int]:
        return dict(self._drops)

    @property
    def raw_socket(self) -> socket.socket:
        """The kernel socket, for options this class does not wrap (daemon/steering.py)."""
        return self._sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive_batch(self, max_datagrams: int, max_bytes: int = sys.maxsize) -> list[tuple[bytes, Address]]:
        received: list[tuple[bytes, Address]] = []
        recvfrom, v6 = self._sock.recvfrom, self._v6
        for _ in range(max_datagrams):
            try:
                data, sender = recvfrom(RECEIVE_BUFFER)
            except BlockingIOError:
                break
            except OSError as exc:  # a queued error report, not a datagram
                self._count_or_raise(exc)
                continue
            received.append((data, (sender[0], sender[1]) if v6 else sender))
            max_bytes -= len(data)
            if max_bytes <= 0:
                break
        return received

    def send_batch(self, datagrams: Iterable[tuple[bytes, Address]]) -> int:
        sent = 0
        sendto = self._sock.sendto
        for payload, destination in datagrams:
            try:
                sendto(payload, destination)
            except OSError as exc:
                self._count_or_raise(exc)
            else:
                sent += 1
        return sent

    def receive_coalesced(
        self, max_buffers: int, max_bytes: int = sys.maxsize
    ) -> list[tuple[bytes, Address, int]]:
        if not self.gro:
            return [(data, sender, len(data)) for data, sender in self.receive_batch(max_buffers, max_bytes)]
        received: list[tuple[bytes, Address, int]] = []
        recvmsg, v6 = self._sock.recvmsg, self._v6
        for _ in range(max_buffers):
            try:
                data, ancillary, _flags, sender = recvmsg(RECEIVE_BUFFER, _GRO_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._count_or_raise(exc)
                continue
            segment = len(data)
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= _GRO_SEGMENT.size:
                    segment = _GRO_SEGMENT.unpack_from(value)[0]
            received.append((data, (sender[0], sender[1]) if v6 else sender, segment))
            max_bytes -= len(data)
            if max_bytes <= 0:
                break
        return received

    def send_coalesced(self, runs: Iterable[tuple[bytes | bytearray, Address, int]]) -> int:
        sent = 0
        sendmsg = self._sock.sendmsg
        for run, destination, segment in runs:
            if not self.gso or len(run) <= segment:
                if self.send_batch(_split(run, segment, destination)):
                    sent += 1
                continue
            try:
                sendmsg([run], [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment))], 0, destination)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    # this route cannot segment (e.g. no checksum offload): one at a time from now on
                    self.gso = False
                    if self.send_batch(_split(run, segment, destination)):
                        sent += 1
                else:
                    self._count_or_raise(exc)
            else:
                sent += 1
        return sent

    def loopback_twin(self) -> LinuxUdpSocket:
        """A socket of this one's family and receive offload on the loopback address, any
        port, with small buffers: for `echo`. Raises OSError where there is no loopback."""
        host = "::1" if self._v6 else "127.0.0.1"
        return LinuxUdpSocket.bind(host, 0, buffer_bytes=ECHO_BUFFER, offload=self.gro)

    def echo(self, payload: bytes) -> bool:
        """Send ``payload`` to this very socket and read it back, through the calls the
        data path makes (``sendto``, then ``recvmsg`` or ``recvfrom``): True if it came
        back. On a loopback socket (`loopback_twin`) that walks the kernel's UDP path
        without a packet on any network; the agent's polls use it to keep that path warm
        (docs/performance.md, "Warming the kernel's path"). A datagram from anyone else
        is read and dropped on the way."""
        if not self.send_batch(((payload, self._local),)):
            return False
        return any(sender == self._local for _, sender, _ in self.receive_coalesced(ECHO_READS))

    def _count_or_raise(self, exc: OSError) -> None:
        reason = _DROPS.get(exc.errno or 0)
        if reason is None:
            raise exc
        self._drops[reason] += 1

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LinuxUdpSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def coalesce(datagrams: Sequence[tuple[bytes, Address]]) -> list[tuple[bytes, Address, int]]:
    """Consecutive datagrams to one address, of one size (the last of a run may be
    shorter), joined into runs for `send_coalesced`: a burst of TCP ACKs to a member
    then costs one system call. Order is kept."""
    runs: list[tuple[bytes, Address, int]] = []
    at, end = 0, len(datagrams)
    while at < end:
        payload, destination = datagrams[at]
        size = total = len(payload)
        stop = at + 1
        while stop < end and stop - at < MAX_RUN_SEGMENTS:
            following, to = datagrams[stop]
            if to != destination or len(following) > size or total + len(following) > MAX_RUN_BYTES:
                break
            total += len(following)
            stop += 1
            if len(following) < size:
                break  # only the last datagram of a run may be shorter
        if stop == at + 1:
            runs.append((payload, destination, size))
        else:
            runs.append((b"".join([datagram for datagram, _ in datagrams[at:stop]]), destination, size))
        at = stop
    return runs


def _try_option(sock: socket.socket, option: int, value: int) -> bool:
    """Set a SOL_UDP option; False where this kernel does not know it."""
    try:
        sock.setsockopt(SOL_UDP, option, value)
    except OSError:
        return False
    return True


def _split(run: bytes | bytearray, segment: int, destination: Address) -> list[tuple[bytes, Address]]:
    """The datagrams of a coalesced run, each addressed to ``destination``."""
    return [(datagram, destination) for datagram in datagrams_of(run, segment)]


class MemoryUdpNetwork:
    """In-memory twin of the underlay: `bind` returns sockets that reach each other.

    A datagram goes to the socket bound to its exact destination, else to one bound to
    the wildcard of that family on the same port; with no receiver, or a full queue, it
    is lost silently (as on a real network) and counted in `lost`. A socket bound to a
    wildcard sends from the loopback address of its family.
    """

    EPHEMERAL_PORTS = range(32768, 61000)  # like net.ipv4.ip_local_port_range

    def __init__(self, *, queue_limit: int = 4096):
        self.queue_limit = queue_limit
        self.lost = 0
        self._sockets: dict[Address, MemoryUdpSocket] = {}
        self._next_port = self.EPHEMERAL_PORTS.start

    def bind(self, host: str, port: int) -> MemoryUdpSocket:
        family = _family_of(host)
        host = str(ipaddress.ip_address(host))
        if port == 0:
            port = self._free_port(host)
        if (host, port) in self._sockets:
            raise OSError(errno.EADDRINUSE, f"address already in use: {host} port {port}")
        sock = MemoryUdpSocket(self, family, (host, port))
        self._sockets[(host, port)] = sock
        return sock

    def _free_port(self, host: str) -> int:
        ports = self.EPHEMERAL_PORTS
        for _ in range(len(ports)):
            port = self._next_port
            self._next_port = port + 1 if port + 1 < ports.stop else ports.start
            if (host, port) not in self._sockets:
                return port
        raise OSError(errno.EADDRINUSE, f"no free port on {host}")

    def _deliver(self, payload: bytes, sender: Address, destination: Address) -> None:
        receiver = self._sockets.get(destination)
        if receiver is None:
            wildcard = "::" if ":" in destination[0] else "0.0.0.0"
            receiver = self._sockets.get((wildcard, destination[1]))
        if receiver is None or not receiver._enqueue(payload, sender):
            self.lost += 1

    def _unbind(self, address: Address) -> None:
        self._sockets.pop(address, None)


class MemoryUdpSocket:
    """One socket of a `MemoryUdpNetwork` (see there)."""

    __slots__ = ("_closed", "_drops", "_event", "_family", "_local", "_network", "_queue", "_source")

    def __init__(self, network: MemoryUdpNetwork, family: socket.AddressFamily, local: Address):
        self._network = network
        self._family = family
        self._local = local
        wildcard = ipaddress.ip_address(local[0]).is_unspecified
        loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self._source: Address = (loopback, local[1]) if wildcard else local
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._drops = dict.fromkeys(UdpDrop, 0)
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def drops(self) -> dict[UdpDrop, int]:
        return dict(self._drops)

    def fileno(self) -> int:
        if self._closed:
            raise ValueError("socket is closed")
        return self._event

    def receive_batch(self, max_datagrams: int, max_bytes: int = sys.maxsize) -> list[tuple[bytes, Address]]:
        queue = self._queue
        received: list[tuple[bytes, Address]] = []
        while queue and len(received) < max_datagrams and max_bytes > 0:
            received.append(queue.popleft())
            max_bytes -= len(received[-1][0])
        if received and not queue:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._event)  # reset readability
        return received

    def send_batch(self, datagrams: Iterable[tuple[bytes, Address]]) -> int:
        if self._closed:
            raise OSError(errno.EBADF, "socket is closed")
        sent = 0
        limit = MAX_PAYLOAD[self._family]
        for payload, (host, port) in datagrams:
            if _family_of(host) != self._family:
                raise OSError(errno.EAFNOSUPPORT, f"wrong address family: {host}")
            if len(payload) > limit:
                self._drops[UdpDrop.TOO_BIG] += 1
                continue
            destination = (str(ipaddress.ip_address(host)), port)
            self._network._deliver(bytes(payload), self._source, destination)
            sent += 1
        return sent

    def receive_coalesced(
        self, max_buffers: int, max_bytes: int = sys.maxsize
    ) -> list[tuple[bytes, Address, int]]:
        return [(data, sender, len(data)) for data, sender in self.receive_batch(max_buffers, max_bytes)]

    def send_coalesced(self, runs: Iterable[tuple[bytes | bytearray, Address, int]]) -> int:
        sent = 0
        for run, destination, segment in runs:
            if self.send_batch(_split(run, segment, destination)):
                sent += 1
        return sent

    def _enqueue(self, payload: bytes, sender: Address) -> bool:
        if self._closed or len(self._queue) >= self._network.queue_limit:
            return False
        was_empty = not self._queue
        self._queue.append((payload, sender))
        if was_empty:
            os.eventfd_write(self._event, 1)
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._network._unbind(self._local)
            os.close(self._event)
