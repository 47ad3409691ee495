"""Deciding a new flow: which rule of the policy applies, allow or deny.

Theory of operation. The policy (model/policy.py) is a list of rules tried in order,
the first that matches deciding, and a default action for flows no rule matches. A rule
matches a flow when its ``from`` side matches the sender, its ``to`` side the receiver,
its protocol the frame and its ports the destination port:

- ``any`` matches every member; ``group:NAME`` a member in that group (its groups are
  the network document's, else its certificate's); ``member:NAME`` the member of that
  name. These are the parties' authenticated identities: the sender is the member whose
  session opened the frame, never an address in it.
- ``cidr:NET`` matches the frame's IPv4 source (``from``) or destination (``to``): hosts
  bridged or routed behind a member. Port security (core/firewall.py) has already checked
  that the source address is one the sending member may use.
- ``tcp``/``udp``/``icmp`` match IPv4 with that protocol, ``ethertype:0xNNNN`` the
  EtherType a frame carries (under any 802.1Q tags), ``any`` every frame. Ports are the
  TCP or UDP destination port; a non-first IPv4 fragment has none and matches only rules
  without ports.

``PolicyEngine`` compiles the rules once per pair of members: the first flow between two
members keeps the rules whose identity sides can match them (a rule for other groups is
never looked at again for that pair); later flows walk only those, checking protocol,
ports and addresses. The engine is rebuilt when the document changes; core/firewall.py
caches each flow's decision in its connection table, so this runs once per flow, not per
packet.

``trace`` explains a decision rule by rule, for ``naas policy trace`` and the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from naas.model.policy import (
    DEFAULT_RULE,
    IP_PROTOCOLS,
    Action,
    Policy,
    Protocol,
    Rule,
    Selector,
    SelectorKind,
)

ETHERTYPE_IPV4 = 0x0800


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a flow as the policy sees it: a member's authenticated identity."""

    node_id: int
    name: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    rule: str  # the deciding rule's name, or "default"
    index: int  # its position in the policy (0-based), -1 for the default


_Cidrs = tuple[tuple[int, int], ...]  # (network address, mask) pairs, as integers


@dataclass(frozen=True, slots=True)
class _PairRule:
    """A rule as it applies to one pair of members: identity already matched."""

    index: int
    rule: Rule
    source_cidrs: _Cidrs | None  # None: the sender matched by identity
    destination_cidrs: _Cidrs | None
    ethertype: int  # -1: any frame
    proto: int  # IP protocol, -1: any
    ports: tuple[tuple[int, int], ...]
    allow: bool


def _identity_matches(selector: Selector, party: Party) -> bool:
    if selector.kind is SelectorKind.ANY:
        return True
    if selector.kind is SelectorKind.GROUP:
        return selector.name in party.groups
    if selector.kind is SelectorKind.MEMBER:
        return selector.name == party.name
    return False


def _side(selectors: tuple[Selector, ...], party: Party) -> tuple[bool, _Cidrs | None]:
    """(can match at all, cidrs to check: None when the identity matched)."""
    if any(_identity_matches(s, party) for s in selectors):
        return True, None
    cidrs = tuple(
        (int(s.network.network_address), int(s.network.netmask))
        for s in selectors
        if s.kind is SelectorKind.CIDR and s.network is not None
    )
    return bool(cidrs), cidrs


def _in(cidrs: _Cidrs | None, address: int) -> bool:
    if cidrs is None:
        return True
    return any(address & mask == net for net, mask in cidrs) and address != 0


def _protocol_of(rule: Rule) -> tuple[int, int]:
    """(ethertype, ip protocol) a rule needs; -1 for any."""
    protocol = rule.protocol
    if protocol.name == "ethertype":
        return protocol.number, -1
    if protocol.name in IP_PROTOCOLS:
        return ETHERTYPE_IPV4, protocol.number
    return -1, -1


class PolicyEngine:
    """A policy compiled for deciding flows; rebuilt on every new document."""

    def __init__(self, policy: Policy, max_pairs: int = 65536) -> None:
        self.policy = policy
        self.default = Decision(policy.default is Action.ALLOW, DEFAULT_RULE, -1)
        self._pairs: dict[tuple[int, int], tuple[_PairRule, ...]] = {}
        self._max_pairs = max_pairs

    @property
    def is_open(self) -> bool:
        return self.policy.is_open

    def forget_pairs(self) -> None:
        """Members' names or groups changed: compile pairs again as flows come."""
        self._pairs.clear()

    def rules_for(self, source: Party, destination: Party) -> tuple[_PairRule, ...]:
        key = (source.node_id, destination.node_id)
        rules = self._pairs.get(key)
        if rules is None:
            rules = self._compile_pair(source, destination)
            if len(self._pairs) >= self._max_pairs:
                self._pairs.clear()  # bounded: pairs are cheap to compile again
            self._pairs[key] = rules
        return rules

    def _compile_pair(self, source: Party, destination: Party) -> tuple[_PairRule, ...]:
        kept = []
        for index, rule in enumerate(self.policy.rules):
            from_ok, source_cidrs = _side(rule.sources, source)
            to_ok, destination_cidrs = _side(rule.destinations, destination)
            if from_ok and to_ok:
                ethertype, proto = _protocol_of(rule)
                allow = rule.action is Action.ALLOW
                kept.append(
                    _PairRule(
                        index, rule, source_cidrs, destination_cidrs, ethertype, proto, rule.ports, allow
                    )
                )
        return tuple(kept)

    def decide(
        self,
        source: Party,
        destination: Party,
        ethertype: int,
        proto: int,
        dst_port: int,
        ip_src: int,
        ip_dst: int,
    ) -> Decision:
        """The decision for a new flow; ``proto`` -1 for a non-IPv4 frame, ``dst_port`` 0
        when it has none (not TCP/UDP, or a non-first fragment)."""
        for entry in self.rules_for(source, destination):
            if entry.ethertype >= 0 and entry.ethertype != ethertype:
                continue
            if entry.proto >= 0 and entry.proto != proto:
                continue
            if entry.ports and not any(lo <= dst_port <= hi for lo, hi in entry.ports):
                continue
            if not _in(entry.source_cidrs, ip_src) or not _in(entry.destination_cidrs, ip_dst):
                continue
            return Decision(entry.allow, entry.rule.name, entry.index)
        return self.default

    def pair_permitted(self, source: Party, destination: Party) -> bool:
        """May these two members find each other at all (ARP, IPv6 neighbour discovery)?
        Yes if some allow rule could match a flow between them, or the default allows."""
        if self.default.allow:
            return True
        return any(entry.allow for entry in self.rules_for(source, destination))


@dataclass(frozen=True, slots=True)
class Trace:
    decision: Decision
    lines: tuple[str, ...]  # one per rule looked at, then the verdict

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _describe(party: Party) -> str:
    groups = ", ".join(sorted(party.groups)) or "none"
    return f"{party.name} (groups: {groups})"


def trace(
    policy: Policy,
    source: Party,
    destination: Party,
    protocol: str,
    port: int = 0,
    ip_src: IPv4Address | None = None,
    ip_dst: IPv4Address | None = None,
) -> Trace:
    """Why a flow from ``source`` to ``destination`` is allowed or denied: each rule in
    order with the reason it does or does not match. ``protocol``: tcp, udp, icmp or
    ethertype:0xNNNN (as in a rule); ``port``: the destination port for tcp and udp."""
    proto_spec = Protocol.parse(protocol)
    if proto_spec.name == "any":
        raise ValueError("give the flow's protocol: tcp, udp, icmp or ethertype:0xNNNN")
    if proto_spec.name == "ethertype":
        ethertype, proto = proto_spec.number, -1
    else:
        ethertype, proto = ETHERTYPE_IPV4, proto_spec.number
    if not proto_spec.has_ports:
        port = 0
    src_int = int(ip_src) if ip_src is not None else 0
    dst_int = int(ip_dst) if ip_dst is not None else 0
    engine = PolicyEngine(policy)
    decision = engine.decide(source, destination, ethertype, proto, port, src_int, dst_int)
    flow = f"{protocol}" + (f"/{port}" if port else "")
    lines = [f"flow: {_describe(source)} -> {_describe(destination)}, {flow}"]
    for index, rule in enumerate(policy.rules):
        reason = _mismatch(rule, source, destination, ethertype, proto, port, src_int, dst_int)
        label = f"rule {index + 1} {rule.name!r} ({rule.action.value})"
        if reason is None:
            lines.append(f"{label}: matches -> {rule.action.value.upper()}")
            break
        lines.append(f"{label}: no match, {reason}")
    else:
        lines.append(f"no rule matches -> default {policy.default.value.upper()}")
    return Trace(decision, tuple(lines))


def _mismatch(
    rule: Rule,
    source: Party,
    destination: Party,
    ethertype: int,
    proto: int,
    port: int,
    ip_src: int,
    ip_dst: int,
) -> str | None:
    """Why ``rule`` does not match the flow, or None if it does (the same test as decide)."""
    for side, selectors, party, address in (
        ("from", rule.sources, source, ip_src),
        ("to", rule.destinations, destination, ip_dst),
    ):
        can, cidrs = _side(selectors, party)
        wanted = ", ".join(str(s) for s in selectors)
        if not can:
            return f"{side} [{wanted}] does not include {_describe(party)}"
        if not _in(cidrs, address):
            if not address:
                return f"{side} [{wanted}]: the flow has no IPv4 address to match"
            return f"{side} [{wanted}]: {IPv4Address(address)} is in none of its networks"
    rule_ethertype, rule_proto = _protocol_of(rule)
    if (rule_ethertype >= 0 and rule_ethertype != ethertype) or (rule_proto >= 0 and rule_proto != proto):
        return f"proto {rule.protocol} is not this flow's"
    if rule.ports and not any(lo <= port <= hi for lo, hi in rule.ports):
        ports = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports)
        return f"port {port} is not in [{ports}]"
    return None
