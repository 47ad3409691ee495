"""The enrollment client: redeems an invitation at a PoP (synchronous, for the CLI).

For each attempt, the PoPs of the URL are tried in order::

    TCP + TLS handshake (no chain or hostname check: the PoP is self-signed)
    -> SPKI pin of the PoP's certificate == the URL's pin?   no: abort, token unsent
    -> POST /v1/enroll {network, token, static_public, signing_public}
    -> 200: decode with the codec, check the certificate is ours and CA-signed

A PoP that cannot be reached, answers 5xx, 408 (our body came too slowly) or 429
(too many failed attempts from our address) is skipped; when all were skipped the
next round starts after an exponential backoff, or after the largest Retry-After of
the round if that is longer (at most ``MAX_RETRY_AFTER``), and after ``attempts``
rounds the client gives up with "cannot reach any PoP". Each skip is reported on one
line (``notify``, stderr by default) naming the PoP, what failed and what comes next.
Retrying is safe even when a PoP committed the enrollment and its answer was lost:
the same token with the same keys gets the same certificate again. Any other 4xx
answer (bad request, invitation unknown, used or expired) is final: retrying cannot
help. A pin mismatch is final too: it means a wrong URL or someone in the way, and is
never "fixed" by another PoP. The token appears in no message.
"""

from __future__ import annotations

import hmac
import http.client
import json
import math
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from naas.control.enrollment import DOCUMENT_REQUEST_CONTEXT, RENEW_CONTEXT, renew_message
from naas.core.crypto import ed25519_sign, ed25519_verify
from naas.model.certificate import Certificate
from naas.model.codec import (
    CodecError,
    b64e,
    certificate_from_dict,
    certificate_to_dict,
    member_from_dict,
    network_from_dict,
    tbs_bytes,
)
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord, NetworkInfo
from naas.pop.invitations import ENROLL_PATH, MEMBER_DOCUMENT_PATH, RENEW_PATH, Invitation, spki_pin

DEFAULT_ATTEMPTS = 5
DEFAULT_BACKOFF = 0.5  # seconds before the 2nd round; doubles each round
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 30.0  # s: the longest a PoP's Retry-After (429) makes us wait
RETRY_STATUSES = (408, 429)  # 4xx answers that another try may not get; 5xx too
DEFAULT_TIMEOUT = 10.0  # per connection and per read
MAX_ANSWER_BYTES = 4 * 1024 * 1024
MAX_MEMBERS = 65_536


class EnrollmentError(Exception):
    """Enrollment failed; the message is meant for the user."""


class _Unreachable(Exception):
    """A failure at one PoP that another PoP or a later attempt may not have."""

    def __init__(self, why: str, retry_after: float = 0.0) -> None:
        super().__init__(why)
        self.retry_after = retry_after  # seconds the PoP asked us to wait (429), else 0


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    certificate: Certificate
    network: NetworkInfo
    members: tuple[MemberRecord, ...]
    pop: Endpoint  # the PoP that enrolled us
    document: bytes | None = None  # the network document, checked by the agent when it starts


def enroll(
    invitation: Invitation,
    static_public: bytes,
    signing_public: bytes,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    notify: Callable[[str], None] | None = None,
) -> EnrollmentResult:
    """Redeem ``invitation`` for a certificate on our public keys; raise EnrollmentError.

    ``notify`` gets one line per retry (default: ``naas: ...`` on stderr).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    say = notify or _on_stderr
    body = json.dumps(
        {
            "network": invitation.network,
            "token": invitation.token,
            "static_public": b64e(static_public),
            "signing_public": b64e(signing_public),
        }
    ).encode()
    last_failure: dict[Endpoint, str] = {}
    pops = invitation.pops
    for attempt in range(attempts):
        retry_after = 0.0
        for index, (endpoint, pin) in enumerate(pops):
            try:
                status, answer = _post(endpoint, pin, body, timeout)
            except _Unreachable as exc:
                why = _scrub(str(exc), invitation.token)
                last_failure[endpoint] = why
                retry_after = max(retry_after, exc.retry_after)
                if index + 1 < len(pops):
                    say(f"enrollment: PoP {endpoint}: {why}; trying PoP {pops[index + 1][0]} now")
                elif attempt + 1 < attempts:
                    wait = _wait(attempt, backoff, retry_after)
                    say(
                        f"enrollment: PoP {endpoint}: {why}; retrying in {wait:.1f} s "
                        f"(round {attempt + 2} of {attempts})"
                    )
                    sleep(wait)
                continue
            try:
                return _result(invitation, endpoint, status, answer, static_public, signing_public)
            except EnrollmentError as exc:
                raise EnrollmentError(_scrub(str(exc), invitation.token)) from None
    details = "; ".join(f"{endpoint}: {why}" for endpoint, why in last_failure.items())
    raise EnrollmentError(f"cannot reach any PoP ({details})")


def renew_certificate(
    network: NetworkInfo,
    certificate: Certificate,
    signing_private: bytes,
    *,
    now: float,
    timeout: float = DEFAULT_TIMEOUT,
) -> Certificate:
    """A renewed certificate from the first PoP of ``network`` that answers (each pinned
    as for enrollment); authenticated by ``certificate`` and a signature of our signing
    key, no token. EnrollmentError: refused (the PoP's reason), or no PoP answered."""
    body = _signed_request(network, certificate, signing_private, now, RENEW_CONTEXT)
    failures = []
    for pop in network.pops:
        try:
            status, answer = _post(pop.enrollment_endpoint, pop.tls_pin, body, timeout, RENEW_PATH)
        except _Unreachable as exc:
            failures.append(f"{pop.name}: {exc}")
            continue
        if status != 200:
            raise EnrollmentError(f"PoP {pop.name} refused the renewal: {_server_message(answer)}")
        try:
            renewed = certificate_from_dict(json.loads(answer).get("certificate"))
        except (ValueError, AttributeError, RecursionError) as exc:
            raise EnrollmentError(f"PoP {pop.name} sent a malformed answer: {exc}") from None
        mine = (certificate.node_id, certificate.static_public, certificate.signing_public)
        if (renewed.node_id, renewed.static_public, renewed.signing_public) != mine or not ed25519_verify(
            network.ca_public, renewed.signature, tbs_bytes(renewed)
        ):
            raise EnrollmentError(f"PoP {pop.name} sent an unusable certificate")
        return renewed
    raise EnrollmentError(f"cannot reach any PoP ({'; '.join(failures)})")


def fetch_document(
    network: NetworkInfo,
    certificate: Certificate,
    signing_private: bytes,
    *,
    now: float,
    timeout: float = 3.0,
) -> bytes | None:
    """The newest network document's body from the first PoP that gives it (pinned,
    signed like a renewal request), unchecked: the agent checks it like any other.
    None if no PoP gives one."""
    body = _signed_request(network, certificate, signing_private, now, DOCUMENT_REQUEST_CONTEXT)
    for pop in network.pops:
        try:
            status, answer = _post(pop.enrollment_endpoint, pop.tls_pin, body, timeout, MEMBER_DOCUMENT_PATH)
        except (_Unreachable, EnrollmentError):
            continue
        if status == 200:
            try:
                document = json.loads(answer).get("document")
            except (ValueError, AttributeError, RecursionError):
                continue
            if isinstance(document, str):
                return document.encode()
    return None


def _signed_request(
    network: NetworkInfo, certificate: Certificate, signing_private: bytes, now: float, context: bytes
) -> bytes:
    """A request authenticated by our certificate and a signature of our signing key."""
    unix_time = int(now)
    fields = certificate_to_dict(certificate)
    signature = ed25519_sign(signing_private, renew_message(network.name, fields, unix_time, context))
    return json.dumps(
        {"network": network.name, "certificate": fields, "time": unix_time, "signature": b64e(signature)}
    ).encode()


def _wait(attempt: int, backoff: float, retry_after: float) -> float:
    """Seconds before round ``attempt + 2``: the backoff, or a longer Retry-After (bounded)."""
    return max(min(backoff * 2.0**attempt, MAX_BACKOFF), min(retry_after, MAX_RETRY_AFTER))


def _on_stderr(line: str) -> None:
    print(f"naas: {line}", file=sys.stderr, flush=True)


def _scrub(text: str, token: str) -> str:
    """``text`` without the token, whatever a PoP echoed back."""
    return text.replace(token, "<token>") if token else text


def client_ssl_context() -> ssl.SSLContext:
    """TLS without chain or hostname checks: the pin is checked by hand instead."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _post(
    endpoint: Endpoint, pin: str, body: bytes, timeout: float, path: str = ENROLL_PATH
) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection(
        endpoint.host, endpoint.port, timeout=timeout, context=client_ssl_context()
    )
    try:
        try:
            connection.connect()
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(describe_failure(exc)) from None
        sock = connection.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        seen = pin_or_none(der)
        if seen is None or not hmac.compare_digest(seen, pin):
            raise EnrollmentError(
                f"PoP key does not match the invitation's pin at {endpoint} "
                f"(expected {pin}, got {seen or 'no usable certificate'}): "
                "the URL is wrong or someone is in the way; the token was not sent"
            )
        try:
            connection.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(describe_failure(exc)) from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise EnrollmentError(f"PoP {endpoint} sent an oversized answer")
        if response.status >= 500 or response.status in RETRY_STATUSES:
            retry_after = _retry_after(response.getheader("Retry-After"))
            raise _Unreachable(f"HTTP {response.status} {_server_message(answer)}", retry_after)
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
        document = obj.get("document")
        if document is not None and not isinstance(document, str):
            raise CodecError("document: expected text")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # CodecError is a ValueError
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
    return EnrollmentResult(
        certificate=cert,
        network=network,
        members=members,
        pop=endpoint,
        document=document.encode() if document is not None else None,
    )


def pin_or_none(der: bytes | None) -> str | None:
    """The pin of a peer certificate (DER), None if there is none or it is unusable."""
    if not der:
        return None
    try:
        return spki_pin(der)
    except ValueError:
        return None


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (we send only seconds; a date or garbage counts as none)."""
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _server_message(answer: bytes) -> str:
    try:
        message = json.loads(answer).get("error")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        message = None
    if not isinstance(message, str):
        return "no error message"
    return "".join(c for c in message[:200] if c.isprintable())  # hostile text: one line


def describe_failure(exc: BaseException) -> str:
    """A transport failure in a few words (for one-line messages)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
