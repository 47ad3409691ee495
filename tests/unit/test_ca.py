"""The CA signs certificates that core.crypto then accepts."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Interface

import pytest

from naas.core.crypto import certificate_problem, ed25519_public, x25519_public
from naas.model.certificate import Certificate
from naas.model.ids import NodeId
from naas.pop.ca import CLOCK_SKEW, DAY, issue_certificate

CA_PRIVATE = bytes(range(32))
CA_PUBLIC = ed25519_public(CA_PRIVATE)
NOW = 1_700_000_000
STATIC = x25519_public(b"\x11" * 32)
SIGNING = ed25519_public(b"\x22" * 32)
WEB_IP = IPv4Interface("172.32.1.10/16")


def _issue(
    *,
    network: str = "acme",
    name: str = "web",
    node_id: int = 7,
    static_public: bytes = STATIC,
    signing_public: bytes = SIGNING,
    ip: IPv4Interface | None = WEB_IP,
    groups: tuple[str, ...] = ("frontend",),
    days: int = 365,
) -> Certificate:
    return issue_certificate(
        CA_PRIVATE,
        network=network,
        name=name,
        node_id=NodeId(node_id),
        is_pop=False,
        static_public=static_public,
        signing_public=signing_public,
        ip=ip,
        groups=groups,
        now=NOW,
        days=days,
    )


def test_issued_certificate_verifies_and_carries_the_fields() -> None:
    cert = _issue()
    assert certificate_problem(cert, CA_PUBLIC, "acme", NOW) is None
    assert (cert.network, cert.name, cert.node_id, cert.is_pop) == ("acme", "web", 7, False)
    assert (cert.static_public, cert.signing_public) == (STATIC, SIGNING)
    assert cert.ip == IPv4Interface("172.32.1.10/16")
    assert cert.groups == ("frontend",)
    assert cert.not_before == NOW - CLOCK_SKEW
    assert cert.not_after == NOW + 365 * DAY
    assert len(cert.signature) == 64


def test_a_clock_slightly_behind_still_accepts_and_expiry_is_enforced() -> None:
    cert = _issue(days=1)
    assert certificate_problem(cert, CA_PUBLIC, "acme", NOW - 60) is None
    assert certificate_problem(cert, CA_PUBLIC, "acme", NOW + DAY + 1) is not None


def test_tampering_or_another_ca_is_detected() -> None:
    cert = _issue()
    forged = dataclasses.replace(cert, ip=IPv4Interface("172.32.1.99/16"))
    assert certificate_problem(forged, CA_PUBLIC, "acme", NOW) == ("certificate signature does not verify")
    assert certificate_problem(cert, ed25519_public(b"\x33" * 32), "acme", NOW) is not None
    assert certificate_problem(cert, CA_PUBLIC, "other", NOW) is not None


def test_pure_layer2_certificate_has_no_address() -> None:
    cert = _issue(ip=None, groups=())
    assert cert.ip is None and cert.groups == ()


@pytest.mark.parametrize(
    "bad",
    [
        {"node_id": 0},
        {"node_id": 2**32},
        {"name": "Not Valid"},
        {"network": ""},
        {"static_public": b"\x00" * 31},
        {"signing_public": b""},
        {"days": 0},
    ],
)
def test_bad_input_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _issue(**bad)  # type: ignore[arg-type]
