"""The inside seam: a virtual Ethernet adapter (TAP) that carries whole layer-2 frames.

Theory of operation
-------------------
The kernel's network stack sees the adapter (e.g. ``naas0``) as an Ethernet card. Every
frame the stack transmits on it becomes readable from our file descriptor, one frame per
``read(2)``; every frame we ``write(2)`` is received by the stack as if it came off the
wire. The daemon therefore only ever moves *batches*:

    kernel --frame--> fd --read_batch()--> runner --> NodeCore --> ... --> UDP
    UDP --> NodeCore --> runner --write_batch()--> fd --frame--> kernel

``LinuxTap.open(name)`` opens ``/dev/net/tun`` and issues the ``TUNSETIFF`` ioctl with
``IFF_TAP | IFF_NO_PI`` (see linux/if_tun.h and Documentation/networking/tuntap.rst):
TAP mode gives Ethernet frames (not IP packets) and NO_PI drops the 4-byte packet-info
prefix, so a read returns exactly one frame. The descriptor is non-blocking: a batch read
stops at ``EAGAIN`` and the runner waits for readability on ``fileno()``. The device is
not persistent: it disappears when the descriptor is closed. It is created in the network
namespace of the calling thread.

Writes never raise for conditions a busy or reconfigured host produces on its own; the
frame is dropped and counted per `TapDrop` reason (``EAGAIN``/``ENOBUFS``: queue full,
``EIO``: the link is down, ``EINVAL``: shorter than an Ethernet header). Anything else is
our own misuse and raises.

Offloads (``LinuxTap.open(name, offload=True)``, the agent's default). The device is
opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
TUN_F_TSO_ECN)``: the kernel may then hand us TCP "super-frames" of up to 64 KiB with the
checksum left undone, and accepts the same from us. Every frame read or written is then
prefixed by the 10-byte ``struct virtio_net_hdr`` (little-endian, forced with
``TUNSETVNETLE`` so that it means the same on every member) that says what is left to
do; `naas.core.offload` reads it. One read then moves ~45 MTU-sized segments, which
is where most of the data plane's speed comes from (docs/performance.md). If the kernel
refuses any of these requests the device is reopened plainly and ``offload`` is False:
frames are then ordinary Ethernet frames, as without the option.

`MemoryTap` is the in-memory twin used by tests and the simulator: two bounded queues and
an ``eventfd`` so that it can be polled exactly like the real device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import sys
from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import Protocol

# --- linux/if_tun.h and asm-generic/ioctl.h -------------------------------------------
_IOC_WRITE = 1  # direction bit: userspace -> kernel


def _iow(kind: str, number: int, size: int) -> int:
    """The ``_IOW(type, nr, size)`` macro: dir:2 | size:14 | type:8 | nr:8 bits."""
    return (_IOC_WRITE << 30) | (size << 16) | (ord(kind) << 8) | number


TUNSETIFF = _iow("T", 202, struct.calcsize("i"))  # 0x400454CA: attach fd to a device
TUNSETOFFLOAD = _iow("T", 208, struct.calcsize("I"))  # which offloads we can take (by value)
TUNSETVNETHDRSZ = _iow("T", 216, struct.calcsize("i"))  # size of the per-frame virtio header
TUNSETVNETLE = _iow("T", 220, struct.calcsize("i"))  # virtio header little-endian on any CPU
IFF_TAP = 0x0002  # Ethernet frames (IFF_TUN would give IP packets)
IFF_NO_PI = 0x1000  # no struct tun_pi prefix in front of each frame
IFF_VNET_HDR = 0x4000  # a struct virtio_net_hdr in front of each frame
TUN_F_CSUM = 0x01  # we accept frames whose L4 checksum is still to be done
TUN_F_TSO4 = 0x02  # ... and TCP/IPv4 super-frames
TUN_F_TSO6 = 0x04  # ... and TCP/IPv6 super-frames
TUN_F_TSO_ECN = 0x08  # ... also with the CWR flag set
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
VNET_HDR_LEN = 10  # struct virtio_net_hdr without num_buffers
IFNAMSIZ = 16  # interface name length limit, including the NUL

# struct ifreq as TUNSETIFF reads and rewrites it (40 bytes on Linux):
_IFREQ = struct.Struct(
    "16s"  # ifr_name: NUL-padded name; "naas%d" lets the kernel pick the number
    "H"  # ifr_flags: IFF_TAP | IFF_NO_PI (+ later IFF_VNET_HDR, IFF_MULTI_QUEUE)
    "22x"  # rest of the ifr_ifru union
)

ETH_HEADER_LEN = 14  # destination MAC, source MAC, EtherType
DEFAULT_FRAME_BUFFER = 65536 + 256  # one read: a 64 KiB super-frame and its virtio header


class TapDrop(Enum):
    """Why a frame written to the adapter did not reach the kernel."""

    BUSY = "busy"  # EAGAIN / ENOBUFS: the kernel's queue is full
    LINK_DOWN = "link_down"  # EIO: the adapter is administratively down
    MALFORMED = "malformed"  # EINVAL: shorter than an Ethernet header


_WRITE_DROPS = {
    errno.EAGAIN: TapDrop.BUSY,
    errno.ENOBUFS: TapDrop.BUSY,
    errno.EIO: TapDrop.LINK_DOWN,
    errno.EINVAL: TapDrop.MALFORMED,
}


class TapDevice(Protocol):
    """A layer-2 adapter moved in batches. The runner owns it; not thread-safe."""

    @property
    def name(self) -> str:
        """The interface name the kernel gave the adapter."""
        ...

    @property
    def drops(self) -> dict[TapDrop, int]:
        """Frames dropped by `write_batch` so far, per reason (a copy)."""
        ...

    @property
    def offload(self) -> bool:
        """Frames read and written carry a virtio-net header (module docstring)."""
        ...

    def fileno(self) -> int:
        """A descriptor that polls readable while `read_batch` would return frames."""
        ...

    def read_batch(self, max_frames: int, max_bytes: int = sys.maxsize) -> list[bytes]:
        """Frames the kernel transmitted, oldest first: at most `max_frames`, maybe none.

        Reads until there is nothing left (EAGAIN), `max_frames`, or the frames read
        hold `max_bytes` or more (a read may be a 64 KiB super-frame); never blocks and
        never raises because nothing is pending.
        """
        ...

    def write_batch(self, frames: Iterable[bytes | memoryview]) -> int:
        """Hand frames to the kernel in order; returns how many it accepted.

        A frame the kernel refuses for a transient or configuration reason is dropped
        and counted in `drops`; the rest of the batch is still written.
        """
        ...

    def close(self) -> None:
        """Release the adapter (a non-persistent TAP disappears). Idempotent."""
        ...


class LinuxTap:
    """A kernel TAP device on ``/dev/net/tun`` (see module docstring)."""

    __slots__ = ("_drops", "_fd", "_frame_buffer", "_name", "_offload")

    def __init__(
        self, fd: int, name: str, *, frame_buffer: int = DEFAULT_FRAME_BUFFER, offload: bool = False
    ):
        self._fd = fd
        self._name = name
        self._frame_buffer = frame_buffer
        self._offload = offload
        self._drops = dict.fromkeys(TapDrop, 0)

    @classmethod
    def open(cls, name: str, *, frame_buffer: int = DEFAULT_FRAME_BUFFER, offload: bool = False) -> LinuxTap:
        """Create (or attach to a persistent) TAP `name` in this thread's namespace.

        With ``offload`` the kernel's checksum and TCP segmentation offloads are asked
        for; where it refuses, the device is the plain one (check `offload`).
        """
        encoded = name.encode()
        if not encoded or len(encoded) >= IFNAMSIZ:
            raise ValueError(f"interface name must be 1-{IFNAMSIZ - 1} bytes: {name!r}")
        if offload:
            fd, kernel_name = cls._open_fd(name, encoded, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
                fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
            except OSError:
                os.close(fd)  # a kernel without these: the same device, plainly
            else:
                return cls(fd, kernel_name, frame_buffer=frame_buffer, offload=True)
        fd, kernel_name = cls._open_fd(name, encoded, IFF_TAP | IFF_NO_PI)
        return cls(fd, kernel_name, frame_buffer=frame_buffer)

    @staticmethod
    def _open_fd(name: str, encoded: bytes, flags: int) -> tuple[int, str]:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, flags))
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"cannot create TAP {name!r}: {exc.strerror}") from None
        raw_name, _flags = _IFREQ.unpack(answer)
        return fd, raw_name.rstrip(b"\0").decode()

    @property
    def name(self) -> str:
        return self._name

    @property
    def offload(self) -> bool:
        return self._offload

    @property
    def drops(self) -> dict[TapDrop, int]:
        return dict(self._drops)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"TAP {self._name} is closed")
        return self._fd

    def read_batch(self, max_frames: int, max_bytes: int = sys.maxsize) -> list[bytes]:
        frames: list[bytes] = []
        read, fd, size = os.read, self._fd, self._frame_buffer
        for _ in range(max_frames):
            try:
                frame = read(fd, size)
            except BlockingIOError:
                break
            frames.append(frame)
            max_bytes -= len(frame)
            if max_bytes <= 0:
                break
        return frames

    def write_batch(self, frames: Iterable[bytes | memoryview]) -> int:
        written = 0
        write, fd = os.write, self._fd
        for frame in frames:
            try:
                write(fd, frame)
            except OSError as exc:
                reason = _WRITE_DROPS.get(exc.errno or 0)
                if reason is None:
                    raise
                self._drops[reason] += 1
            else:
                written += 1
        return written

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> LinuxTap:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryTap:
    """In-memory twin of `LinuxTap`: the "kernel" is whoever calls `kernel_transmit`.

    Two bounded queues: frames the kernel transmits (read by the daemon) and frames the
    daemon writes (taken by `kernel_receive`). An eventfd is readable while the first
    queue is non-empty, so the twin can be polled like the real device.
    """

    __slots__ = ("_capacity", "_closed", "_drops", "_event", "_name", "_to_daemon", "_to_kernel", "link_up")

    def __init__(self, name: str = "naas0", *, capacity: int = 1000):
        self._name = name
        self._capacity = capacity  # like txqueuelen: further frames are dropped
        self._to_daemon: deque[bytes] = deque()
        self._to_kernel: deque[bytes] = deque()
        self._drops = dict.fromkeys(TapDrop, 0)
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False
        self.link_up = True  # writes while down are dropped as TapDrop.LINK_DOWN

    @property
    def name(self) -> str:
        return self._name

    @property
    def drops(self) -> dict[TapDrop, int]:
        return dict(self._drops)

    @property
    def offload(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._closed:
            raise ValueError(f"TAP {self._name} is closed")
        return self._event

    def read_batch(self, max_frames: int, max_bytes: int = sys.maxsize) -> list[bytes]:
        queue = self._to_daemon
        frames: list[bytes] = []
        while queue and len(frames) < max_frames and max_bytes > 0:
            frames.append(queue.popleft())
            max_bytes -= len(frames[-1])
        if frames and not queue:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._event)  # reset readability
        return frames

    def write_batch(self, frames: Iterable[bytes | memoryview]) -> int:
        written = 0
        queue = self._to_kernel
        for frame in frames:
            if len(frame) < ETH_HEADER_LEN:  # checked first, as the kernel does
                self._drops[TapDrop.MALFORMED] += 1
            elif not self.link_up:
                self._drops[TapDrop.LINK_DOWN] += 1
            elif len(queue) >= self._capacity:
                self._drops[TapDrop.BUSY] += 1
            else:
                queue.append(bytes(frame))
                written += 1
        return written

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._event)

    # --- the kernel's side, for tests --------------------------------------------------

    def kernel_transmit(self, frames: Iterable[bytes]) -> int:
        """The stack sends frames out of the adapter; returns how many were queued."""
        queue = self._to_daemon
        was_empty = not queue
        queued = 0
        for frame in frames:
            if self.link_up and len(queue) < self._capacity:
                queue.append(bytes(frame))
                queued += 1
        if was_empty and queue:
            os.eventfd_write(self._event, 1)
        return queued

    def kernel_receive(self) -> list[bytes]:
        """Take every frame the daemon has written so far, oldest first."""
        frames = list(self._to_kernel)
        self._to_kernel.clear()
        return frames
