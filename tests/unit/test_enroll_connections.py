"""Idle, trickling and too many connections to the enrollment service, over real sockets
on loopback, on asyncio's loop and on uvloop (the PoP's):

    127.0.0.2 --idle TCP / idle TLS / 1 byte a second--> master  (cut by a deadline)
    127.0.0.2 --connection N+1 (N open)----------------> master  (reset at accept)
    127.0.0.1 --enroll---------------------------------> master  (200 meanwhile)

Every wait is bounded: a socket read never blocks longer than the deadline under test
plus a few seconds.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from test_enrollment_http import Lab, _keys, open_lab, request

from naas.pop.client import enroll
from naas.pop.limits import ACCEPT_RETRY_DELAY, MAX_CONNECTIONS_PER_SOURCE, EnrollmentLimits, Refusal

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
SLACK = 1.5  # seconds a cut may come after its deadline on a busy 2-core machine
SHORT = EnrollmentLimits(
    tls_handshake_timeout=1.0,
    header_timeout=1.0,
    body_timeout=1.0,
    keepalive_timeout=1.0,
    connection_lifetime=30.0,
    max_connections_per_source=4,
    max_connections=6,
)


@pytest.fixture(params=sorted(LOOPS))
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path, limits=SHORT, new_loop=LOOPS[request.param]) as opened:
        yield opened


def _tcp(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _tls(port: int, source: str = "127.0.0.2") -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(_tcp(port, source))


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the server closes ``sock``: (seconds it took, bytes received)."""
    started = time.monotonic()
    received = b""
    while True:
        left = started + seconds - time.monotonic()
        if left <= 0:
            pytest.fail(f"still open after {seconds} s")
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            break
        except TimeoutError:
            continue
        if not data:
            break
        received += data
    return time.monotonic() - started, received


def _refused(port: int, source: str = "127.0.0.2") -> float:
    """Seconds until a new connection from ``source`` is reset or closed by the server
    (the reset may come so fast that connect() itself reports it)."""
    started = time.monotonic()
    try:
        sock = _tcp(port, source)
    except ConnectionResetError:
        return time.monotonic() - started
    with sock:
        _closed_within(sock, SLACK)
    return time.monotonic() - started


def _eventually(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    """``condition`` became true within ``seconds`` (the server counts a failed handshake
    a loop iteration after it closed the connection)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except (ConnectionResetError, ssl.SSLError):
        return False


def _trickle(sock: socket.socket, data: bytes, every: float) -> tuple[int, float]:
    """Send ``data`` one byte per ``every`` seconds until the server closes the
    connection: (bytes sent, seconds it took). Bounded by len(data) * every."""
    started = time.monotonic()
    for sent in range(len(data)):
        try:
            sock.sendall(data[sent : sent + 1])
        except OSError:
            return sent, time.monotonic() - started
        sock.settimeout(every)
        try:
            if sock.recv(4096) == b"":
                return sent + 1, time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return sent + 1, time.monotonic() - started
        return sent + 1, time.monotonic() - started  # an answer: the server gave up
    pytest.fail("the server took every byte, one a second")


def test_idle_tcp_connection_is_cut_at_the_tls_handshake_timeout(lab: Lab) -> None:
    with _tcp(lab.master.port) as sock:
        took, _ = _closed_within(sock, SHORT.tls_handshake_timeout + SLACK)
    assert took >= SHORT.tls_handshake_timeout - 0.2
    assert _eventually(lambda: lab.master.service.refusals[Refusal.TLS_HANDSHAKE_FAILED] == 1)


def test_idle_tls_connection_is_cut_at_the_header_timeout(lab: Lab) -> None:
    with _tls(lab.master.port) as sock:
        took, _ = _closed_within(sock, SHORT.header_timeout + SLACK)
    assert took >= SHORT.header_timeout - 0.2
    assert lab.master.service.refusals[Refusal.HEADER_TIMEOUT] == 1


def test_headers_sent_one_byte_a_second_are_cut(tmp_path: Path) -> None:
    limits = EnrollmentLimits(header_timeout=2.5)
    with (
        open_lab(tmp_path, limits=limits, new_loop=uvloop.new_event_loop) as lab,
        _tls(lab.master.port) as sock,
    ):
        headers = b"POST /v1/enroll HTTP/1.1\r\nHost: pop\r\nContent-Type: application/json\r\n\r\n"
        sent, took = _trickle(sock, headers, every=1.0)
        assert 2 <= sent < len(headers) and took < limits.header_timeout + SLACK
        assert lab.master.service.refusals[Refusal.HEADER_TIMEOUT] == 1


def test_a_body_sent_one_byte_a_second_gets_408(lab: Lab) -> None:
    with _tls(lab.master.port) as sock:
        sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: pop\r\nContent-Length: 200\r\n\r\n{")
        sent, took = _trickle(sock, b'"network": "acme"' * 10, every=0.4)
        assert took < SHORT.body_timeout + SLACK
        _closed_within(sock, SLACK)
    assert sent >= 2
    assert lab.master.service.refusals[Refusal.BODY_TIMEOUT] == 1
    assert lab.master.service.enroll_requests == 1


def test_the_408_answer_is_one_line(tmp_path: Path) -> None:
    with open_lab(tmp_path, limits=SHORT) as lab, _tls(lab.master.port) as sock:
        sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: pop\r\nContent-Length: 50\r\n\r\n{")
        _, answer = _closed_within(sock, SHORT.body_timeout + SLACK)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {"error": "request body not received within 1 s"}


def test_an_idle_kept_alive_connection_is_cut(lab: Lab) -> None:
    with _tls(lab.master.port) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: pop\r\n\r\n")
        took, answer = _closed_within(sock, SHORT.keepalive_timeout + SLACK)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"status": "ok"' in answer
    assert took >= SHORT.keepalive_timeout - 0.2
    assert lab.master.service.refusals[Refusal.IDLE_TIMEOUT] == 1


def test_no_connection_outlives_its_lifetime(tmp_path: Path) -> None:
    limits = EnrollmentLimits(header_timeout=20.0, connection_lifetime=1.0)
    with open_lab(tmp_path, limits=limits) as lab, _tls(lab.master.port) as sock:
        _closed_within(sock, 1.0 + SLACK)
        assert lab.master.service.refusals[Refusal.LIFETIME] == 1


def test_plain_http_or_garbage_instead_of_tls_is_dropped_without_traceback(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for garbage in (b"GET /v1/health HTTP/1.1\r\nHost: pop\r\n\r\n", bytes(range(256)) * 4):
        with _tcp(lab.master.port) as sock:
            sock.sendall(garbage)
            _closed_within(sock, SLACK)
    assert _eventually(lambda: lab.master.service.refusals[Refusal.TLS_HANDSHAKE_FAILED] == 2)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


def test_the_connection_past_the_cap_of_one_source_is_reset_while_others_enroll(lab: Lab) -> None:
    cap = SHORT.max_connections_per_source
    held = [_tcp(lab.master.port) for _ in range(cap)]
    try:
        assert _refused(lab.master.port) < 0.5, "refused at once, not after a timeout"
        assert all(_still_open(sock) for sock in held)
        assert lab.master.service.refusals[Refusal.TOO_MANY_FROM_SOURCE] == 1
        result = enroll(lab.invitation(lab.invite("web")), *_keys())  # from 127.0.0.1
        assert result.certificate.name == "web"
    finally:
        for sock in held:
            sock.close()
    # the places come back once those connections are closed
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if request(lab.master, "GET", "/v1/health", source="127.0.0.2")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    else:
        pytest.fail("127.0.0.2 stays refused after closing its connections")


def test_the_total_cap_holds_across_sources(lab: Lab) -> None:
    sources = ["127.0.0.2"] * 4 + ["127.0.0.3"] * 2
    held = [_tcp(lab.master.port, source) for source in sources]
    try:
        assert _refused(lab.master.port, "127.0.0.4") < 0.5
        assert lab.master.service.refusals[Refusal.TOO_MANY_CONNECTIONS] == 1
    finally:
        for sock in held:
            sock.close()


def test_1001_idle_connections_from_one_host_do_not_starve_enrollment(tmp_path: Path) -> None:
    with open_lab(tmp_path, new_loop=uvloop.new_event_loop) as lab:  # the real limits
        held: list[socket.socket] = []
        try:
            started = time.monotonic()
            reset_at_connect = 0
            for _ in range(1001):
                try:
                    held.append(_tcp(lab.master.port))
                except ConnectionResetError:
                    reset_at_connect += 1
                assert time.monotonic() - started < 60
            opened = time.monotonic() - started
            enrolled_at = time.monotonic()
            result = enroll(lab.invitation(lab.invite("web")), *_keys())
            took = time.monotonic() - enrolled_at
            assert result.certificate.name == "web" and took < 3
            refused = lab.master.service.refusals[Refusal.TOO_MANY_FROM_SOURCE]
            assert refused == 1001 - MAX_CONNECTIONS_PER_SOURCE
            assert sum(_still_open(sock) for sock in held) <= MAX_CONNECTIONS_PER_SOURCE
            print(f"1001 connections in {opened:.2f} s ({reset_at_connect} reset at connect)", end="; ")
            print(f"enrolled in {took:.3f} s")
        finally:
            for sock in held:
                sock.close()


def test_out_of_descriptors_pauses_accepting_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_lab(tmp_path, limits=SHORT) as lab:  # asyncio's loop: its methods can be wrapped
        loop = lab.loop.loop
        real_accept = loop.sock_accept
        failures = [
            OSError(errno.EMFILE, "Too many open files"),
            ConnectionAbortedError(errno.ECONNABORTED, "gone"),
        ]

        async def failing_accept(sock: socket.socket) -> tuple[socket.socket, object]:
            if failures:
                raise failures.pop()
            return await real_accept(sock)

        loop.sock_accept = failing_accept  # type: ignore[method-assign]  # from the next accept on
        assert request(lab.master, "GET", "/v1/health")[0] == 200  # accepted by the call under way
        started = time.monotonic()
        assert request(lab.master, "GET", "/v1/health")[0] == 200  # waited in the backlog
        took = time.monotonic() - started
    assert ACCEPT_RETRY_DELAY - 0.1 <= took < ACCEPT_RETRY_DELAY + SLACK
    assert lab.master.service.refusals[Refusal.ACCEPT_FAILED] == 1, "a client gone is no failure"
    assert "enrollment accept failed: Too many open files; pausing 1 s" in caplog.text


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/health?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: pop\r\n\r\n",  # request line
        b"GET /v1/health HTTP/1.1\r\nHost: pop\r\nX-A: " + b"a" * 5000 + b"\r\n\r\n",  # one field
        b"GET /v1/health HTTP/1.1\r\nHost: pop\r\n"
        + b"".join(b"X-%d: 1\r\n" % n for n in range(40))
        + b"\r\n",
        b"\x16\x03\x01 not HTTP at all\r\n\r\n",
    ],
    ids=["long-line", "long-field", "many-headers", "garbage"],
)
def test_oversized_or_garbled_headers_get_400_and_no_traceback(
    tmp_path: Path, head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with open_lab(tmp_path, limits=SHORT) as lab, _tls(lab.master.port) as sock:
        sock.sendall(head)
        _, answer = _closed_within(sock, SLACK)
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], "debug level only"
