"""The network document's ``policy`` and ``addresses`` sections: made by make_document,
read back by parse_document_untrusted, left out when they say nothing (a network without
a policy has the documents it had), and refused, naming the section, when malformed."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

import pytest

from naas.core.crypto import ed25519_public
from naas.core.network_document import make_document, open_document_untrusted
from naas.model.codec import canonical_json
from naas.model.document import DocumentError, Revocation, parse_document_untrusted, sections_of
from naas.model.policy import OPEN_POLICY, Action, Policy, parse_policy

CA = bytes(range(32))
POLICY = parse_policy(
    {
        "default": "deny",
        "rule": [
            {"name": "ssh-from-ops", "from": ["group:ops"], "to": ["group:web"], "proto": "tcp",
             "ports": ["22"], "action": "allow"},
            {"name": "bridged", "from": ["cidr:10.9.0.0/24"], "to": ["any"], "proto": "icmp",
             "action": "allow"},
        ],
    }
)  # fmt: skip


def _make(**extra: Any) -> bytes:
    return make_document(
        CA,
        network="acme",
        version=3,
        issued_at=1_800_000_000,
        groups={7: ("web",)},
        revoked=(Revocation(9, "laptop", 1_900_000_000),),
        **extra,
    ).body


def test_the_sections_are_signed_and_read_back() -> None:
    body = _make(policy=POLICY, allowed_addresses={7: ("10.9.0.0/24", IPv4Network("192.168.1.7/32"))})
    document = open_document_untrusted(body, ed25519_public(CA), "acme")
    assert document.policy == POLICY and document.policy.default is Action.DENY
    assert document.allowed_addresses == {7: (IPv4Network("10.9.0.0/24"), IPv4Network("192.168.1.7/32"))}
    assert document.addresses_of(7) == document.allowed_addresses[7] and document.addresses_of(8) == ()
    sections = json.loads(body)["sections"]
    assert sections["policy"] == POLICY.as_json()
    assert sections["addresses"] == {"7": ["10.9.0.0/24", "192.168.1.7/32"]}


def test_an_open_policy_and_no_addresses_leave_the_document_as_it_was() -> None:
    before = _make()
    assert _make(policy=OPEN_POLICY, allowed_addresses={7: ()}) == before
    assert set(json.loads(before)["sections"]) == {"groups", "revoked"}
    document, _, _ = parse_document_untrusted(before)
    assert document.policy is OPEN_POLICY and document.allowed_addresses == {}


def test_sections_of_sorts_and_deduplicates_addresses() -> None:
    sections = sections_of(
        {}, (), allowed_addresses={12: ("10.1.0.0/16", "10.0.0.0/8", "10.1.0.0/16"), 3: ()}
    )
    assert sections == {"groups": {}, "revoked": [], "addresses": {"12": ["10.0.0.0/8", "10.1.0.0/16"]}}
    assert "policy" in sections_of({}, (), policy=Policy(Action.DENY))


def _with_sections(**sections: Any) -> bytes:
    """A document with these sections (the signature is not checked by the parser)."""
    obj = json.loads(_make())
    obj["sections"].update(sections)
    return canonical_json(obj)


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        ({"policy": []}, "document.sections.policy: expected a table"),
        ({"policy": {"default": "maybe"}}, "document.sections.policy.default: 'maybe' is not allow or deny"),
        ({"policy": {"rule": [{"name": "x", "proto": "tcp", "ports": ["0"], "action": "allow"}]}},
         "document.sections.policy.rule['x'].ports"),
        ({"addresses": []}, "document.sections.addresses: expected an object"),
        ({"addresses": {"x": []}}, "document.sections.addresses: 'x' is not a node id"),
        ({"addresses": {"\u0663": []}}, "is not a node id"),
        ({"addresses": {"99999999999": []}}, "is not a node id"),
        ({"addresses": {"7": "10.0.0.0/8"}}, "document.sections.addresses.7: expected a list"),
        ({"addresses": {"7": ["10.0.0.1/8"]}}, "document.sections.addresses.7[0]: not an IPv4 network"),
        ({"addresses": {"7": [7]}}, "document.sections.addresses.7[0]: not an IPv4 network"),
        ({"addresses": {"7": ["10.0.0.0/8"] * 65}}, "at most 64 networks"),
        ({"groups": {"\u0663": []}}, "document.sections.groups: '\u0663' is not a node id"),
    ],
)  # fmt: skip
def test_a_malformed_section_is_a_document_error_naming_it(sections: dict[str, Any], words: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document_untrusted(_with_sections(**sections))
    assert words in str(caught.value), caught.value
