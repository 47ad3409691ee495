"""An invitation redeemed, a certificate renewed: the use cases behind ``POST
/v1/enroll`` and ``POST /v1/renew`` (pop/server.py).

    redeem (store.py: one transaction) -> issue(grant): the address (addresses.choose_ip,
    with the clients' fixed addresses from the store), the client's groups from the
    store, the CA's signature (pop/ca.py) -> (a client with allowed addresses: a new
    network document listing them under its node id, in the same transaction) -> the
    certificate, the members to start from and the newest network document

Errors: ``RedeemError`` (unknown, used, expired) and ``AddressPoolExhausted`` pass
through for the server to count and answer; nothing else is caught here.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from naas.control.errors import Conflict, Forbidden, Invalid, NotFound
from naas.control.network import PopNetwork
from naas.core.crypto import ed25519_sign, ed25519_verify
from naas.model.certificate import Certificate
from naas.model.codec import canonical_json, certificate_to_dict, tbs_bytes
from naas.model.ids import NodeId
from naas.pop.addresses import choose_ip
from naas.pop.ca import issue_certificate
from naas.pop.store import Grant


@dataclass(frozen=True, slots=True)
class Enrollment:
    certificate: Certificate
    issued: bool  # False: a retry got the certificate issued before (same token, same keys)
    members: list[Certificate]
    document: bytes | None  # the newest network document's body


def enroll(
    net: PopNetwork, pop_name: str, token_hash: str, static_public: bytes, signing_public: bytes
) -> Enrollment:
    """Redeem the invitation with hash ``token_hash`` for these keys (runs in a thread: it
    waits for the store)."""
    now = net.clock()
    issued: list[Certificate] = []
    clients = {client.name: client for client in net.store.clients()}  # read before the write lock

    def issue(grant: Grant) -> Certificate:
        client = clients.get(grant.client_name)
        fixed = {name: record.ip for name, record in clients.items()}
        groups = client.groups if client is not None else ()
        if client is None:  # invited before the clients table existed: naas.toml's word
            config_client = next((c for c in net.config.clients if c.name == grant.client_name), None)
            if config_client is not None:
                fixed[grant.client_name], groups = config_client.ip, config_client.groups
        previous = grant.previous.ip.ip if grant.previous is not None and grant.previous.ip else None
        issued.append(
            issue_certificate(
                net.ca_private,
                network=net.name,
                name=grant.client_name,
                node_id=grant.node_id,
                is_pop=False,
                static_public=static_public,
                signing_public=signing_public,
                ip=choose_ip(net.config, grant.client_name, grant.used_ips, previous, fixed=fixed),
                groups=groups,
                now=int(now),
                lifetime=net.config.network.certificate_seconds,
            )
        )
        return issued[-1]

    keys = (static_public, signing_public)
    cert = net.store.redeem(token_hash, now, pop_name, issue, keys=keys, sign=net.sign)
    latest = net.store.latest_document()
    return Enrollment(cert, bool(issued), net.store.members(), latest[1] if latest else None)


# -- renewal ----------------------------------------------------------------------------------

RENEW_CONTEXT = b"naas-renew\x00"  # what a renewal request's signature covers starts so
DOCUMENT_REQUEST_CONTEXT = b"naas-document-request\x00"  # ... and a request for the document
RENEW_CLOCK_SKEW = 300  # s a member's request's time may differ from the PoP's


def renew_message(
    network: str, certificate: dict[str, Any], unix_time: int, context: bytes = RENEW_CONTEXT
) -> bytes:
    """The bytes a member signs (Ed25519, its signing key) to ask for a renewal (or, with
    DOCUMENT_REQUEST_CONTEXT, for the newest network document)."""
    return context + canonical_json({"network": network, "certificate": certificate, "time": unix_time})


def _authenticate(
    net: PopNetwork, certificate: Certificate, unix_time: int, signature: bytes, context: bytes
) -> float:
    """Check a member's signed request: the CA's certificate, the time, its signature.
    Returns the PoP's time."""
    now = net.clock()
    if certificate.network != net.name:
        raise Invalid(f"certificate: for network {certificate.network!r}, not {net.name!r}")
    if not ed25519_verify(net.info.ca_public, certificate.signature, tbs_bytes(certificate)):
        raise Forbidden("certificate: not signed by this network's CA")
    if abs(now - unix_time) > RENEW_CLOCK_SKEW:
        off = abs(now - unix_time)
        raise Invalid(f"time: differs from the PoP's clock by {off:.0f} s (at most {RENEW_CLOCK_SKEW})")
    message = renew_message(net.name, certificate_to_dict(certificate), unix_time, context)
    if not ed25519_verify(certificate.signing_public, signature, message):
        raise Forbidden("signature: not made with the certificate's signing key")
    return now


def member_document(net: PopNetwork, certificate: Certificate, unix_time: int, signature: bytes) -> bytes:
    """The newest network document, for a member that proves it holds ``certificate``
    (expired or revoked too: a revoked member that was off learns so from it).
    NotFound before the first document."""
    _authenticate(net, certificate, unix_time, signature, DOCUMENT_REQUEST_CONTEXT)
    latest = net.store.latest_document()
    if latest is None:
        raise NotFound("the network has no document yet")
    return latest[1]


def renew(
    net: PopNetwork,
    certificate: Certificate,
    unix_time: int,
    signature: bytes,
    *,
    allow_expired: bool = False,
) -> Certificate:
    """A new certificate for the member holding ``certificate``: same node id, name, keys
    and address, the groups the store has for it now, a full lifetime from now.

    Authenticated by the certificate itself (the CA's signature) and a signature by its
    signing key over the request: no token. A retry after a renewal that went through
    gets the certificate already issued."""
    now = _authenticate(net, certificate, unix_time, signature, RENEW_CONTEXT)
    if now > certificate.not_after and not allow_expired:
        expired = _utc(certificate.not_after)
        raise Forbidden(f"certificate of {certificate.name} expired at {expired}: ask for a new invitation")
    current = net.store.member(certificate.name)
    if current is None or current.node_id != certificate.node_id:
        if any(r.node_id == certificate.node_id for r in net.store.revocations()):
            raise Forbidden(f"{certificate.name} is revoked: ask for a new invitation")
        raise Forbidden(f"{certificate.name} (node {certificate.node_id}) is not a member")
    same_keys = (current.static_public, current.signing_public) == (
        certificate.static_public,
        certificate.signing_public,
    )
    if not same_keys:
        raise Forbidden(f"{certificate.name} enrolled again with other keys: this certificate is superseded")
    if current != certificate:
        return current  # renewed meanwhile (a retry): the newest stands
    client = net.store.client(certificate.name)
    renewed = issue_certificate(
        net.ca_private,
        network=net.name,
        name=certificate.name,
        node_id=NodeId(certificate.node_id),
        is_pop=certificate.is_pop,
        static_public=certificate.static_public,
        signing_public=certificate.signing_public,
        ip=certificate.ip,
        groups=client.groups if client is not None else certificate.groups,
        now=int(now),
        lifetime=net.config.network.certificate_seconds,
    )
    if not net.store.replace_certificate(certificate, renewed):
        raise Conflict(f"{certificate.name} changed meanwhile: try again")
    return renewed


def renew_own(net: PopNetwork, certificate: Certificate, signing_private: bytes) -> Certificate:
    """A PoP renews its own certificate (at its start, when due or expired): the same
    checks as a member's renewal, with the PoP's own signature and the CA at hand."""
    unix_time = int(net.clock())
    message = renew_message(net.name, certificate_to_dict(certificate), unix_time)
    try:
        return renew(net, certificate, unix_time, ed25519_sign(signing_private, message), allow_expired=True)
    except ValueError as exc:
        raise Conflict(str(exc)) from None


def _utc(unix_time: int) -> str:
    return datetime.datetime.fromtimestamp(unix_time, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
