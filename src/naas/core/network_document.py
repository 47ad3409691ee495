"""The network document's signature and its trip through the mesh (model/document.py).

Theory of operation. The PoPs make a document with ``make_document`` (the CA's key never
leaves the PoP hosts) and store its body; a member opens a body it receives with
``open_document_untrusted``: layout, then the network, then the CA's signature.

In the mesh the body travels compressed inside one control message,
``{"t": "doc", "d": base64url(zlib(body))}`` (core/control_messages.py), so a document
of some thousands of members still fits MAX_CONTROL_BYTES. Decompression stops at
MAX_DOCUMENT_BYTES: a small message never becomes a large allocation.

Who sends it where is core/membership_sync.py's business: the document's version is the
entry of node 0 in the member table's version list, so the hash-first anti-entropy that
keeps member tables in step also finds members with an older document.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network
from typing import Any

from naas.core.crypto import ed25519_sign, ed25519_verify
from naas.model.codec import CodecError, b64d, b64e
from naas.model.document import (
    MAX_DOCUMENT_BYTES,
    DocumentError,
    NetworkDocument,
    Revocation,
    encode_signed,
    parse_document_untrusted,
    signed_message,
    unsigned_fields,
)
from naas.model.network import NetworkInfo
from naas.model.policy import OPEN_POLICY, Policy

DOCUMENT_NODE = 0  # the document's entry in the member table's version list (never a node id)


def make_document(
    ca_private: bytes,
    *,
    network: str,
    version: int,
    issued_at: int,
    groups: Mapping[int, Sequence[str]],
    revoked: Sequence[Revocation],
    extra_sections: Mapping[str, Any] | None = None,
    policy: Policy = OPEN_POLICY,
    allowed_addresses: Mapping[int, Sequence[IPv4Network | str]] | None = None,
) -> NetworkDocument:
    """A new version of the document, signed by the CA. ``policy`` (open: no section) and
    ``allowed_addresses`` (node id -> networks; none: no section) are left out of the
    document when they say nothing."""
    unsigned = unsigned_fields(
        network,
        version,
        issued_at,
        groups,
        revoked,
        extra_sections,
        policy=policy,
        allowed_addresses=allowed_addresses,
    )
    body = encode_signed(unsigned, ed25519_sign(ca_private, signed_message(unsigned)))
    document, _, _ = parse_document_untrusted(body)  # one reading of every document
    return document


def open_document_untrusted(body: bytes, ca_public: bytes, network: str) -> NetworkDocument:
    """The document in ``body`` if the network's CA signed it for ``network``; else
    DocumentError naming the problem."""
    document, message, signature = parse_document_untrusted(body)
    if document.network != network:
        raise DocumentError(f"document.network: {document.network!r} is another network")
    if not ed25519_verify(ca_public, signature, message):
        raise DocumentError("document.signature: does not verify")
    return document


def revoked_by(body: bytes, network: NetworkInfo, node_id: int) -> bool:
    """Whether the document in ``body`` (if it opens) revokes ``node_id``."""
    try:
        return node_id in open_document_untrusted(body, network.ca_public, network.name).revoked_ids
    except DocumentError:
        return False


def pack_for_mesh(body: bytes) -> str:
    """The ``d`` field of a ``doc`` control message."""
    return b64e(zlib.compress(body, 9))


def unpack_from_mesh_untrusted(text: object) -> bytes:
    """The body a ``doc`` message's ``d`` field carries; CodecError when it does not."""
    if not isinstance(text, str):
        raise CodecError("doc.d: expected base64url text")
    packed = b64d(text, field="doc.d")
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(packed, MAX_DOCUMENT_BYTES + 1)
    except zlib.error:
        raise CodecError("doc.d: not zlib") from None
    if len(body) > MAX_DOCUMENT_BYTES or not inflater.eof or inflater.unused_data:
        raise CodecError("doc.d: not one document of at most MAX_DOCUMENT_BYTES")
    return body
