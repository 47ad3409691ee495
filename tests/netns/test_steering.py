"""The mesh port's two sockets (daemon/steering.py), on real loopback sockets: the kernel
hands initiations to the handshake socket and everything else to the data socket, and a
port in use still fails as it did with one socket."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from naas.core.wire import TYPE_COOKIE_REPLY, TYPE_DATA, TYPE_FRAGMENT, TYPE_INITIATION, TYPE_RESPONSE
from naas.daemon.steering import bind_mesh_sockets
from naas.daemon.udp import LinuxUdpSocket


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _types(sock: LinuxUdpSocket, expected: int) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + 2.0
    while len(got) < expected and time.monotonic() < deadline:
        got += [datagram[0] for datagram, _ in sock.receive_batch(64)]
        time.sleep(0.01)
    return got


def test_initiations_go_to_their_own_socket_the_rest_to_the_data_socket() -> None:
    port = _free_port()
    data, handshakes, why_not = bind_mesh_sockets("127.0.0.1", port)
    assert handshakes is not None, why_not
    sent = [TYPE_INITIATION, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE, TYPE_COOKIE_REPLY, TYPE_FRAGMENT, 99]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for kind in sent:
                sender.sendto(bytes((kind,)) + bytes(40), ("127.0.0.1", port))
        assert _types(handshakes, 2) == [TYPE_INITIATION, TYPE_INITIATION]
        assert _types(data, 5) == [TYPE_DATA, TYPE_RESPONSE, TYPE_COOKIE_REPLY, TYPE_FRAGMENT, 99]
        assert data.local_address == handshakes.local_address == ("127.0.0.1", port)
    finally:
        data.close()
        handshakes.close()


def test_a_port_in_use_is_refused_not_shared() -> None:
    port = _free_port()
    data, handshakes, _ = bind_mesh_sockets("127.0.0.1", port)
    try:
        with pytest.raises(OSError) as caught:
            bind_mesh_sockets("127.0.0.1", port)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        data.close()
        if handshakes is not None:
            handshakes.close()
