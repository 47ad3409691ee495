"""The layer-2 switch: which member a destination MAC lives behind.

Members' own MACs encode their node id (model/ids.py), so they need no table. Other
MACs (VMs or namespaces bridged behind a member) are learned from the source MAC of
frames that arrive from that member, like any learning switch, and age out.
Multicast/broadcast and unknown unicast are flooded to every member with a session.
"""

from __future__ import annotations

from naas.core.constants import LEARNED_MAC_TTL, MAX_LEARNED_MACS
from naas.model.ids import node_for_mac


class MacTable:
    __slots__ = ("_learned", "own_node")

    def __init__(self, own_node: int) -> None:
        self.own_node = own_node
        self._learned: dict[bytes, tuple[int, float]] = {}

    def learn(self, mac: bytes, node: int, now: float) -> None:
        if mac[0] & 1 or node_for_mac(mac) is not None:
            return  # multicast sources are bogus; member MACs need no learning
        entry = self._learned.get(mac)
        if entry is not None and entry[0] == node and now - entry[1] < LEARNED_MAC_TTL / 4:
            return  # fresh enough: skip the dict write on the hot path
        if entry is None and len(self._learned) >= MAX_LEARNED_MACS:
            self.expire(now)
            if len(self._learned) >= MAX_LEARNED_MACS:
                return
        self._learned[mac] = (node, now)

    def lookup(self, mac: bytes, now: float) -> int | None:
        """The node behind ``mac``, or None (flood)."""
        node = node_for_mac(mac)
        if node is not None:
            return node
        entry = self._learned.get(mac)
        if entry is None or now - entry[1] > LEARNED_MAC_TTL:
            return None
        return entry[0]

    def expire(self, now: float) -> None:
        for mac in [m for m, (_, seen) in self._learned.items() if now - seen > LEARNED_MAC_TTL]:
            del self._learned[mac]

    def forget_node(self, node: int) -> None:
        """Drop what was learned behind ``node`` (a member removed from the mesh)."""
        for mac in [m for m, (behind, _) in self._learned.items() if behind == node]:
            del self._learned[mac]

    def __len__(self) -> int:
        return len(self._learned)
