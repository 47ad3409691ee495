"""Port security and the policy on the data path: one decision per flow, cached.

Theory of operation. Every frame that crosses the mesh passes here twice: on the way out
of the sender (``outbound``: to save the underlay) and on the way into the receiver
(``inbound``: the check that counts, since a member can skip its own). The receiver
knows who sent a frame from the session that opened it, never from the frame.

Inbound, in order:

1. Port security (always, policy or not): the frame's source MAC may not be another
   member's MAC (members' MACs hold their node ids, model/ids.py); a bridged MAC learnt
   behind one member does not move to another on the first frame that claims it
   (core/switch.py, ``MAC_MOVE_QUIET``). On layer-3 networks the IPv4 source and the ARP
   sender address must be the member's own address or in its ``allowed_addresses``
   (from the network document); 0.0.0.0 is allowed for DHCP requests and ARP probes.
   A failure is the drop ``spoofed_source``.
2. The policy, only when it is not the open one (``default = "allow"`` and no rule):
   a. the connection table (core/conntrack.py) is looked up with the frame's flow key;
      an entry in either direction, decided under the current ``generation``, lets the
      frame through and keeps the entry alive: replies need no rule (stateful). An
      ICMP error is looked up by the flow it quotes.
   b. otherwise the policy decides (core/policy.py) with the sender as source and this
      member as destination: allowed, the flow enters the table; denied, the frame is
      dropped and counted under the deciding rule's name (``default`` for the default).
      ARP and IPv6 neighbour discovery pass between members some rule lets talk.

Outbound mirrors it with this member as source (no port security: the host's own frames).

The table is the cache of decisions, the megaflow of Open vSwitch: ``generation`` rises
whenever an input of a decision changes (a new document: rules, groups, addresses,
revocations; a member's certificate). An entry of an older generation is decided again
on its next frame, so a rule change applies to established connections at their next
packet; a connection no longer allowed is removed and its frame dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from naas.core.conntrack import ConnectionTable
from naas.core.flow import Flow, FlowKey, fast_key, flow_key, parse_flow_untrusted
from naas.core.policy import Party, PolicyEngine
from naas.core.wire import ETHERNET_HEADER, BadPacket, DropReason
from naas.model.ids import MAC_PREFIX, NodeId, mac_for_node
from naas.model.policy import DEFAULT_RULE, OPEN_POLICY, PROTO_ICMP, PROTO_UDP, Policy

ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
IPV6_ND_TYPES = range(133, 138)  # router/neighbour solicitation and advertisement, redirect
_DHCP_SERVER_PORT = 67

_Networks = tuple[tuple[int, int], ...]  # (network address, mask) pairs, as integers


@dataclass(frozen=True, slots=True)
class MemberFacts:
    """What the checks need to know of a member, from its certificate and the document."""

    party: Party  # name and groups, for the policy
    ip: int  # its overlay address (0 on a pure layer-2 network)
    allowed: _Networks  # other source networks it may use (its allowed_addresses)


FactsOf = Callable[[int], MemberFacts | None]  # node id -> its facts, None if not a member


def networks(allowed: Iterable[IPv4Network]) -> _Networks:
    return tuple((int(n.network_address), int(n.netmask)) for n in allowed)


class Firewall:
    """One node's port security and policy state (see the module docstring)."""

    def __init__(self, own: Party, facts_of: FactsOf, drops: Counter[DropReason], layer3: bool) -> None:
        self.own = own
        self._facts_of = facts_of
        self.drops = drops
        self.layer3 = layer3
        self.engine = PolicyEngine(OPEN_POLICY)
        self.enforcing = False  # the policy is not the open one
        self.egress = True  # filter our own frames too (off only to test the receiver's check)
        self.connections = ConnectionTable()
        self.generation = 0
        self.hits: Counter[str] = Counter()  # flows allowed, by rule
        self.denied_in: Counter[str] = Counter()  # frames dropped on arrival, by rule
        self.denied_out: Counter[str] = Counter()  # frames not sent, by rule
        self._facts: dict[int, MemberFacts] = {}  # cache of facts_of

    # -- inputs of the decisions ------------------------------------------------------------

    def configure(self, policy: Policy, own: Party) -> None:
        """A new document or identity: the policy, and who this member is now."""
        if policy != self.engine.policy:
            self.engine = PolicyEngine(policy)
            self.enforcing = not policy.is_open
        self.own = own
        self.members_changed()

    def members_changed(self) -> None:
        """A member's name, groups or addresses may have changed: forget what was cached
        of them and decide every flow again at its next frame."""
        self._facts.clear()
        self.engine.forget_pairs()
        self.generation += 1
        if not self.enforcing:
            self.connections.clear()

    def member_removed(self, node: int) -> None:
        self.connections.forget_peer(node)
        self.members_changed()

    def facts(self, node: int) -> MemberFacts | None:
        facts = self._facts.get(node)
        if facts is None:
            facts = self._facts_of(node)
            if facts is not None:
                self._facts[node] = facts
        return facts

    def party(self, node: int) -> Party | None:
        facts = self.facts(node)
        return facts.party if facts is not None else None

    # -- the checks -------------------------------------------------------------------------

    def inbound(self, peer: int, data: bytes | memoryview, offset: int, now: float) -> bool:
        """May the frame at ``data[offset:]``, opened from ``peer``'s session, go into naas0?
        Drops are counted here."""
        if peer == self.own.node_id:
            return True  # the loopback session of warm_up (core/datapath.py)
        _, src_mac, _ = ETHERNET_HEADER.unpack_from(data, offset)
        if src_mac[:2] == MAC_PREFIX and src_mac != mac_for_node(NodeId(peer)):
            self.drops[DropReason.SPOOFED_SOURCE] += 1
            return False
        if not self.layer3 and not self.enforcing:
            return True  # a pure layer-2 switch with no policy looks no deeper than the MACs
        common = fast_key(data, offset)
        if common is not None and self._known(peer, common, now, check_source=True):
            return True  # the cache-hit path: a known flow (or no policy) from an allowed source
        try:
            flow = parse_flow_untrusted(data, offset)
        except BadPacket as exc:
            self.drops[exc.reason] += 1
            return False
        if not self._source_allowed(peer, flow):
            self.drops[DropReason.SPOOFED_SOURCE] += 1
            return False
        if not self.enforcing:
            return True
        sender = self.party(peer)
        if sender is None:
            self.drops[DropReason.UNKNOWN_SENDER] += 1
            return False
        rule = self._decide(peer, sender, self.own, flow, now, outbound=False)
        if rule is None:
            return True
        self.denied_in[rule] += 1
        self.drops[DropReason.POLICY_DENIED] += 1
        return False

    def outbound(self, peer: int, data: bytes | memoryview, offset: int, now: float) -> bool:
        """May the frame at ``data[offset:]`` from naas0 go to ``peer``?"""
        if not self.enforcing:
            return True
        common = fast_key(data, offset)
        if common is not None and self._known(peer, common, now, check_source=False):
            return True
        receiver = self.party(peer)
        if receiver is None:
            return True  # not a member we know: nothing will be sent anyway
        try:
            flow = parse_flow_untrusted(data, offset)
        except BadPacket as exc:
            self.drops[exc.reason] += 1
            return False
        rule = self._decide(peer, self.own, receiver, flow, now, outbound=True)
        if rule is None:
            return True
        if not self.egress:
            return True  # sent anyway (a test of the receiver's check); allowed flows were still tracked
        self.denied_out[rule] += 1
        return False

    def outbound_cached(self, peer: int, data: bytes | memoryview, offset: int, now: float) -> bool:
        """The express lane's check (core/datapath.py): True if the frame needs no decision
        (no policy) or its flow is in the table, decided under the current generation (the
        entry is refreshed, as `outbound` would). False, with nothing counted, otherwise:
        the frame then takes the general path, which decides."""
        if not self.enforcing:
            return True
        common = fast_key(data, offset)
        return common is not None and self._known(peer, common, now, check_source=False)

    def _known(self, peer: int, common: tuple[FlowKey, int], now: float, *, check_source: bool) -> bool:
        """The cache-hit path, for a frame `fast_key` read: True if its source is allowed
        (``check_source``, layer 3) and no decision is needed (no policy) or its flow is in
        the table, decided under the current generation (then the entry is refreshed).
        False, with nothing counted or changed: the caller takes the full path."""
        key, tcp_flags = common
        if check_source and self.layer3:
            facts = self._facts.get(peer) or self.facts(peer)
            if facts is None or key[1] != facts.ip:
                return False  # an allowed address, or a spoofed one: the full path says which
        if not self.enforcing:
            return True
        entry = self.connections.lookup(peer, key, now)
        if entry is None or entry.generation != self.generation:
            return False
        self.connections.touch(entry, tcp_flags, now)
        return True

    def _source_allowed(self, peer: int, flow: Flow) -> bool:
        """Port security beyond the MAC (checked first): may ``peer`` send from these
        IPv4 addresses?"""
        if not self.layer3:
            return True
        if flow.ethertype == ETHERTYPE_ARP:
            address = flow.arp_sender_ip
        elif flow.proto >= 0:
            address = flow.ip_src
            if address == 0:  # a DHCP request before the host has an address
                return flow.proto == PROTO_UDP and flow.dst_port == _DHCP_SERVER_PORT
        else:
            return True
        if address == 0:  # an ARP probe (RFC 5227)
            return True
        facts = self.facts(peer)
        if facts is None:
            return False
        return address == facts.ip or any(address & mask == net for net, mask in facts.allowed)

    def _decide(
        self, peer: int, source: Party, destination: Party, flow: Flow, now: float, *, outbound: bool
    ) -> str | None:
        """None if the frame may pass, else the name of the rule that denies it."""
        engine = self.engine
        if flow.proto < 0:  # not IPv4: stateless, by EtherType
            if flow.ethertype == ETHERTYPE_ARP or _is_neighbour_discovery(flow):
                return None if engine.pair_permitted(source, destination) else DEFAULT_RULE
            decision = engine.decide(source, destination, flow.ethertype, -1, 0, 0, 0)
            return None if decision.allow else decision.rule
        table = self.connections
        key = flow_key(flow)
        entry = table.lookup(peer, key, now)
        if entry is None and flow.related is not None and flow.proto == PROTO_ICMP:
            entry = table.lookup(peer, flow.related, now)  # an ICMP error about a known flow
        if entry is not None:
            if entry.generation == self.generation:
                table.touch(entry, flow, now)
                return None
            # decided under an older document: decide the connection's first direction again
            member = destination if outbound else source  # the peer's side of this packet
            first, second = (self.own, member) if entry.outbound else (member, self.own)
            proto, src, _, dst, dport = entry.key
            decision = engine.decide(first, second, flow.ethertype, proto, dport, src, dst)
            if decision.allow:
                entry.generation = self.generation
                entry.rule = decision.rule
                table.touch(entry, flow, now)
                return None
            table.remove(entry)
        decision = engine.decide(
            source, destination, flow.ethertype, flow.proto, flow.dst_port, flow.ip_src, flow.ip_dst
        )
        if not decision.allow:
            return decision.rule
        self.hits[decision.rule] += 1
        table.open(peer, key, flow.proto, now, outbound, decision.rule, self.generation)
        return None

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        policy = self.engine.policy
        return {
            "default": policy.default.value,
            "rules": len(policy.rules),
            "enforcing": self.enforcing,
            "connections": len(self.connections),
            "by_protocol": self.connections.counts(),
            "hits": dict(sorted(self.hits.items())),
            "denied_in": dict(sorted(self.denied_in.items())),
            "denied_out": dict(sorted(self.denied_out.items())),
        }


def _is_neighbour_discovery(flow: Flow) -> bool:
    return flow.ethertype == ETHERTYPE_IPV6 and flow.icmp_type in IPV6_ND_TYPES
