"""The enrollment client: redeems an invitation at a PoP (synchronous, for the CLI).

For each attempt, the PoPs of the URL are tried in order::

    TCP + TLS handshake (no chain or hostname check: the PoP is self-signed)
    -> SPKI pin of the PoP's certificate == the URL's pin?   no: abort, token unsent
    -> POST /v1/enroll {network, token, static_public, signing_public}
    -> 200: decode with the codec, check the certificate is ours and CA-signed

A PoP that cannot be reached (or answers 5xx) is skipped; when all were skipped the
next attempt starts after an exponential backoff, and after ``attempts`` rounds the
client gives up with "cannot reach any PoP". A 4xx answer (bad request, invitation
unknown, used or expired) is final: retrying cannot help. A pin mismatch is final
too: it means a wrong URL or someone in the way, and is never "fixed" by another PoP.
"""

from __future__ import annotations

import hmac
import http.client
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from naas.core.crypto import ed25519_verify
from naas.model.certificate import Certificate
from naas.model.codec import (
    CodecError,
    b64e,
    certificate_from_dict,
    member_from_dict,
    network_from_dict,
    tbs_bytes,
)
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord, NetworkInfo
from naas.pop.invitations import Invitation, spki_pin

ENROLL_PATH = "/v1/enroll"
DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF = 0.5  # seconds before the 2nd round; doubles each round
MAX_BACKOFF = 8.0
DEFAULT_TIMEOUT = 10.0  # per connection and per read
MAX_ANSWER_BYTES = 4 * 1024 * 1024
MAX_MEMBERS = 65_536


class EnrollmentError(Exception):
    """Enrollment failed; the message is meant for the user."""


class _Unreachable(Exception):
    """A failure at one PoP that another PoP or a later attempt may not have."""


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    certificate: Certificate
    network: NetworkInfo
    members: tuple[MemberRecord, ...]
    pop: Endpoint  # the PoP that enrolled us


def enroll(
    invitation: Invitation,
    static_public: bytes,
    signing_public: bytes,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> EnrollmentResult:
    """Redeem ``invitation`` for a certificate on our public keys; raise EnrollmentError."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    body = json.dumps(
        {
            "network": invitation.network,
            "token": invitation.token,
            "static_public": b64e(static_public),
            "signing_public": b64e(signing_public),
        }
    ).encode()
    last_failure: dict[Endpoint, str] = {}
    for attempt in range(attempts):
        if attempt:
            sleep(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF))
        for endpoint, pin in invitation.pops:
            try:
                status, answer = _post(endpoint, pin, body, timeout)
            except _Unreachable as exc:
                last_failure[endpoint] = str(exc)
                continue
            return _result(invitation, endpoint, status, answer, static_public, signing_public)
    details = "; ".join(f"{endpoint}: {why}" for endpoint, why in last_failure.items())
    raise EnrollmentError(f"cannot reach any PoP ({details})")


def client_ssl_context() -> ssl.SSLContext:
    """TLS without chain or hostname checks: the pin is checked by hand instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _post(endpoint: Endpoint, pin: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection(
        endpoint.host, endpoint.port, timeout=timeout, context=client_ssl_context()
    )
    try:
        try:
            connection.connect()
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(_describe(exc)) from None
        sock = connection.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        seen = _pin_or_none(der)
        if seen is None or not hmac.compare_digest(seen, pin):
            raise EnrollmentError(
                f"PoP key does not match the invitation's pin at {endpoint} "
                f"(expected {pin}, got {seen or 'no usable certificate'}): "
                "the URL is wrong or someone is in the way; the token was not sent"
            )
        try:
            connection.request(
                "POST",
                ENROLL_PATH,
                body=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(_describe(exc)) from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise EnrollmentError(f"PoP {endpoint} sent an oversized answer")
        if response.status >= 500:
            raise _Unreachable(f"HTTP {response.status} {_server_message(answer)}")
        return response.status, answer
    finally:
        connection.close()


def _result(
    invitation: Invitation,
    endpoint: Endpoint,
    status: int,
    answer: bytes,
    static_public: bytes,
    signing_public: bytes,
) -> EnrollmentResult:
    if status != 200:
        raise EnrollmentError(f"PoP {endpoint} refused: {_server_message(answer)}")
    try:
        obj: Any = json.loads(answer)
        if not isinstance(obj, dict):
            raise CodecError("answer: expected an object")
        cert = certificate_from_dict(obj.get("certificate"))
        network = network_from_dict(obj.get("network"))
        raw_members = obj.get("members")
        if not isinstance(raw_members, list) or len(raw_members) > MAX_MEMBERS:
            raise CodecError("members: expected a list")
        members = tuple(member_from_dict(m, "members") for m in raw_members)
    except (ValueError, UnicodeDecodeError) as exc:  # CodecError is a ValueError
        raise EnrollmentError(f"PoP {endpoint} sent a malformed answer: {exc}") from None
    problem = None
    if network.name != invitation.network or cert.network != invitation.network:
        problem = "it is for another network"
    elif cert.static_public != static_public or cert.signing_public != signing_public:
        problem = "the certificate is not for our keys"
    elif not ed25519_verify(network.ca_public, cert.signature, tbs_bytes(cert)):
        problem = "the certificate is not signed by the network CA"
    if problem is not None:
        raise EnrollmentError(f"PoP {endpoint} sent an unusable answer: {problem}")
    return EnrollmentResult(certificate=cert, network=network, members=members, pop=endpoint)


def _pin_or_none(der: bytes | None) -> str | None:
    if not der:
        return None
    try:
        return spki_pin(der)
    except ValueError:
        return None


def _server_message(answer: bytes) -> str:
    try:
        message = json.loads(answer).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError):
        message = None
    if not isinstance(message, str):
        return "no error message"
    return "".join(c for c in message[:200] if c.isprintable())  # hostile text: one line


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
