"""The PoP's HTTPS enrollment service (aiohttp).

A new member POSTs ``/v1/enroll`` with its invitation token and its two public keys
over TLS. The PoP's TLS certificate is self-signed: clients authenticate it by the pin
in the invitation URL, not by a PKI. The path of one connection and one enrollment::

    accept -> ConnectionTable: too many open from this source, or in all? close (RST)
    -> TLS handshake within TLS_HANDSHAKE_TIMEOUT
    -> complete request headers within HEADER_TIMEOUT        (else the connection is cut)
    -> FailureLimiter: this source failed too often? 429 + Retry-After, body unread
    -> body within BODY_TIMEOUT (else 408) and MAX_REQUEST_BYTES (else 413)
    -> JSON shape -> network name -> token form -> key forms                  (else 400)
    -> store.redeem (one SQL transaction, in a worker thread) calls _issue(grant):
         address (addresses.choose_ip), groups from naas.toml, CA signature (ca.py)
    -> 200 {certificate, network, members}, then on_enrolled(certificate)
    -> the next request's headers within KEEPALIVE_TIMEOUT, or the connection is cut;
       no connection outlives CONNECTION_LIFETIME, whatever it does

An unusable invitation is a 403 (``invitation unknown``, ``invitation already used``,
``invitation expired``) and an exhausted address pool a 503. Every 400, 403, 408 and
413 spends one credit of the source's failure bucket; a redemption retried with the
same token and keys gets its certificate again (store.py) and spends nothing. Every
refusal, of a request or of a connection, is counted by reason (``refusals``). Bytes
that are not HTTP (a request line or header over MAX_HEADER_LINE, more than MAX_HEADERS
fields) get aiohttp's 400 and one debug line, never a traceback.

The limiter and the connection table are pure (``now`` is passed in); the aiohttp side
only calls them. The token is never logged, not even hashed; an enrollment logs the
member's name and node id. ``GET /v1/health`` answers without touching the store.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import ipaddress
import json
import logging
import math
import os
import socket
import ssl
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from naas.model.certificate import Certificate
from naas.model.codec import (
    CodecError,
    b64d,
    certificate_to_dict,
    member_to_dict,
    network_to_dict,
)
from naas.model.config import NetworkConfig
from naas.model.network import MemberRecord, NetworkInfo
from naas.pop.addresses import AddressPoolExhausted, choose_ip
from naas.pop.ca import issue_certificate
from naas.pop.invitations import ENROLL_PATH, is_well_formed_token, spki_pin, token_hash
from naas.pop.store import Grant, PopStore, RedeemError

log = logging.getLogger("naas.pop.server")

HEALTH_PATH = "/v1/health"
TLS_DAYS = 3650

# -- enrollment limits (docs/operations.md "Enrollment limits") -----------------------------
# Sizes: what one request may hold.
MAX_REQUEST_BYTES = 16 * 1024  # request body; larger: 413
MAX_HEADER_LINE = 4096  # bytes of the request line and of each header field; aiohttp: 400
MAX_HEADERS = 32  # header fields per request
# Time: every phase of a connection has a deadline (seconds).
TLS_HANDSHAKE_TIMEOUT = 5.0  # accept -> TLS handshake done
HEADER_TIMEOUT = 5.0  # TLS handshake done -> the first request's headers complete
BODY_TIMEOUT = 5.0  # headers complete -> body complete; else 408 and close
KEEPALIVE_TIMEOUT = 5.0  # an answer handed over -> the next request's headers complete
CONNECTION_LIFETIME = 120.0  # TLS handshake done -> cut, whatever happens (the store may wait 30 s)
TLS_SHUTDOWN_TIMEOUT = 2.0  # a closing connection waits this long for the peer's close_notify
SHUTDOWN_GRACE = 5.0  # a stopping PoP lets enrollments in progress finish this long
ACCEPT_RETRY_DELAY = 1.0  # accept() failed (out of descriptors): pause accepting this long
# Connections: with the common limit of 1,024 descriptors, one host cannot take them all.
MAX_CONNECTIONS_PER_SOURCE = 16  # open connections per IPv4 address / IPv6 /64
MAX_CONNECTIONS = 512  # open connections in all; the agent and the store need descriptors too
LISTEN_BACKLOG = 128
# Failed attempts (400, 403, 408, 413): a token bucket per source.
FAILURE_BURST = 10  # failures a source may make in a row ...
FAILURE_REFILL_SECONDS = 3.0  # ... then one more per this many seconds; meanwhile 429
MAX_TRACKED_SOURCES = 4096  # sources remembered; the least recently failed forgotten first


@dataclass(frozen=True, slots=True)
class EnrollmentLimits:
    """The limits above as one value (tests shorten the timeouts)."""

    tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    connection_lifetime: float = CONNECTION_LIFETIME
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE
    max_connections: int = MAX_CONNECTIONS
    failure_burst: int = FAILURE_BURST
    failure_refill_seconds: float = FAILURE_REFILL_SECONDS
    max_tracked_sources: int = MAX_TRACKED_SOURCES


class Refusal(Enum):
    """Why a request or a connection was refused; each has a counter (``refusals``)."""

    BAD_REQUEST = "bad_request"  # 400
    INVITATION_UNKNOWN = "invitation_unknown"  # 403
    INVITATION_USED = "invitation_used"  # 403
    INVITATION_EXPIRED = "invitation_expired"  # 403
    BODY_TIMEOUT = "body_timeout"  # 408
    TOO_LARGE = "too_large"  # 413
    RATE_LIMITED = "rate_limited"  # 429
    TOO_MANY_FROM_SOURCE = "too_many_connections_from_source"  # closed at accept
    TOO_MANY_CONNECTIONS = "too_many_connections"  # closed at accept
    ACCEPT_FAILED = "accept_failed"  # accept() itself failed (out of descriptors)
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # failed or too slow
    HEADER_TIMEOUT = "header_timeout"  # cut
    IDLE_TIMEOUT = "idle_timeout"  # cut
    LIFETIME = "connection_lifetime"  # cut


# -- TLS material ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    cert_pem: bytes
    key_pem: bytes  # secret: write it only through write_tls_material (mode 0600)

    @property
    def pin(self) -> str:
        return tls_pin_of_pem(self.cert_pem)

    def __repr__(self) -> str:
        return f"TlsMaterial(pin={self.pin!r})"


def make_tls_material(
    name: str = "naas-pop",
    *,
    private_key_seed: bytes | None = None,
    now: float | None = None,
    days: int = TLS_DAYS,
) -> TlsMaterial:
    """A fresh ECDSA P-256 key and a self-signed certificate for it.

    With ``private_key_seed`` (>= 32 bytes) the key is derived from the seed, so the
    pin can be recomputed from a stored secret; without it the key is random.
    """
    curve = ec.SECP256R1()
    if private_key_seed is None:
        key = ec.generate_private_key(curve)
        serial = x509.random_serial_number()
    else:
        if len(private_key_seed) < 32:
            raise ValueError("TLS key seed must be at least 32 bytes")
        digest = hashlib.sha512(b"naas tls key\x00" + private_key_seed).digest()
        order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 n
        key = ec.derive_private_key(int.from_bytes(digest, "big") % (order - 1) + 1, curve)
        serial = int.from_bytes(hashlib.sha256(digest).digest()[:16], "big") >> 1 or 1
    start = datetime.datetime.fromtimestamp(
        now if now is not None else datetime.datetime.now(datetime.UTC).timestamp(),
        datetime.UTC,
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"naas PoP {name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start - datetime.timedelta(days=1))
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TlsMaterial(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def tls_pin_of_pem(cert_pem: bytes) -> str:
    """The invitation pin (``sha256:...``) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return spki_pin(cert.public_bytes(serialization.Encoding.DER))


def write_tls_material(material: TlsMaterial, cert_path: Path, key_path: Path) -> None:
    """Write the certificate (0644) and the key (0600, created so: never readable)."""
    _write_file(key_path, material.key_pem, 0o600)
    _write_file(cert_path, material.cert_pem, 0o644)


def load_tls_material(cert_path: Path, key_path: Path) -> TlsMaterial:
    return TlsMaterial(cert_pem=cert_path.read_bytes(), key_pem=key_path.read_bytes())


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the file may have existed with looser bits
        os.write(fd, data)
    finally:
        os.close(fd)


# -- the limits' pure logic -----------------------------------------------------------------


def source_of(host: str | None) -> str:
    """The key a peer is limited under: its IPv4 address, or its IPv6 /64."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class FailureLimiter:
    """Failed attempts per source as token buckets (pure: ``now`` is passed in).

    A source starts with ``burst`` credits; each failure spends one, and credit comes
    back at one per ``refill_seconds`` up to ``burst``. With less than one credit the
    source must wait ``retry_after(source, now)`` seconds. Only failures are recorded:
    a source that never fails has no entry. A source whose bucket is full again is
    forgotten, and past ``max_sources`` entries the least recently failed is forgotten
    first (it then starts again with a full bucket), so memory stays bounded.
    """

    def __init__(self, burst: int, refill_seconds: float, max_sources: int) -> None:
        if burst < 1 or refill_seconds <= 0 or max_sources < 1:
            raise ValueError("failure limiter: burst, refill and table size must be positive")
        self._burst = burst
        self._refill = refill_seconds
        self._max = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (credit, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, source: str, now: float) -> float:
        """0.0 if ``source`` may try now, else the seconds until it may."""
        credit = self._credit(source, now)
        return 0.0 if credit >= 1.0 else (1.0 - credit) * self._refill

    def failed(self, source: str, now: float) -> None:
        """``source`` made a failed attempt at ``now``."""
        self._buckets[source] = (max(0.0, self._credit(source, now) - 1.0), now)
        self._buckets.move_to_end(source)
        while self._buckets:
            oldest = next(iter(self._buckets))
            if len(self._buckets) <= self._max and self._credit(oldest, now) < self._burst:
                break
            del self._buckets[oldest]

    def _credit(self, source: str, now: float) -> float:
        entry = self._buckets.get(source)
        if entry is None:
            return float(self._burst)
        credit, at = entry
        return min(float(self._burst), credit + max(0.0, now - at) / self._refill)


class ConnectionTable:
    """Open connections per source and in all (pure): may one more open?"""

    def __init__(self, per_source: int, total: int) -> None:
        if per_source < 1 or total < 1:
            raise ValueError("connection table: limits must be positive")
        self._per_source = per_source
        self._total = total
        self._open: dict[str, int] = {}
        self.total = 0

    def open_from(self, source: str) -> int:
        return self._open.get(source, 0)

    def admit(self, source: str) -> Refusal | None:
        """Count one more connection from ``source``, or say why it is refused."""
        if self._open.get(source, 0) >= self._per_source:
            return Refusal.TOO_MANY_FROM_SOURCE
        if self.total >= self._total:
            return Refusal.TOO_MANY_CONNECTIONS
        self._open[source] = self._open.get(source, 0) + 1
        self.total += 1
        return None

    def release(self, source: str) -> None:
        """A connection ``admit`` counted has closed."""
        left = self._open.get(source, 0) - 1
        if left < 0:
            raise ValueError(f"connection table: no open connection from {source}")
        if left:
            self._open[source] = left
        else:
            del self._open[source]
        self.total -= 1


# -- the service ----------------------------------------------------------------------------


class EnrollmentService:
    """Redeems invitations for one PoP; ``app()`` is the aiohttp application."""

    def __init__(
        self,
        config: NetworkConfig,
        pop_name: str,
        store: PopStore,
        ca_private: bytes,
        network_info: NetworkInfo,
        clock: Callable[[], float],
        on_enrolled: Callable[[Certificate], None],
        *,
        limits: EnrollmentLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        config.pop(pop_name)  # raises ConfigError for an unknown PoP
        self._config = config
        self._pop_name = pop_name
        self._store = store
        self._ca_private = ca_private
        self._network_info = network_info
        self._clock = clock  # wall clock: certificates and invitations
        self._monotonic = monotonic  # the failure limiter's clock
        self._on_enrolled = on_enrolled
        self._pop_endpoints = {pop.name: (pop.mesh_endpoint,) for pop in network_info.pops}
        self.limits = limits or EnrollmentLimits()
        self.failures = FailureLimiter(
            self.limits.failure_burst, self.limits.failure_refill_seconds, self.limits.max_tracked_sources
        )
        self.enroll_requests = 0  # POSTs that reached the handler (tests, status)
        self.enrolled = 0
        self.enrolled_again = 0  # retries answered with the certificate already issued
        self.refusals: Counter[Refusal] = Counter()

    def status(self) -> dict[str, Any]:
        """The counters, for ``naas status`` of a PoP."""
        return {
            "enrolled": self.enrolled,
            "enrolled_again": self.enrolled_again,
            "enroll_requests": self.enroll_requests,
            "refusals": dict(sorted((reason.value, n) for reason, n in self.refusals.items())),
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(ENROLL_PATH, self._handle_enroll)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        return app

    async def _handle_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "network": self._config.name, "pop": self._pop_name})

    async def _handle_enroll(self, request: web.Request) -> web.Response:
        self.enroll_requests += 1
        source = source_of(request.remote)
        wait = self.failures.retry_after(source, self._monotonic())
        if wait > 0:  # before the body is even read
            self.refusals[Refusal.RATE_LIMITED] += 1
            log.debug("enrollment refused reason=rate_limited peer=%s", request.remote)
            limited = _error(429, "too many failed attempts from this address", close=True)
            limited.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return limited
        try:
            body = await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return self._failed(source, Refusal.TOO_LARGE, f"request larger than {MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            message = f"request body not received within {self.limits.body_timeout:g} s"
            return self._failed(source, Refusal.BODY_TIMEOUT, message)
        parsed = self._parse_request_untrusted(body)
        if isinstance(parsed, str):
            log.info("enrollment rejected problem=%r peer=%s", parsed, request.remote)
            return self._failed(source, Refusal.BAD_REQUEST, parsed)
        token, static_public, signing_public = parsed
        now = self._clock()
        issued: list[Certificate] = []

        def issue(grant: Grant) -> Certificate:
            issued.append(self._issue(grant, static_public, signing_public, now))
            return issued[-1]

        keys = (static_public, signing_public)
        try:
            cert, certs = await asyncio.to_thread(self._redeem, token_hash(token), now, issue, keys)
        except RedeemError as exc:
            log.info("enrollment refused reason=%s peer=%s", exc.reason, request.remote)
            return self._failed(source, Refusal(f"invitation_{exc.reason}"), str(exc))
        except AddressPoolExhausted as exc:
            log.warning("enrollment failed: %s", exc)
            return _error(503, "no free overlay address left")
        except Exception:
            log.exception("enrollment failed peer=%s", request.remote)
            return _error(500, "internal error")
        again = not issued
        if again:
            self.enrolled_again += 1
        else:
            self.enrolled += 1
        log.info(
            "enrolled%s name=%s node_id=%d ip=%s pop=%s peer=%s",
            " again (same invitation, same keys: the certificate already issued)" if again else "",
            cert.name,
            cert.node_id,
            cert.ip,
            self._pop_name,
            request.remote,
        )
        answer = {
            "certificate": certificate_to_dict(cert),
            "network": network_to_dict(self._network_info),
            "members": [member_to_dict(self._record(c)) for c in certs],
        }
        try:
            self._on_enrolled(cert)  # again too: this PoP may not know the member yet
        except Exception:
            log.exception("on_enrolled hook failed name=%s", cert.name)
        return web.json_response(answer)

    def _failed(self, source: str, reason: Refusal, message: str) -> web.Response:
        """A failed attempt: counted, charged to the source, answered on one line."""
        self.refusals[reason] += 1
        self.failures.failed(source, self._monotonic())
        status = _FAILURE_STATUS[reason]
        return _error(status, message, close=status in (408, 413))

    def _parse_request_untrusted(self, body: bytes) -> tuple[str, bytes, bytes] | str:
        """(token, static_public, signing_public), or the problem as text."""
        try:
            obj: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...
            return "body is not JSON"
        if not isinstance(obj, dict):
            return "expected a JSON object"
        network = obj.get("network")
        if not isinstance(network, str):
            return "network: missing"
        if network != self._config.name:
            return "network: this PoP serves another network"
        token = obj.get("token")
        if token is None:
            return "token: missing"
        if not is_well_formed_token(token):
            return "token: malformed"
        static_text: Any = obj.get("static_public")
        signing_text: Any = obj.get("signing_public")
        try:
            static_public = b64d(static_text, length=32, field="static_public")
            signing_public = b64d(signing_text, length=32, field="signing_public")
        except CodecError as exc:
            return str(exc)
        if static_public == bytes(32) or signing_public == bytes(32):
            return "public keys must not be all zero"
        return token, static_public, signing_public

    def _redeem(
        self,
        hashed: str,
        now: float,
        issue: Callable[[Grant], Certificate],
        keys: tuple[bytes, bytes],
    ) -> tuple[Certificate, list[Certificate]]:
        cert = self._store.redeem(hashed, now, self._pop_name, issue, keys=keys)
        return cert, self._store.members()

    def _issue(self, grant: Grant, static_public: bytes, signing_public: bytes, now: float) -> Certificate:
        previous_ip = grant.previous.ip if grant.previous is not None else None
        ip = choose_ip(
            self._config,
            grant.client_name,
            grant.used_ips,
            previous_ip.ip if previous_ip is not None else None,
        )
        client = next((c for c in self._config.clients if c.name == grant.client_name), None)
        return issue_certificate(
            self._ca_private,
            network=self._config.name,
            name=grant.client_name,
            node_id=grant.node_id,
            is_pop=False,
            static_public=static_public,
            signing_public=signing_public,
            ip=ip,
            groups=client.groups if client is not None else (),
            now=int(now),
            days=self._config.network.certificate_days,
        )

    def _record(self, cert: Certificate) -> MemberRecord:
        endpoints = self._pop_endpoints.get(cert.name, ()) if cert.is_pop else ()
        return MemberRecord(certificate=cert, endpoints=endpoints)


_FAILURE_STATUS = {
    Refusal.BAD_REQUEST: 400,
    Refusal.INVITATION_UNKNOWN: 403,
    Refusal.INVITATION_USED: 403,
    Refusal.INVITATION_EXPIRED: 403,
    Refusal.BODY_TIMEOUT: 408,
    Refusal.TOO_LARGE: 413,
}


def _error(status: int, message: str, *, close: bool = False) -> web.Response:
    answer = web.json_response({"error": message}, status=status)
    if close:  # the body was not read (all of it): the connection cannot carry another request
        answer.force_close()
    return answer


# -- connections: admission, TLS and deadlines around aiohttp --------------------------------


class _Guard(asyncio.Protocol):
    """One admitted connection once TLS is up: aiohttp's protocol inside, our deadlines
    around it. The deadline is for the next request's headers (HEADER_TIMEOUT, then
    KEEPALIVE_TIMEOUT after each answer) and is off while a request is handled."""

    def __init__(self, site: _EnrollmentSite, source: str) -> None:
        self._site = site
        self.source = source
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._lifetime: asyncio.TimerHandle | None = None
        self._released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._site.limits
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._site.guards[transport] = self
        loop = asyncio.get_running_loop()
        self._lifetime = loop.call_later(limits.connection_lifetime, self._expired, Refusal.LIFETIME)
        self._arm(limits.header_timeout, Refusal.HEADER_TIMEOUT)
        self._inner = self._site.new_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._deadline, self._lifetime):
            if handle is not None:
                handle.cancel()
        if self._transport is not None:
            self._site.guards.pop(self._transport, None)
        self.release()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def release(self) -> None:
        """Give the connection's place in the table back (once)."""
        if not self._released:
            self._released = True
            self._site.table.release(self.source)

    def request_started(self) -> None:
        """A request's headers are complete."""
        self._arm(None, Refusal.HEADER_TIMEOUT)

    def request_answered(self) -> None:
        """The answer is handed to aiohttp; the next request's headers must follow."""
        self._arm(self._site.limits.keepalive_timeout, Refusal.IDLE_TIMEOUT)

    def _arm(self, seconds: float | None, reason: Refusal) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        if seconds is not None:
            self._deadline = asyncio.get_running_loop().call_later(seconds, self._expired, reason)

    def _expired(self, reason: Refusal) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reason is Refusal.IDLE_TIMEOUT and transport.get_write_buffer_size() > 0:
            self._arm(self._site.limits.keepalive_timeout, reason)  # the answer is still going out
            return
        self._site.refusals[reason] += 1
        log.debug("enrollment connection cut reason=%s peer=%s", reason.value, self.source)
        transport.abort()


_CLIENT_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)  # accept(2): try the next one


class _EnrollmentSite(web.BaseSite):
    """An HTTPS site that accepts connections itself, so that it can count them per
    source before any TLS work, and that holds every connection to deadlines."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        service: EnrollmentService,
        guards: dict[asyncio.BaseTransport, _Guard],
    ) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host, self._port, self._tls = host, port, tls
        self.limits = service.limits
        self.refusals = service.refusals
        self.table = ConnectionTable(self.limits.max_connections_per_source, self.limits.max_connections)
        self.guards = guards
        self.handshakes: set[asyncio.Task[None]] = set()
        self.accepting: asyncio.Task[None] | None = None
        self.listener: socket.socket | None = None  # ours, not an asyncio server: _server stays None
        server = runner.server
        assert server is not None
        self.new_handler: Callable[[], asyncio.Protocol] = server

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1]) if self.listener is not None else self._port

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self.listener = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        self.listener.setblocking(False)
        self.accepting = asyncio.get_running_loop().create_task(self._accept(self.listener))

    async def stop(self) -> None:
        """Stop accepting and drop the handshakes in progress; aiohttp (runner.cleanup)
        shuts the established connections down."""
        if self.accepting is not None:
            self.accepting.cancel()
        for task in list(self.handshakes):
            task.cancel()
        if self.listener is not None:
            self.listener.close()
        await super().stop()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self.refusals[Refusal.ACCEPT_FAILED] += 1  # EMFILE...: the backlog waits meanwhile
                log.warning("enrollment accept failed: %s; pausing %g s", exc.strerror, ACCEPT_RETRY_DELAY)
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            source = source_of(peer[0] if isinstance(peer, tuple) else None)
            refusal = self.table.admit(source)
            if refusal is not None:
                self.refusals[refusal] += 1
                log.debug("enrollment connection refused reason=%s peer=%s", refusal.value, source)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # at once, with a reset: the descriptor is free again
                continue
            task = loop.create_task(self._handshake(sock, _Guard(self, source)))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, sock: socket.socket, guard: _Guard) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: guard,
                sock,
                ssl=self._tls,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )
        except asyncio.CancelledError:
            sock.close()
            guard.release()
            raise
        except Exception as exc:  # hostile or slow bytes: counted, never a traceback
            self.refusals[Refusal.TLS_HANDSHAKE_FAILED] += 1
            log.debug("enrollment TLS handshake failed peer=%s: %s", guard.source, type(exc).__name__)
            sock.close()
            guard.release()


class _HttpLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, where a request that is not HTTP (hostile bytes: too long,
    too many headers, garbage) is one debug line, not an error with a traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            first_line = (exc_info.message.strip().splitlines() or [""])[0]
            self.debug("enrollment request is not HTTP: %s", first_line)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _deadline_middleware(guards: dict[asyncio.BaseTransport, _Guard]) -> Middleware:
    """Tells each connection's guard when a request starts and when it is answered."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = guards.get(request.transport) if request.transport is not None else None
        if guard is not None:
            guard.request_started()
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_answered()

    return middleware


async def start_enrollment_site(
    service: EnrollmentService, host: str, port: int, ssl_context: ssl.SSLContext
) -> tuple[web.AppRunner, int]:
    """Serve ``service`` over HTTPS; returns the runner (``await runner.cleanup()``
    to stop) and the bound port (useful with port 0)."""
    guards: dict[asyncio.BaseTransport, _Guard] = {}
    app = service.app()
    app.middlewares.append(_deadline_middleware(guards))
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=_HttpLog(logging.getLogger("aiohttp.server")),
        shutdown_timeout=SHUTDOWN_GRACE,
        # aiohttp's own idle timer, behind the guards' (which count what they cut):
        keepalive_timeout=max(service.limits.header_timeout, service.limits.keepalive_timeout) + 1.0,
        lingering_time=0,  # an unread body is not drained: the connection closes
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_LINE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    site = _EnrollmentSite(runner, host, port, ssl_context, service, guards)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.port
