"""The network CA: turns an accepted enrollment into a signed member certificate.

Pure: the caller passes the CA's private key, the time and every field. The validity
starts ``CLOCK_SKEW`` seconds before ``now`` (a tenth of the lifetime if that is less)
so that a member whose clock lags a little behind the PoP's still accepts its fresh
certificate, and ends ``lifetime`` seconds (or ``days`` days) after ``now``. The
signature is Ed25519 over ``codec.tbs_bytes`` (core.crypto.sign_certificate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from ipaddress import IPv4Interface

from naas.core.crypto import KEY_LEN, sign_certificate
from naas.model.certificate import Certificate
from naas.model.ids import NodeId, is_valid_name, is_valid_node_id

CLOCK_SKEW = 600  # seconds a certificate is back-dated by
DAY = 86_400
MIN_LIFETIME = 60


def issue_certificate(
    ca_private: bytes,
    *,
    network: str,
    name: str,
    node_id: NodeId,
    is_pop: bool,
    static_public: bytes,
    signing_public: bytes,
    ip: IPv4Interface | None,
    groups: Iterable[str],
    now: int,
    days: int | None = None,
    lifetime: int | None = None,
) -> Certificate:
    """A certificate for one member, signed by the CA. Raises ValueError on bad input."""
    if len(ca_private) != KEY_LEN:
        raise ValueError("CA private key must be 32 bytes")
    if not is_valid_name(network):
        raise ValueError(f"not a network name: {network!r}")
    if not is_valid_name(name):
        raise ValueError(f"not a member name: {name!r}")
    if not is_valid_node_id(node_id):
        raise ValueError(f"node id out of range: {node_id}")
    if len(static_public) != KEY_LEN or len(signing_public) != KEY_LEN:
        raise ValueError("public keys must be 32 bytes")
    if (days is None) == (lifetime is None):
        raise ValueError("give the validity in days or as a lifetime in seconds")
    seconds = days * DAY if days is not None else int(lifetime or 0)
    if seconds < MIN_LIFETIME:
        raise ValueError(f"validity must be at least {MIN_LIFETIME} s, got {seconds}")
    now = int(now)
    unsigned = Certificate(
        network=network,
        name=name,
        node_id=node_id,
        is_pop=is_pop,
        static_public=bytes(static_public),
        signing_public=bytes(signing_public),
        not_before=now - min(CLOCK_SKEW, seconds // 10),
        not_after=now + seconds,
        ip=ip,
        groups=tuple(groups),
    )
    return dataclasses.replace(unsigned, signature=sign_certificate(ca_private, unsigned))
