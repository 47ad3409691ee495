"""What a member knows about its network: the description handed out at enrollment
and the records it keeps (and gossips) about the other members."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from naas.model.certificate import Certificate
from naas.model.ids import Endpoint


@dataclass(frozen=True, slots=True)
class PopInfo:
    name: str
    mesh_endpoint: Endpoint  # UDP, the mesh member at a known address
    enrollment_endpoint: Endpoint  # HTTPS, the enrollment service
    tls_pin: str  # "sha256:<base64url>" of the PoP's TLS public key


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """The network as a member sees it; sent by a PoP at enrollment."""

    name: str
    mesh_port: int
    ca_public: bytes  # Ed25519, 32 bytes
    pops: tuple[PopInfo, ...]
    subnet: IPv4Network | None = None  # None: pure layer 2, no addresses, no DHCP/ARP answers
    gateway: IPv4Address | None = None  # optional router on the overlay (DHCP option 3)

    @property
    def layer3(self) -> bool:
        return self.subnet is not None


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member and the underlay endpoints it was last seen at."""

    certificate: Certificate
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def node_id(self) -> int:
        return self.certificate.node_id
