"""Two sockets on the mesh port: handshake initiations get a kernel queue of their own.

Theory of operation. A flood of initiations (core/cookie.py) used to share the mesh
socket's receive queue with the sessions' datagrams. The agent drains that queue one
``recvfrom`` at a time, a few microseconds each, and a flood of 130,000 initiations a
second from one Python process fills it faster: the kernel then dropped half of all
datagrams, the members' traffic with the flood, and the queue made every ping wait a
tenth of a second, however cheaply the core dropped the initiations it did read.

So the agent binds the mesh port twice, both sockets with ``SO_REUSEPORT``, and attaches
a classic BPF program to the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5) that picks
the socket for each datagram from its first payload byte, the NaaS datagram type
(core/wire.py):

    ldb [0]            the type
    jeq #1, +0, +1     INITIATION?
    ret #1             -> the handshake socket (the second in the group)
    ret #0             -> the data socket: everything else

The handshake socket has a small buffer (``HANDSHAKE_SOCKET_BUFFER``), so a flood
overflows *its* queue and the kernel drops the excess there, without a system call of
ours; the data socket's queue keeps only the mesh's own traffic. The agent reads the
handshake socket in small batches and pauses it after a full one (daemon/runner.py), so
a flood costs a bounded share of its time. Relayed initiations arrive on the handshake
socket too, and are relayed from there. Datagrams leave by the data socket only; both
share the port, so peers see one address.

Binding with ``SO_REUSEPORT`` would let a second agent join the group instead of failing
with "address in use"; ``bind_mesh_sockets`` first binds a plain probe socket to keep
that error. Where the kernel refuses the program, the agent runs with the data socket
alone, as before (``handshakes`` is None).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from naas.core.wire import TYPE_INITIATION
from naas.daemon.udp import DEFAULT_SOCKET_BUFFER, LinuxUdpSocket

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h
HANDSHAKE_SOCKET_BUFFER = 256 * 1024  # about 500 initiations: what a flood may queue

# classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_BPF_LD_B_ABS = 0x00 | 0x10 | 0x20
_BPF_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_INSTRUCTION = struct.Struct("=HBBI")
_STEERING = (
    (_BPF_LD_B_ABS, 0, 0, 0),  # A = the datagram's first byte (the UDP payload's)
    (_BPF_JEQ_K, 0, 1, TYPE_INITIATION),
    (_BPF_RET_K, 0, 0, 1),  # the handshake socket
    (_BPF_RET_K, 0, 0, 0),  # the data socket
)
_FPROG = struct.Struct("HP")  # struct sock_fprog {unsigned short len; struct sock_filter *filter}


def _attach_steering(sock: socket.socket) -> None:
    code = ctypes.create_string_buffer(b"".join(_INSTRUCTION.pack(*insn) for insn in _STEERING))
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, _FPROG.pack(len(_STEERING), ctypes.addressof(code))
    )


def bind_mesh_sockets(
    host: str, port: int, *, offload: bool = False, buffer_bytes: int = DEFAULT_SOCKET_BUFFER
) -> tuple[LinuxUdpSocket, LinuxUdpSocket | None, str]:
    """The data socket, the handshake socket (None where the kernel cannot steer) and,
    then, why not. Raises OSError as `LinuxUdpSocket.bind` does (the port in use)."""
    with LinuxUdpSocket.bind(host, port, buffer_bytes=4096):
        pass  # the port is free: EADDRINUSE from here, as before, not a silent share
    data = LinuxUdpSocket.bind(host, port, buffer_bytes=buffer_bytes, offload=offload, reuse_port=True)
    try:
        handshakes = LinuxUdpSocket.bind(host, port, buffer_bytes=HANDSHAKE_SOCKET_BUFFER, reuse_port=True)
    except OSError as exc:
        return data, None, f"second socket: {exc.strerror or exc}"
    try:
        _attach_steering(data.raw_socket)
    except OSError as exc:
        handshakes.close()
        return data, None, f"SO_ATTACH_REUSEPORT_CBPF: {exc.strerror or exc}"
    return data, handshakes, ""
