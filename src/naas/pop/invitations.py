"""Invitation URLs and their one-time tokens.

``naas invite`` draws 32 random bytes, turns them into a token (``make_token``),
stores only ``token_hash(token)`` and prints::

    naas://HOST:PORT/NETWORK?token=T&pin=P[&pop=HOST2:PORT2,P2 ...]

``HOST:PORT`` is the first PoP's HTTPS enrollment endpoint (``[v6]:port`` for IPv6),
``T`` the token (unpadded base64url of 32 bytes) and ``P`` the pin of that PoP's TLS
key: ``sha256:`` + base64url(SHA-256(SubjectPublicKeyInfo DER)). Each further PoP comes
as one ``pop`` parameter, endpoint and pin separated by a comma. The client checks the
pin on the TLS connection before it sends the token, so nothing but the PoP the URL
names can see the token (tinc-style key pinning instead of a PKI).

``parse_url_untrusted`` takes whatever the user pasted and either returns an
``Invitation`` or raises ``InvitationError`` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from naas.model.codec import b64d, b64e
from naas.model.ids import Endpoint, is_valid_name

SCHEME = "naas"
TOKEN_BYTES = 32  # 256 bits of randomness; the design asks for at least 128
PIN_PREFIX = "sha256:"
ENROLL_PATH = "/v1/enroll"  # where a PoP redeems invitations (protocol.md 3.2): client and server
RENEW_PATH = "/v1/renew"  # where a member renews its certificate (protocol.md 3.3)
MEMBER_DOCUMENT_PATH = "/v1/member/document"  # where a member asks for the newest document (3.3)

_B64_32 = re.compile(r"^[A-Za-z0-9_-]{43}$")  # 32 bytes, unpadded base64url
_MAX_URL = 4096
_MAX_POPS = 8


class InvitationError(ValueError):
    """An invitation URL that cannot be used; the message says why, on one line."""


@dataclass(frozen=True, slots=True)
class Invitation:
    network: str
    token: str
    pops: tuple[tuple[Endpoint, str], ...]  # (HTTPS enrollment endpoint, TLS pin), in order

    def __repr__(self) -> str:  # the token is a secret: keep it out of logs and tracebacks
        return f"Invitation(network={self.network!r}, token=<hidden>, pops={self.pops!r})"


# -- tokens ---------------------------------------------------------------------------------


def make_token(random32: bytes) -> str:
    """The token for 32 random bytes (the caller draws them: this module has no RNG)."""
    if len(random32) != TOKEN_BYTES:
        raise ValueError(f"a token needs {TOKEN_BYTES} random bytes, got {len(random32)}")
    return b64e(random32)


def is_well_formed_token(token: object) -> bool:
    """True for the canonical text of 32 bytes (what ``make_token`` produces)."""
    if not isinstance(token, str) or not _B64_32.match(token):
        return False
    return b64e(b64d(token)) == token  # rejects non-zero padding bits: one spelling only


def token_hash(token: str) -> str:
    """What the store keeps instead of the token: hex SHA-256 of its text."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


# -- pins -----------------------------------------------------------------------------------


def spki_pin(cert_der: bytes) -> str:
    """The pin of a TLS certificate: SHA-256 of its SubjectPublicKeyInfo (DER).

    Raises ValueError if ``cert_der`` is not a DER X.509 certificate.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + b64e(hashlib.sha256(spki).digest())


def is_well_formed_pin(pin: object) -> bool:
    return (
        isinstance(pin, str) and pin.startswith(PIN_PREFIX) and is_well_formed_token(pin[len(PIN_PREFIX) :])
    )


# -- URLs -----------------------------------------------------------------------------------


def build_url(network: str, pops: Iterable[tuple[Endpoint, str]], token: str) -> str:
    """The invitation URL; ``pops`` in the order the client should try them."""
    pops = list(pops)
    if not pops:
        raise ValueError("an invitation needs at least one PoP")
    if not is_valid_name(network):
        raise ValueError(f"not a network name: {network!r}")
    if not is_well_formed_token(token):
        raise ValueError("malformed token")
    for _, pin in pops:
        if not is_well_formed_pin(pin):
            raise ValueError(f"malformed pin: {pin!r}")
    (first, first_pin), rest = pops[0], pops[1:]
    query = [f"token={token}", f"pin={first_pin}"]
    # '[' and ']' are not allowed in a query (RFC 3986 section 3.4): escape them there.
    query += [f"pop={quote(str(endpoint), safe=':')},{pin}" for endpoint, pin in rest]
    return f"{SCHEME}://{first}/{network}?{'&'.join(query)}"


def parse_url_untrusted(text: str) -> Invitation:
    """Parse a pasted invitation URL; raise InvitationError naming the problem."""
    if not isinstance(text, str):
        raise InvitationError("invitation: expected text")
    text = text.strip()
    if len(text) > _MAX_URL:
        raise InvitationError("invitation: URL is too long")
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise InvitationError("invitation: URL contains spaces or non-ASCII characters")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise InvitationError(f"invitation: not a URL ({exc})") from None
    if parts.scheme.lower() != SCHEME:
        shown = parts.scheme or "none"
        raise InvitationError(f"invitation: wrong scheme {shown!r}, expected '{SCHEME}://'")
    first = _endpoint(parts.netloc, "PoP address")
    network = parts.path.strip("/")
    if not network:
        raise InvitationError("invitation: network name is missing (naas://HOST:PORT/NETWORK?...)")
    if not is_valid_name(network):
        raise InvitationError(f"invitation: {network!r} is not a valid network name")
    if parts.fragment:
        raise InvitationError("invitation: unexpected '#' fragment")

    try:
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvitationError("invitation: malformed query string") from None
    token: str | None = None
    pin: str | None = None
    more: list[tuple[Endpoint, str]] = []
    for key, value in params:
        if key == "token":
            if token is not None:
                raise InvitationError("invitation: token is given twice")
            token = value
        elif key == "pin":
            if pin is not None:
                raise InvitationError("invitation: pin is given twice")
            pin = value
        elif key == "pop":
            address, comma, extra_pin = value.rpartition(",")
            if not comma:
                raise InvitationError(f"invitation: pop={value!r}: expected HOST:PORT,PIN")
            more.append((_endpoint(address, "pop"), _pin(extra_pin, "pop")))
        else:
            raise InvitationError(f"invitation: unknown parameter {key!r}")
    if token is None or token == "":
        raise InvitationError("invitation: token is missing")
    if not is_well_formed_token(token):
        raise InvitationError(
            f"invitation: token is not {TOKEN_BYTES} bytes of base64url (truncated when copied?)"
        )
    if pin is None or pin == "":
        raise InvitationError("invitation: pin is missing")
    pops = ((first, _pin(pin, "pin")), *more)
    if len(pops) > _MAX_POPS:
        raise InvitationError(f"invitation: more than {_MAX_POPS} PoPs")
    return Invitation(network=network, token=token, pops=pops)


def _endpoint(text: str, what: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError:
        raise InvitationError(
            f"invitation: {what} {text!r} is not HOST:PORT (an IP address, '[v6]:port' for IPv6)"
        ) from None


def _pin(text: str, what: str) -> str:
    if not is_well_formed_pin(text):
        raise InvitationError(f"invitation: {what} {text!r} is not '{PIN_PREFIX}' + 32 bytes of base64url")
    return text
