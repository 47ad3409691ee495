"""The layer-2 switch: which member a destination MAC lives behind.

Members' own MACs encode their node id (model/ids.py), so they need no table. Other
MACs (VMs or namespaces bridged behind a member) are learned from the source MAC of
frames that arrive from that member, like any learning switch, and age out.
Multicast/broadcast and unknown unicast are flooded to every member with a session.

A learnt MAC does not jump to another member on the first frame that claims it: that
would let any member take a bridged host's traffic with one forged frame. A MAC moves
only once it has been quiet at its old place for ``MAC_MOVE_QUIET`` seconds; until then
frames from the new place are refused (``learn`` returns False: the data path drops them
as ``spoofed_source``). A VM that migrates sends from its new place after it stopped at
the old one, so it moves within that time; a host that keeps talking keeps its place.
"""

from __future__ import annotations

from naas.core.constants import LEARNED_MAC_TTL, MAC_MOVE_QUIET, MAX_LEARNED_MACS
from naas.model.ids import node_for_mac


class _Place:
    """Where a learnt MAC lives and when it was last heard there."""

    __slots__ = ("heard", "node")

    def __init__(self, node: int, heard: float) -> None:
        self.node, self.heard = node, heard


class MacTable:
    __slots__ = ("_learned", "own_node")

    def __init__(self, own_node: int) -> None:
        self.own_node = own_node
        self._learned: dict[bytes, _Place] = {}

    def learn(self, mac: bytes, node: int, now: float) -> bool:
        """A frame from ``mac`` came from ``node``; False if the MAC was heard at another
        member less than MAC_MOVE_QUIET ago (the frame must be dropped)."""
        if mac[0] & 1 or node_for_mac(mac) is not None:
            return True  # multicast sources are bogus; member MACs need no learning
        entry = self._learned.get(mac)
        if entry is not None:
            if entry.node == node:
                entry.heard = now
                return True
            if now - entry.heard < MAC_MOVE_QUIET:
                return False
        elif len(self._learned) >= MAX_LEARNED_MACS:
            self.expire(now)
            if len(self._learned) >= MAX_LEARNED_MACS:
                return True  # full: forwarded, not learnt (flooded replies)
        self._learned[mac] = _Place(node, now)
        return True

    def lookup(self, mac: bytes, now: float) -> int | None:
        """The node behind ``mac``, or None (flood)."""
        node = node_for_mac(mac)
        if node is not None:
            return node
        entry = self._learned.get(mac)
        if entry is None or now - entry.heard > LEARNED_MAC_TTL:
            return None
        return entry.node

    def expire(self, now: float) -> None:
        for mac in [m for m, place in self._learned.items() if now - place.heard > LEARNED_MAC_TTL]:
            del self._learned[mac]

    def forget_node(self, node: int) -> None:
        """Drop what was learned behind ``node`` (a member removed from the mesh)."""
        for mac in [m for m, place in self._learned.items() if place.node == node]:
            del self._learned[mac]

    def __len__(self) -> int:
        return len(self._learned)
