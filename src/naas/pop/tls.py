"""The PoP's TLS material: a self-signed ECDSA P-256 certificate, pinned, not trusted.

Clients authenticate a PoP by the ``sha256:`` pin of its key in the invitation URL
(pop/invitations.py), not by a PKI, so the certificate is self-signed and long-lived.
The key is written 0600 and created so, never readable by others even for an instant.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from naas.pop.invitations import spki_pin

TLS_DAYS = 3650


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
