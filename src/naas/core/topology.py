"""Topology: one member's view of the mesh, as data for status, graphs and drawings.

Theory of operation. ``NodeCore.topology(now)`` takes a snapshot of what the member
knows (core/status.py builds it from the node's state): every member (itself included)
with how it is reached from here, and every live link of the mesh with its RTT.
Everything a person or a monitoring system sees comes from this one model, so they
cannot disagree:

    naas status          Topology -> a table (cli/member.py)
    naas status --json   Topology.to_dict()
    naas graph --json    Topology.to_dict()["graph"]
    naas draw / naas-drawing   Topology -> DOT (views/dot.py) -> Graphviz
    the metrics port     Topology -> Prometheus text (views/metrics.py)

Reach, from the local member's point of view:

    self          this member
    direct        a live direct link (probes answered, session up)
    relayed       a session, no live direct link: traffic goes via another member
    idle          a large mesh (core/standing.py): no link until frames flow, a path exists
    connecting    a handshake is in flight, for less than CONNECTING_FOR seconds
    unreachable   none of the above (a member that went away, after CONNECTING_FOR)

A member's RTT is shown while its direct link is up, and only then.

Links are the two-way links of the link-state database (both ends advertise them, the
rule routing uses) between members this one has a path to, plus its own live links; the
RTT shown is the mean of the two ends' advertised costs. ``from_dict`` parses the JSON
form back (the CLI reads it from the agent's control socket) and rejects anything
malformed with TopologyError.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

CONNECTING_FOR = 10.0  # seconds of unanswered initiations after which a member is unreachable


class Reach(enum.Enum):
    SELF = "self"
    DIRECT = "direct"
    RELAYED = "relayed"
    IDLE = "idle"
    CONNECTING = "connecting"
    UNREACHABLE = "unreachable"


class TopologyError(ValueError):
    """A topology in JSON form that does not parse."""


@dataclass(frozen=True, slots=True)
class MemberView:
    node_id: int
    name: str
    pop: bool
    ip: str | None  # overlay address, without prefix
    mac: str
    reach: Reach
    via: str | None = None  # the next hop's name while relayed
    endpoint: str | None = None  # host:port packets last came from
    rtt_ms: float | None = None  # of the direct link, smoothed
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    handshakes: int = 0
    session_age_s: float | None = None
    rx_lost: int = 0  # its messages that never arrived (core/loss.py)
    superframes_cut: bool = False  # super-frames to it are cut into smaller ones: a lossy link
    groups: tuple[str, ...] = ()  # the network document's, else its certificate's
    document_version: int = 0  # of the network document it holds, as far as we know (0: unknown)

    @property
    def path(self) -> str:
        """What `naas status` prints: direct, via NAME, idle, connecting, unreachable."""
        if self.reach is Reach.RELAYED:
            return f"via {self.via}"
        return str(self.reach.value)


@dataclass(frozen=True, slots=True)
class LinkView:
    a: int  # node ids, a < b
    b: int
    rtt_ms: float


@dataclass(frozen=True, slots=True)
class Topology:
    network: str
    local: int  # node id of the member whose view this is
    mtu: int
    members: tuple[MemberView, ...]  # the local member first, then by name
    links: tuple[LinkView, ...]
    drops: dict[str, int] = field(default_factory=dict)
    relayed_packets: int = 0
    relayed_bytes: int = 0
    learned_macs: int = 0
    document_version: int = 0  # of the network document held; 0: none yet
    document_applied_at: float = 0.0  # when this member took it (Unix seconds, its clock)
    revoked: tuple[tuple[int, str], ...] = ()  # (node id, name) the document revokes
    policy: dict[str, Any] = field(default_factory=dict)  # core/firewall.py Firewall.status()

    @property
    def me(self) -> MemberView:
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``naas status --json`` (its "graph" key: ``naas graph --json``)."""
        me = self.me
        peers = []
        for member in self.members[1:]:
            row = asdict(member)
            row["reach"] = member.reach.value
            row["path"] = member.path
            row["groups"] = list(member.groups)
            peers.append(row)
        return {
            "network": self.network,
            "node": {
                "name": me.name,
                "node_id": me.node_id,
                "pop": me.pop,
                "ip": me.ip,
                "mac": me.mac,
                "mtu": self.mtu,
                "groups": list(me.groups),
            },
            "document": {
                "version": self.document_version,
                "applied_at": self.document_applied_at,
                "revoked": [{"node_id": node, "name": name} for node, name in self.revoked],
            },
            "peers": peers,
            "relayed": {"packets": self.relayed_packets, "bytes": self.relayed_bytes},
            "drops": dict(sorted(self.drops.items())),
            "learned_macs": self.learned_macs,
            "policy": self.policy,
            "graph": {
                "local": self.local,
                "nodes": [
                    {
                        "node_id": m.node_id,
                        "name": m.name,
                        "pop": m.pop,
                        "ip": m.ip,
                        "reach": m.reach.value,
                        "via": m.via,
                    }
                    for m in self.members
                ],
                "links": [{"a": link.a, "b": link.b, "rtt_ms": link.rtt_ms} for link in self.links],
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> Topology:
        """Parse the JSON form of ``to_dict``; TopologyError names what is wrong."""
        try:
            node, peers = data["node"], data["peers"]
            mtu = _int(node["mtu"], "node.mtu")
            me = MemberView(
                node_id=_int(node["node_id"], "node.node_id"),
                name=_str(node["name"], "node.name"),
                pop=_bool(node["pop"], "node.pop"),
                ip=_ip(node["ip"], "node.ip"),
                mac=_str(node["mac"], "node.mac"),
                reach=Reach.SELF,
                groups=_groups(node.get("groups", []), "node.groups"),
            )
            if not isinstance(peers, list):
                raise TopologyError("peers: not a list")
            members = [me] + [_member(row, f"peers[{i}]") for i, row in enumerate(peers)]
            ids = {m.node_id for m in members}
            if len(ids) != len(members):
                raise TopologyError("peers: duplicate node id")
            raw_links = data["graph"]["links"]
            if not isinstance(raw_links, list):
                raise TopologyError("graph.links: not a list")
            links = []
            for i, raw in enumerate(raw_links):
                a, b = _int(raw["a"], f"graph.links[{i}].a"), _int(raw["b"], f"graph.links[{i}].b")
                if a not in ids or b not in ids or a >= b:
                    raise TopologyError(f"graph.links[{i}]: not a link between two known members")
                links.append(LinkView(a, b, _float(raw["rtt_ms"], f"graph.links[{i}].rtt_ms")))
            drops = data.get("drops", {})
            if not isinstance(drops, dict):
                raise TopologyError("drops: not an object")
            relayed = data.get("relayed", {})
            document = data.get("document", {})
            revoked = document.get("revoked", [])
            if not isinstance(revoked, list):
                raise TopologyError("document.revoked: not a list")
            return cls(
                network=_str(data["network"], "network"),
                local=me.node_id,
                mtu=mtu,
                members=tuple(members),
                links=tuple(links),
                drops={_str(k, "drops"): _int(v, f"drops.{k}") for k, v in drops.items()},
                relayed_packets=_int(relayed.get("packets", 0), "relayed.packets"),
                relayed_bytes=_int(relayed.get("bytes", 0), "relayed.bytes"),
                learned_macs=_int(data.get("learned_macs", 0), "learned_macs"),
                document_version=_int(document.get("version", 0), "document.version"),
                document_applied_at=_unix_time(document.get("applied_at", 0.0), "document.applied_at"),
                revoked=tuple(
                    (_int(r["node_id"], "document.revoked.node_id"), _str(r["name"], "document.revoked.name"))
                    for r in revoked
                ),
                policy=_policy(data.get("policy", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise TopologyError(f"missing or malformed field: {exc}") from None


def _policy(raw: Any) -> dict[str, Any]:
    """The status's policy object: its counters checked, the rest kept as it is."""
    if not isinstance(raw, dict):
        raise TopologyError("policy: not an object")
    for key in ("hits", "denied_in", "denied_out"):
        counters = raw.get(key, {})
        if not isinstance(counters, dict):
            raise TopologyError(f"policy.{key}: not an object")
        for rule, count in counters.items():
            _str(rule, f"policy.{key}")
            _int(count, f"policy.{key}.{rule}")
    return raw


def _member(row: Any, where: str) -> MemberView:
    try:
        reach = Reach(row["reach"])
    except ValueError:
        raise TopologyError(f"{where}.reach: unknown value {row['reach']!r}") from None
    if reach is Reach.SELF:
        raise TopologyError(f"{where}.reach: only the local member is self")
    return MemberView(
        node_id=_int(row["node_id"], f"{where}.node_id"),
        name=_str(row["name"], f"{where}.name"),
        pop=_bool(row["pop"], f"{where}.pop"),
        ip=_ip(row["ip"], f"{where}.ip"),
        mac=_str(row["mac"], f"{where}.mac"),
        reach=reach,
        via=_opt_str(row.get("via"), f"{where}.via"),
        endpoint=_opt_str(row.get("endpoint"), f"{where}.endpoint"),
        rtt_ms=None if row.get("rtt_ms") is None else _float(row["rtt_ms"], f"{where}.rtt_ms"),
        rx_bytes=_int(row.get("rx_bytes", 0), f"{where}.rx_bytes"),
        tx_bytes=_int(row.get("tx_bytes", 0), f"{where}.tx_bytes"),
        rx_packets=_int(row.get("rx_packets", 0), f"{where}.rx_packets"),
        tx_packets=_int(row.get("tx_packets", 0), f"{where}.tx_packets"),
        handshakes=_int(row.get("handshakes", 0), f"{where}.handshakes"),
        session_age_s=None
        if row.get("session_age_s") is None
        else _float(row["session_age_s"], f"{where}.session_age_s"),
        rx_lost=_int(row.get("rx_lost", 0), f"{where}.rx_lost"),
        superframes_cut=_bool(row.get("superframes_cut", False), f"{where}.superframes_cut"),
        groups=_groups(row.get("groups", []), f"{where}.groups"),
        document_version=_int(row.get("document_version", 0), f"{where}.document_version"),
    )


def _groups(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TopologyError(f"{where}: not a list")
    return tuple(_str(group, where) for group in value)


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TopologyError(f"{where}: not a non-negative integer")
    return value


def _float(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1e9:
        raise TopologyError(f"{where}: not a number")
    return float(value)


def _unix_time(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1e11:
        raise TopologyError(f"{where}: not a time")
    return float(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise TopologyError(f"{where}: not a string")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _ip(value: Any, where: str) -> str | None:
    """An overlay address as the status shows it ("172.32.0.5" or "172.32.0.5/16")."""
    return None if value is None else _str(value, where)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TopologyError(f"{where}: not true or false")
    return value
