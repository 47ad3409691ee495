"""The PoP's HTTPS enrollment service (aiohttp).

A new member POSTs ``/v1/enroll`` with its invitation token and its two public keys
over TLS. The PoP's TLS certificate is self-signed: clients authenticate it by the pin
in the invitation URL, not by a PKI. The order of one enrollment::

    size-bounded body -> JSON shape -> network name -> token form -> key forms
    -> store.redeem (one SQL transaction, in a worker thread) calls _issue(grant):
         address (addresses.choose_ip), groups from naas.toml, CA signature (ca.py)
    -> 200 {certificate, network, members}, then on_enrolled(certificate)

Malformed input is a 400, an unusable invitation a 403 (``invitation unknown``,
``invitation already used``, ``invitation expired``), an exhausted address pool a 503.
The token is never logged, not even hashed; an enrollment logs the member's name and
node id. ``GET /v1/health`` answers without touching the store.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
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
from naas.pop.invitations import is_well_formed_token, spki_pin, token_hash
from naas.pop.store import Grant, PopStore, RedeemError

log = logging.getLogger("naas.pop.server")

ENROLL_PATH = "/v1/enroll"
HEALTH_PATH = "/v1/health"
MAX_REQUEST_BYTES = 16 * 1024
TLS_DAYS = 3650

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


def load_or_create_tls_material(directory: Path, name: str) -> tuple[TlsMaterial, Path, Path]:
    """The PoP's TLS material in ``directory`` (tls.crt, tls.key), made on first use."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    if cert_path.exists() and key_path.exists():
        return load_tls_material(cert_path, key_path), cert_path, key_path
    material = make_tls_material(name)
    write_tls_material(material, cert_path, key_path)
    return material, cert_path, key_path


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
    ) -> None:
        config.pop(pop_name)  # raises ConfigError for an unknown PoP
        self._config = config
        self._pop_name = pop_name
        self._store = store
        self._ca_private = ca_private
        self._network_info = network_info
        self._clock = clock
        self._on_enrolled = on_enrolled
        self._pop_endpoints = {pop.name: (pop.mesh_endpoint,) for pop in network_info.pops}
        self.enroll_requests = 0  # POSTs that reached the handler (tests, status)
        self.enrolled = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(ENROLL_PATH, self._handle_enroll)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        return app

    async def _handle_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "network": self._config.name, "pop": self._pop_name})

    async def _handle_enroll(self, request: web.Request) -> web.Response:
        self.enroll_requests += 1
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request larger than {MAX_REQUEST_BYTES} bytes")
        parsed = self._parse_request_untrusted(body)
        if isinstance(parsed, str):
            log.info("enrollment rejected problem=%r peer=%s", parsed, request.remote)
            return _error(400, parsed)
        token, static_public, signing_public = parsed
        now = self._clock()

        def issue(grant: Grant) -> Certificate:
            return self._issue(grant, static_public, signing_public, now)

        try:
            cert, certs = await asyncio.to_thread(self._redeem, token_hash(token), now, issue)
        except RedeemError as exc:
            log.info("enrollment refused reason=%s peer=%s", exc.reason, request.remote)
            return _error(403, str(exc))
        except AddressPoolExhausted as exc:
            log.warning("enrollment failed: %s", exc)
            return _error(503, "no free overlay address left")
        except Exception:
            log.exception("enrollment failed peer=%s", request.remote)
            return _error(500, "internal error")
        self.enrolled += 1
        log.info(
            "enrolled name=%s node_id=%d ip=%s pop=%s peer=%s",
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
            self._on_enrolled(cert)
        except Exception:
            log.exception("on_enrolled hook failed name=%s", cert.name)
        return web.json_response(answer)

    def _parse_request_untrusted(self, body: bytes) -> tuple[str, bytes, bytes] | str:
        """(token, static_public, signing_public), or the problem as text."""
        try:
            obj: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
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
        self, hashed: str, now: float, issue: Callable[[Grant], Certificate]
    ) -> tuple[Certificate, list[Certificate]]:
        cert = self._store.redeem(hashed, now, self._pop_name, issue)
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def start_enrollment_site(
    service: EnrollmentService, host: str, port: int, ssl_context: ssl.SSLContext
) -> tuple[web.AppRunner, int]:
    """Serve ``service`` over HTTPS; returns the runner (``await runner.cleanup()``
    to stop) and the bound port (useful with port 0)."""
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, bound
