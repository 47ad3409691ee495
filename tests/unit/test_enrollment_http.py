"""Enrollment over real HTTPS: aiohttp PoPs on 127.0.0.1 in a background loop, the real
synchronous client, one SQLite file shared by both PoPs.

    client --TLS (pin checked before the token goes out)--> master  \\
                                                                       pop.db
    client --TLS-------------------------------------------> slave   /
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from aiohttp import web

from naas.control import members
from naas.control.network import PopNetwork
from naas.core.crypto import certificate_problem, ed25519_public, x25519_public
from naas.core.network_document import open_document_untrusted
from naas.model.certificate import Certificate
from naas.model.config import parse_config
from naas.model.ids import Endpoint
from naas.model.network import NetworkInfo, PopInfo
from naas.pop.ca import issue_certificate
from naas.pop.client import EnrollmentError, enroll, fetch_document, renew_certificate
from naas.pop.invitations import Invitation, make_token, token_hash
from naas.pop.limits import EnrollmentLimits, Refusal
from naas.pop.server import EnrollmentService, start_enrollment_site
from naas.pop.store import PopStore, sqlite_url
from naas.pop.tls import TlsMaterial, make_tls_material, server_ssl_context, write_tls_material

NOW = 1_700_000_000.0
WEEK = 7 * 86_400
CA_PRIVATE = os.urandom(32)
CA_PUBLIC = ed25519_public(CA_PRIVATE)
CONFIG = parse_config(
    """
[network]
name = "acme"
subnet = "172.32.0.0/16"

[[pop]]
name = "master"
address = "10.0.0.1"

[[pop]]
name = "slave"
address = "10.0.0.2"

[[client]]
name = "web"
ip = "172.32.1.10"
groups = ["frontend"]

[[client]]
name = "db"
"""
)


@dataclass
class Pop:
    name: str
    service: EnrollmentService
    tls: TlsMaterial
    port: int
    store: PopStore
    enrolled: list[Certificate] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)


@dataclass
class Lab:
    store: PopStore
    master: Pop
    slave: Pop
    clock: list[float]
    loop: LoopThread
    path: Path
    info: NetworkInfo

    def invite(self, client: str, n: int = 1) -> str:
        token = make_token(bytes([n]) * 32)
        self.store.add_invitation(token_hash(token), client, self.clock[0], self.clock[0] + WEEK)
        return token

    def invitation(self, token: str, *pops: Pop) -> Invitation:
        chosen = pops or (self.master,)
        return Invitation("acme", token, tuple((p.endpoint, p.tls.pin) for p in chosen))


class LoopThread:
    """An asyncio loop running in a daemon thread, for the servers."""

    def __init__(self, new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, service: EnrollmentService, cert: Path, key: Path) -> int:
        start = start_enrollment_site(service, "127.0.0.1", 0, server_ssl_context(cert, key))
        runner, port = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        self.runners.append(runner)
        return port

    def close(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _keys() -> tuple[bytes, bytes]:
    return x25519_public(os.urandom(32)), ed25519_public(os.urandom(32))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path) as opened:
        yield opened


@contextmanager
def open_lab(
    tmp_path: Path,
    *,
    limits: EnrollmentLimits | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Iterator[Lab]:
    """Two PoPs (master, slave) on 127.0.0.1 sharing one store; clients "web" and "db"."""
    store = PopStore(sqlite_url(tmp_path / "pop.db"))
    store.create_schema()
    clock = [NOW]
    tls = {name: make_tls_material(name) for name in ("master", "slave")}
    pop_infos = tuple(
        PopInfo(
            name=pop.name,
            mesh_endpoint=Endpoint(pop.address, CONFIG.network.mesh_port),
            enrollment_endpoint=Endpoint(pop.address, CONFIG.network.enrollment_port),
            tls_pin=tls[pop.name].pin,
        )
        for pop in CONFIG.pops
    )
    for pop in CONFIG.pops:
        overlay = CONFIG.pop_overlay_ip(pop.name)
        store.add_member(
            issue_certificate(
                CA_PRIVATE,
                network="acme",
                name=pop.name,
                node_id=store.allocate_node_id(),
                is_pop=True,
                static_public=_keys()[0],
                signing_public=_keys()[1],
                ip=IPv4Interface(f"{overlay}/16"),
                groups=(),
                now=int(NOW),
                days=365,
            ),
            "init",
        )
    info = NetworkInfo(
        name="acme",
        mesh_port=CONFIG.network.mesh_port,
        ca_public=CA_PUBLIC,
        pops=pop_infos,
        subnet=CONFIG.network.subnet,
    )
    loop = LoopThread(new_loop)
    pops: dict[str, Pop] = {}
    try:
        for name in ("master", "slave"):
            enrolled: list[Certificate] = []
            pop_store = PopStore(sqlite_url(tmp_path / "pop.db"))
            net = PopNetwork(CONFIG, pop_store, tmp_path, CA_PRIVATE, clock=lambda: clock[0], known_info=info)
            service = EnrollmentService(
                net, name, on_enrolled=enrolled.append, limits=limits, monotonic=monotonic
            )
            cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
            write_tls_material(tls[name], cert, key)
            port = loop.serve(service, cert, key)
            pops[name] = Pop(name, service, tls[name], port, pop_store, enrolled)
        yield Lab(store, pops["master"], pops["slave"], clock, loop, tmp_path, info)
    finally:
        loop.close()


def test_enrollment_succeeds(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = lab.invite("web")
    static_public, signing_public = _keys()
    result = enroll(lab.invitation(token), static_public, signing_public)
    cert = result.certificate
    assert (cert.name, cert.node_id, cert.is_pop) == ("web", 3, False)
    assert cert.ip == IPv4Interface("172.32.1.10/16") and cert.groups == ("frontend",)
    assert (cert.static_public, cert.signing_public) == (static_public, signing_public)
    assert certificate_problem(cert, CA_PUBLIC, "acme", NOW) is None
    assert result.network.ca_public == CA_PUBLIC and result.pop == lab.master.endpoint
    by_name = {m.certificate.name: m for m in result.members}
    assert set(by_name) == {"master", "slave", "web"}
    assert by_name["master"].endpoints == (Endpoint("10.0.0.1", 5640),)
    assert by_name["web"].endpoints == ()
    assert lab.master.enrolled == [cert] and lab.store.member("web") == cert
    # Logged with name and node id; the token appears nowhere, not even hashed.
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "name=web node_id=3" in text
    assert token not in text and token_hash(token) not in text


def test_dynamic_address_for_a_client_without_ip(lab: Lab) -> None:
    cert = enroll(lab.invitation(lab.invite("db")), *_keys()).certificate
    # .1 and .2 are the PoPs; the DHCP range starts after them.
    assert cert.ip == IPv4Interface("172.32.0.3/16")


def test_reused_url_fails_at_either_pop(lab: Lab) -> None:
    token = lab.invite("web")
    enroll(lab.invitation(token), *_keys())
    for pop in (lab.master, lab.slave):
        with pytest.raises(EnrollmentError, match="invitation already used"):
            enroll(lab.invitation(token, pop), *_keys(), attempts=1)
    assert lab.slave.service.enroll_requests == 1 and lab.slave.enrolled == []


def test_expired_url(lab: Lab) -> None:
    token = lab.invite("web")
    lab.clock[0] = NOW + WEEK + 1
    with pytest.raises(EnrollmentError, match="invitation expired"):
        enroll(lab.invitation(token), *_keys())
    assert lab.master.service.enroll_requests == 1  # a refusal is final: no retry


def test_tampered_token(lab: Lab) -> None:
    token = lab.invite("web")
    tampered = ("B" if token[0] != "B" else "C") + token[1:]
    with pytest.raises(EnrollmentError, match="invitation unknown"):
        enroll(lab.invitation(tampered), *_keys())
    assert lab.store.invitations()[0].used_at is None


def test_wrong_pin_is_caught_before_the_token_is_sent(lab: Lab) -> None:
    token = lab.invite("web")
    impostor_pin = make_tls_material("impostor").pin
    bad = Invitation("acme", token, ((lab.master.endpoint, impostor_pin),))
    with pytest.raises(EnrollmentError, match="does not match the invitation's pin"):
        enroll(bad, *_keys())
    assert lab.master.service.enroll_requests == 0  # the server never saw a request
    assert lab.store.invitations()[0].used_at is None
    assert enroll(lab.invitation(token), *_keys()).certificate.name == "web"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_pop_retries_with_backoff_then_fails(lab: Lab) -> None:
    token = lab.invite("web")
    dead = Invitation("acme", token, ((Endpoint("127.0.0.1", _closed_port()), lab.master.tls.pin),))
    sleeps: list[float] = []
    with pytest.raises(EnrollmentError, match="cannot reach any PoP") as info:
        enroll(dead, *_keys(), attempts=4, backoff=0.01, sleep=sleeps.append)
    assert sleeps == [0.01, 0.02, 0.04]
    assert "127.0.0.1:" in str(info.value)


def test_second_pop_is_used_when_the_first_is_down(lab: Lab) -> None:
    token = lab.invite("web")
    dead = (Endpoint("127.0.0.1", _closed_port()), lab.master.tls.pin)
    both = Invitation("acme", token, (dead, (lab.slave.endpoint, lab.slave.tls.pin)))
    result = enroll(both, *_keys(), attempts=1)
    assert result.pop == lab.slave.endpoint
    assert lab.slave.enrolled == [result.certificate]
    assert lab.store.invitations()[0].used_by_pop == "slave"


def request(
    pop: Pop, method: str, path: str, body: bytes = b"", source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], dict[str, object]]:
    """One HTTPS request from ``source`` (any 127/8 address): status, headers, JSON answer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(
        "127.0.0.1", pop.port, context=context, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def _raw(pop: Pop, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    status, _, answer = request(pop, method, path, body)
    return status, answer


def test_health(lab: Lab) -> None:
    assert _raw(lab.slave, "GET", "/v1/health") == (
        200,
        {"status": "ok", "network": "acme", "pop": "slave"},
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not JSON"),
        (b"[]", "object"),
        (b'{"token": "x"}', "network"),
        (b'{"network": "other"}', "another network"),
        (b'{"network": "acme"}', "token: missing"),
        (b'{"network": "acme", "token": "abc"}', "token: malformed"),
    ],
)
def test_malformed_requests_get_400(lab: Lab, body: bytes, words: str) -> None:
    status, answer = _raw(lab.master, "POST", "/v1/enroll", body)
    assert status == 400 and words in str(answer["error"])


def test_malformed_keys_get_400(lab: Lab) -> None:
    token = lab.invite("web")
    body = {"network": "acme", "token": token, "static_public": "AAAA", "signing_public": "x"}
    status, answer = _raw(lab.master, "POST", "/v1/enroll", json.dumps(body).encode())
    assert status == 400 and "static_public" in str(answer["error"])
    assert lab.store.invitations()[0].used_at is None


def test_deeply_nested_json_is_a_400_on_one_line_without_traceback(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for body in (b"[" * 15_000, b'{"network": ' + b"[" * 15_000, b"[" * 5_000 + b"]" * 5_000):
        status, answer = _raw(lab.master, "POST", "/v1/enroll", body)
        assert (status, answer) == (400, {"error": "body is not JSON"})
    assert lab.master.service.refusals[Refusal.BAD_REQUEST] == 3
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_oversized_request_is_refused(lab: Lab) -> None:
    status, answer = _raw(lab.master, "POST", "/v1/enroll", b" " * (64 * 1024))
    assert status == 413 and "larger" in str(answer["error"])


def test_tls_material_key_file_is_private_and_seed_is_deterministic(tmp_path: Path) -> None:
    material = make_tls_material("master")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    key.write_bytes(b"old")
    key.chmod(0o644)
    write_tls_material(material, cert, key)
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes() == material.key_pem
    assert b"PRIVATE KEY" not in repr(material).encode()
    seeded = [make_tls_material("m", private_key_seed=b"s" * 32) for _ in range(2)]
    assert seeded[0].pin == seeded[1].pin != material.pin


def test_a_member_renews_and_asks_for_the_document_with_its_certificate(lab: Lab) -> None:
    """POST /v1/renew and /v1/member/document: no token, the certificate and a signature."""
    static_private, signing_private = os.urandom(32), os.urandom(32)
    keys = (x25519_public(static_private), ed25519_public(signing_private))
    cert = enroll(lab.invitation(lab.invite("web")), *keys).certificate
    pop = PopInfo("master", Endpoint("127.0.0.1", 5640), lab.master.endpoint, lab.master.tls.pin)
    network = NetworkInfo("acme", 5640, CA_PUBLIC, (pop,), subnet=CONFIG.network.subnet)
    lab.clock[0] += 3600
    renewed = renew_certificate(network, cert, signing_private, now=lab.clock[0])
    assert (renewed.node_id, renewed.ip, renewed.static_public) == (cert.node_id, cert.ip, cert.static_public)
    assert renewed.not_after == cert.not_after + 3600 and renewed.groups == ("frontend",)
    assert lab.store.member("web") == renewed and lab.master.enrolled[-1] == renewed
    again = renew_certificate(network, cert, signing_private, now=lab.clock[0])
    assert again == renewed, "a retry with the old certificate gets the renewed one"
    with pytest.raises(EnrollmentError, match="signing key"):
        renew_certificate(network, renewed, os.urandom(32), now=lab.clock[0])
    with pytest.raises(EnrollmentError, match="clock"):
        renew_certificate(network, renewed, signing_private, now=lab.clock[0] + 1000)

    assert fetch_document(network, renewed, signing_private, now=lab.clock[0]) is None, "none yet"
    members.revoke(lab.master.service._net, "web")
    body = fetch_document(network, renewed, signing_private, now=lab.clock[0])
    assert body is not None
    assert open_document_untrusted(body, CA_PUBLIC, "acme").revoked_ids == {cert.node_id}
    with pytest.raises(EnrollmentError, match="revoked"):
        renew_certificate(network, renewed, signing_private, now=lab.clock[0])
    assert lab.master.service.refusals[Refusal.RENEWAL_REFUSED] == 2
