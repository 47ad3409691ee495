"""Node certificates: what the network CA vouches for about a member.

A certificate binds a member's name, node id, overlay MAC/IP and groups to its two
public keys: the X25519 static key used in the Noise IK handshake and the Ed25519
key it will sign its own control messages with (the link-state deltas of the routing
issue; nothing is signed with it yet). The CA signs the
canonical encoding of every field but the signature (``tbs_bytes``, see codec.py).
Verification lives in core/crypto.py; this module only holds the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Interface

from naas.model.ids import NodeId, mac_for_node


@dataclass(frozen=True, slots=True)
class Certificate:
    network: str
    name: str
    node_id: NodeId
    is_pop: bool
    static_public: bytes  # X25519 public key, 32 bytes (Noise "s")
    signing_public: bytes  # Ed25519 public key, 32 bytes
    not_before: int  # Unix seconds
    not_after: int  # Unix seconds
    ip: IPv4Interface | None = None  # overlay address with prefix, None in pure L2
    groups: tuple[str, ...] = ()
    signature: bytes = field(default=b"", compare=False)  # Ed25519 by the CA

    @property
    def mac(self) -> bytes:
        return mac_for_node(self.node_id)

    def valid_at(self, unix_time: float) -> bool:
        return self.not_before <= unix_time <= self.not_after
