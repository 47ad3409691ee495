"""Identifiers: node ids, overlay MAC addresses, underlay endpoints.

A node id is a 32-bit unsigned integer handed out by the PoPs at enrollment (0 is
never used: it means "nobody" on the wire). A member's overlay MAC is derived from
its node id, so that a MAC in a frame maps back to a member without a lookup table:
``02:4e:<node id, 4 bytes big-endian>`` (locally administered, unicast).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import NewType

NodeId = NewType("NodeId", int)

NODE_ID_MAX = 0xFFFF_FFFF
MAC_PREFIX = b"\x02\x4e"
BROADCAST_MAC = b"\xff" * 6
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # network, member, group and rule names
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(text: object) -> bool:
    return isinstance(text, str) and _NAME_RE.fullmatch(text) is not None  # "$" would allow "abc\n"


def is_valid_node_id(value: int) -> bool:
    return 0 < value <= NODE_ID_MAX


def mac_for_node(node_id: NodeId) -> bytes:
    """The overlay MAC of a member: 02:4e followed by the node id."""
    return MAC_PREFIX + node_id.to_bytes(4, "big")


def node_for_mac(mac: bytes) -> NodeId | None:
    """The node id a member MAC encodes, or None for any other MAC."""
    if len(mac) != 6 or mac[:2] != MAC_PREFIX:
        return None
    value = int.from_bytes(mac[2:], "big")
    return NodeId(value) if value else None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An underlay UDP address (host, port) where a member can be reached."""

    host: str
    port: int

    def __post_init__(self) -> None:
        ip_address(self.host)  # raises ValueError on anything but a literal address
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")

    @property
    def address(self) -> IPv4Address | IPv6Address:
        return ip_address(self.host)

    def as_tuple(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port`` or ``[v6]:port``."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):
            raise ValueError(f"not host:port: {text!r}")
        return cls(host, int(port))
