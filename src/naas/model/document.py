"""The network document: what the PoPs want the network to be, one signed version per change.

Every change an operator makes (a member revoked, a member's groups changed; later
rules, gateways, service IPs) gives the network a new document: the previous one with
that change, ``version`` one higher, signed by the network CA. Members check the
signature, keep the newest version they have seen, apply it and pass it on through the
mesh (core/network_document.py carries it; core/membership_sync.py spreads it).

Its JSON, as signed (canonical: sorted keys, no spaces, UTF-8)::

    {"format": 1,                       the layout below; a member refuses a format it
                                        does not know
     "network": "acme",                 must be the member's own network
     "version": 42,                     1, 2, 3 ... one per change; newer wins
     "issued_at": 1700000000,           Unix seconds, informative
     "sections": {
        "groups":  {"7": ["db", "web"]},       node id -> the member's groups (sorted);
                                               a member not listed keeps its certificate's
        "revoked": [{"node": 9, "name": "laptop", "until": 1730000000}],
                                               cut off; listed until its certificate's end
        "policy":  {"default": "deny", "rule": [...]},
                                               who may talk to whom (model/policy.py);
                                               absent: everything allowed
        "addresses": {"7": ["10.9.0.0/24"]},   node id -> the networks the member may send
                                               from besides its own address (routers,
                                               bridged hosts); absent: none
        "...": ...                             sections a member does not know: ignored,
     },                                        and passed on unchanged

``policy`` and ``addresses`` are left out when they say nothing (an open policy, no
member with other addresses), so a network that uses neither has the documents it had
before they existed.
     "signature": "<base64url Ed25519 of b'naas-document\\x00' + the JSON above without it>"}

A member passes on the bytes it received, never a re-encoding, so that sections it does
not know reach the members that do. This module is pure data and JSON: the signature is
made and checked in core/network_document.py, with core/crypto.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

from naas.model.codec import CodecError, b64d, b64e, canonical_json
from naas.model.ids import is_valid_name, is_valid_node_id
from naas.model.policy import OPEN_POLICY, Policy, PolicyError, parse_policy

FORMAT = 1
SIGNATURE_CONTEXT = b"naas-document\x00"  # a document signature is never a certificate's
MAX_DOCUMENT_BYTES = 1 << 20  # a signed document larger than this is refused
MAX_GROUPS_PER_MEMBER = 32
MAX_VERSION = 2**53 - 1  # JSON-safe
MAX_ALLOWED_ADDRESSES = 64  # networks a member may send from besides its own address
KNOWN_SECTIONS = ("groups", "revoked", "policy", "addresses")  # what sections_of makes


class DocumentError(CodecError):
    """A document that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class Revocation:
    node_id: int
    name: str
    until: int  # the revoked certificate's not_after: listing it longer changes nothing


@dataclass(frozen=True, slots=True)
class NetworkDocument:
    network: str
    version: int
    issued_at: int
    groups: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    revoked: tuple[Revocation, ...] = ()
    policy: Policy = OPEN_POLICY
    allowed_addresses: Mapping[int, tuple[IPv4Network, ...]] = field(default_factory=dict)
    body: bytes = field(default=b"", compare=False)  # the signed JSON, as received or made

    @property
    def revoked_ids(self) -> frozenset[int]:
        return frozenset(r.node_id for r in self.revoked)

    def groups_of(self, node_id: int, certificate_groups: tuple[str, ...]) -> tuple[str, ...]:
        """A member's groups: the document's if it lists the member, else the certificate's."""
        return self.groups.get(node_id, certificate_groups)

    def addresses_of(self, node_id: int) -> tuple[IPv4Network, ...]:
        """The networks a member may send from besides its own address (none if unlisted)."""
        return self.allowed_addresses.get(node_id, ())


def sections_of(
    groups: Mapping[int, Sequence[str]],
    revoked: Sequence[Revocation],
    *,
    policy: Policy = OPEN_POLICY,
    allowed_addresses: Mapping[int, Sequence[IPv4Network | str]] | None = None,
) -> dict[str, Any]:
    """The sections this module knows, as the document's JSON holds them (the store
    compares them with the newest document's to see whether a change changed anything)."""
    sections: dict[str, Any] = {
        "groups": {str(node): sorted(set(names)) for node, names in sorted(groups.items())},
        "revoked": [
            {"node": r.node_id, "name": r.name, "until": r.until}
            for r in sorted(revoked, key=lambda r: r.node_id)
        ],
    }
    if not policy.is_open:
        sections["policy"] = policy.as_json()
    addresses = {
        str(node): [str(net) for net in sorted({IPv4Network(n) for n in networks})]
        for node, networks in sorted((allowed_addresses or {}).items())
        if networks
    }
    if addresses:
        sections["addresses"] = addresses
    return sections


def unsigned_fields(
    network: str,
    version: int,
    issued_at: int,
    groups: Mapping[int, Sequence[str]],
    revoked: Sequence[Revocation],
    extra_sections: Mapping[str, Any] | None = None,
    *,
    policy: Policy = OPEN_POLICY,
    allowed_addresses: Mapping[int, Sequence[IPv4Network | str]] | None = None,
) -> dict[str, Any]:
    """The document's JSON object without its signature (what the CA signs)."""
    sections: dict[str, Any] = dict(extra_sections or {})
    sections.update(sections_of(groups, revoked, policy=policy, allowed_addresses=allowed_addresses))
    return {
        "format": FORMAT,
        "network": network,
        "version": version,
        "issued_at": issued_at,
        "sections": sections,
    }


def signed_message(unsigned: Mapping[str, Any]) -> bytes:
    """The bytes the CA's signature covers."""
    return SIGNATURE_CONTEXT + canonical_json(dict(unsigned))


def encode_signed(unsigned: Mapping[str, Any], signature: bytes) -> bytes:
    return canonical_json({**unsigned, "signature": b64e(signature)})


def parse_document_untrusted(data: bytes) -> tuple[NetworkDocument, bytes, bytes]:
    """(document, the bytes its signature covers, the signature), from untrusted bytes.

    Checks the layout only; the caller checks the signature and the network. Raises
    DocumentError naming the first problem."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"document: larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        obj: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DocumentError("document: not JSON") from None
    if not isinstance(obj, dict):
        raise DocumentError("document: expected an object")
    fmt = _int(obj, "format")
    if fmt != FORMAT:
        raise DocumentError(f"document.format: {fmt} is not a format this member knows ({FORMAT})")
    network = obj.get("network")
    if not isinstance(network, str) or not is_valid_name(network):
        raise DocumentError("document.network: not a network name")
    version = _int(obj, "version")
    if not 1 <= version <= MAX_VERSION:
        raise DocumentError("document.version: out of range")
    issued_at = _int(obj, "issued_at")
    if not 0 <= issued_at <= MAX_VERSION:
        raise DocumentError("document.issued_at: out of range")
    sections = obj.get("sections")
    if not isinstance(sections, dict):
        raise DocumentError("document.sections: expected an object")
    signature_text = obj.pop("signature", None)
    if not isinstance(signature_text, str):
        raise DocumentError("document.signature: missing")
    try:
        signature = b64d(signature_text, length=64, field="document.signature")
        message = SIGNATURE_CONTEXT + canonical_json(obj)
    except CodecError as exc:
        raise DocumentError(str(exc)) from None
    except UnicodeEncodeError:  # a lone surrogate, escaped in the JSON
        raise DocumentError("document: text that is not Unicode") from None
    document = NetworkDocument(
        network=network,
        version=version,
        issued_at=issued_at,
        groups=_groups(sections.get("groups", {})),
        revoked=_revoked(sections.get("revoked", [])),
        policy=_policy(sections.get("policy")),
        allowed_addresses=_addresses(sections.get("addresses", {})),
        body=bytes(data),
    )
    return document, message, signature


def _int(obj: Mapping[str, Any], key: str, where: str = "document") -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DocumentError(f"{where}.{key}: expected an integer")
    return value


def _groups(raw: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise DocumentError("document.sections.groups: expected an object")
    groups: dict[int, tuple[str, ...]] = {}
    for key, names in raw.items():
        if not _is_node_key(key):
            raise DocumentError(f"document.sections.groups: {key!r} is not a node id")
        if not isinstance(names, list) or len(names) > MAX_GROUPS_PER_MEMBER:
            raise DocumentError(f"document.sections.groups.{key}: expected a list of groups")
        if not all(isinstance(name, str) and is_valid_name(name) for name in names):
            raise DocumentError(f"document.sections.groups.{key}: not a group name")
        groups[int(key)] = tuple(sorted(set(names)))
    return groups


def _revoked(raw: Any) -> tuple[Revocation, ...]:
    if not isinstance(raw, list):
        raise DocumentError("document.sections.revoked: expected a list")
    revoked = []
    for index, entry in enumerate(raw):
        where = f"document.sections.revoked[{index}]"
        if not isinstance(entry, dict):
            raise DocumentError(f"{where}: expected an object")
        node = _int(entry, "node", where)
        if not is_valid_node_id(node):
            raise DocumentError(f"{where}.node: not a node id")
        name = entry.get("name")
        if not isinstance(name, str) or not is_valid_name(name):
            raise DocumentError(f"{where}.name: not a member name")
        revoked.append(Revocation(node, name, _int(entry, "until", where)))
    return tuple(revoked)


def _is_node_key(key: object) -> bool:
    """A node id as a JSON object's key: ASCII digits ("٣".isdigit() is true too)."""
    return (
        isinstance(key, str)
        and key.isascii()
        and key.isdigit()
        and len(key) <= 10
        and is_valid_node_id(int(key))
    )


def _policy(raw: Any) -> Policy:
    if raw is None:
        return OPEN_POLICY
    try:
        return parse_policy(raw, "document.sections.policy")
    except PolicyError as exc:
        raise DocumentError(str(exc)) from None


def _addresses(raw: Any) -> dict[int, tuple[IPv4Network, ...]]:
    if not isinstance(raw, dict):
        raise DocumentError("document.sections.addresses: expected an object")
    addresses: dict[int, tuple[IPv4Network, ...]] = {}
    for key, networks in raw.items():
        if not _is_node_key(key):
            raise DocumentError(f"document.sections.addresses: {key!r} is not a node id")
        where = f"document.sections.addresses.{key}"
        if not isinstance(networks, list) or len(networks) > MAX_ALLOWED_ADDRESSES:
            raise DocumentError(f"{where}: expected a list of at most {MAX_ALLOWED_ADDRESSES} networks")
        parsed = []
        for index, text in enumerate(networks):
            try:
                if not isinstance(text, str) or len(text) > 18:
                    raise ValueError
                parsed.append(IPv4Network(text))
            except ValueError:
                raise DocumentError(f"{where}[{index}]: not an IPv4 network (A.B.C.D/N)") from None
        addresses[int(key)] = tuple(sorted(set(parsed)))
    return addresses
