"""Connection tracking: the flows the firewall has let through, and for how long.

Theory of operation (after Nebula's ``firewall.go`` conntrack). The firewall
(core/firewall.py) parses each frame's flow (core/flow.py), then asks this table
``lookup(peer, key, now)``: a hit means the policy already allowed this connection and
the frame passes without a rule walk; the firewall then ``touch``es the entry, which
pushes its deadline one idle timeout away. A miss goes to the policy; if it allows, the
firewall ``open``s an entry, recording who opened it (``outbound``: this node), the rule
that allowed it and the policy generation that decided, so that a policy change can
re-decide entries of an older generation (the firewall compares, then updates or
removes). ``expire`` is called from the driver's timer, ``forget_peer`` when a peer's
session is gone.

Keys. An entry is filed under ``(peer node id, key)`` twice: for ``key``, the flow key
(``(proto, ip_src, src_port, ip_dst, dst_port)``, see core/flow.py) of the packet that
opened it, and for ``reverse_key(key)``, its answers'. Both dict slots point to the one
``Entry``, so a packet in either direction costs one ``dict.get``; ``entry.key == key``
tells the original direction from the reply.

Timeouts. Each entry has an idle timeout by protocol (TCP, UDP, ICMP, other); a TCP
FIN or RST seen by ``touch`` switches it to the short closing timeout for good. An
expired entry is never returned: ``lookup`` removes it on sight, and ``expire`` sweeps
the rest incrementally. For that, every entry sits in the queue of its timeout class
(an ``OrderedDict``, oldest first), stamped with the deadline it had when it was queued.
Appends happen at ``now + timeout`` with ``now`` not decreasing, so each queue is
sorted by that stamp. ``touch`` only moves an entry to the back of its queue when its
deadline has run more than ``REQUEUE_SLACK`` past its stamp: a busy flow pays one
``move_to_end`` a second, not one a packet, and an entry's real deadline is at most
``REQUEUE_SLACK`` after its stamp. The sweep pops fronts whose stamp has passed and stops
at the first that has not (or whose real deadline is still ahead, less than
``REQUEUE_SLACK`` away): exact to within ``REQUEUE_SLACK``, and ``budget`` bounds the
work per call.

Bounds. At most ``max_flows`` connections (two dict slots each, one queue node, one
per-peer index node). When full, ``open`` first sweeps a little, then evicts the queued
entry with the earliest deadline (the one the table would give up soonest) and counts
it in ``evicted``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from naas.core.flow import TCP_FIN, TCP_RST, Flow, FlowKey, reverse_key
from naas.model.policy import PROTO_ICMP, PROTO_TCP, PROTO_UDP

# -- spec constants: idle timeouts, seconds (Nebula's conntrack defaults) -----------------

TCP_TIMEOUT = 720.0  # an established TCP connection, idle
TCP_CLOSING_TIMEOUT = 10.0  # a TCP connection after its first FIN or RST
UDP_TIMEOUT = 180.0
ICMP_TIMEOUT = 30.0
OTHER_TIMEOUT = 60.0  # other IP protocols, and non-IP frames (proto -1)

# -- implementation limits ------------------------------------------------------------------

MAX_FLOWS = 65536  # connections per table
EXPIRE_BUDGET = 1024  # entries one ``expire`` call examines, by default
OPEN_EXPIRE_BUDGET = 8  # entries ``open`` sweeps in a full table before it evicts
REQUEUE_SLACK = 1.0  # seconds a deadline may run past its queue stamp (see above)

_CLOSING_FLAGS = TCP_FIN | TCP_RST

PeerKey = tuple[int, FlowKey]  # (peer node id, flow key): the table's dict key
_Queue = OrderedDict["Entry", None]


@dataclass(slots=True, eq=False)
class Entry:
    """One tracked connection (mutable; identity-hashed). The firewall reads ``key``,
    ``outbound``, ``rule`` and ``generation``, and may update ``rule`` and
    ``generation`` when it re-decides the connection under a newer policy."""

    peer: int  # the peer node id
    key: FlowKey  # in the direction of the packet that opened it
    outbound: bool  # this node sent that packet
    rule: str  # the name of the policy rule that allowed it
    generation: int  # the policy generation that decided it
    expires_at: float  # idle deadline, on the caller's clock
    timeout: float  # the idle timeout ``touch`` applies
    queued_until: float  # the deadline stamped when last queued (sweep bookkeeping)
    queue: _Queue = field(repr=False)  # the queue of its timeout class, in the table
    closing: bool = False  # a TCP FIN or RST was seen

    @property
    def proto(self) -> int:
        return self.key[0]


class ConnectionTable:
    """The connection table of one node (see the module docstring)."""

    def __init__(self, max_flows: int = MAX_FLOWS) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, not {max_flows}")
        self.max_flows = max_flows
        self.evicted = 0  # entries given up, alive, to make room
        self.expired = 0  # entries removed when their idle timeout ran out
        self._table: dict[PeerKey, Entry] = {}
        self._by_peer: dict[int, dict[Entry, None]] = {}
        self._count = 0
        self._tcp: _Queue = OrderedDict()
        self._tcp_closing: _Queue = OrderedDict()
        self._udp: _Queue = OrderedDict()
        self._icmp: _Queue = OrderedDict()
        self._other: _Queue = OrderedDict()
        self._queues = (self._tcp_closing, self._icmp, self._other, self._udp, self._tcp)
        self._classes: dict[int, tuple[_Queue, float]] = {
            PROTO_TCP: (self._tcp, TCP_TIMEOUT),
            PROTO_UDP: (self._udp, UDP_TIMEOUT),
            PROTO_ICMP: (self._icmp, ICMP_TIMEOUT),
        }

    def __len__(self) -> int:
        """The number of connections (each is two dict slots)."""
        return self._count

    # -- per packet ---------------------------------------------------------------------------

    def lookup(self, peer: int, key: FlowKey, now: float) -> Entry | None:
        """The live entry of ``peer`` for ``key`` in either direction, else None (an
        expired one is removed and counted in ``expired``)."""
        entry = self._table.get((peer, key))
        if entry is None or now < entry.expires_at:
            return entry
        self._remove(entry)
        self.expired += 1
        return None

    def touch(self, entry: Entry, flow_or_flags: Flow | int, now: float) -> None:
        """A packet of ``entry``'s connection passed: restart its idle timeout.
        ``flow_or_flags`` is the packet's flow, or its ``tcp_flags`` (0 if not TCP); a FIN
        or an RST switches the entry to ``TCP_CLOSING_TIMEOUT`` for the rest of its life."""
        tcp_flags = flow_or_flags if isinstance(flow_or_flags, int) else flow_or_flags.tcp_flags
        if tcp_flags & _CLOSING_FLAGS and not entry.closing:
            self._start_closing(entry, now)
            return
        expires = entry.expires_at = now + entry.timeout
        if expires - entry.queued_until > REQUEUE_SLACK:
            entry.queue.move_to_end(entry)
            entry.queued_until = expires

    # -- per connection -------------------------------------------------------------------------

    def open(
        self, peer: int, key: FlowKey, proto: int, now: float, outbound: bool, rule: str, generation: int
    ) -> Entry:
        """Track a connection the policy allowed; ``key`` is the flow key of the packet
        that opened it, ``proto`` its protocol (``key[0]``: it picks the idle timeout).
        An entry already filed under ``key`` or its reverse is replaced.
        In a full table, an expired entry makes room, else the one nearest its deadline
        is evicted (``evicted``)."""
        forward = (peer, key)
        old = self._table.get(forward)
        if old is not None:
            self._remove(old)
        if self._count >= self.max_flows:
            self.expire(now, OPEN_EXPIRE_BUDGET)
            if self._count >= self.max_flows:
                self._evict()
        queue, timeout = self._classes.get(proto, (self._other, OTHER_TIMEOUT))
        expires = now + timeout
        entry = Entry(peer, key, outbound, rule, generation, expires, timeout, expires, queue)
        queue[entry] = None
        self._table[forward] = entry
        self._table[(peer, reverse_key(key))] = entry
        by_peer = self._by_peer.get(peer)
        if by_peer is None:
            by_peer = self._by_peer[peer] = {}
        by_peer[entry] = None
        self._count += 1
        return entry

    def remove(self, entry: Entry) -> None:
        """Stop tracking ``entry`` (a no-op if it is already gone)."""
        if self._table.get((entry.peer, entry.key)) is entry:
            self._remove(entry)

    def clear(self) -> None:
        """Forget every connection (the counters stay)."""
        self._table.clear()
        self._by_peer.clear()
        for queue in self._queues:
            queue.clear()
        self._count = 0

    def forget_peer(self, peer: int) -> int:
        """Remove every entry of ``peer`` (its session is gone); how many there were."""
        entries = list(self._by_peer.get(peer, ()))
        for entry in entries:
            self._remove(entry)
        return len(entries)

    # -- timers -----------------------------------------------------------------------------------

    def expire(self, now: float, budget: int = EXPIRE_BUDGET) -> int:
        """Remove at most ``budget`` expired entries; how many were removed. Call it from
        a timer: the work of one call is bounded (it looks at one entry more per
        queue than it removes), and calls at a steady rate keep up with the expiries."""
        removed = 0
        for queue in self._queues:
            while queue and removed < budget:
                entry = next(iter(queue))
                if entry.queued_until > now or entry.expires_at > now:
                    break  # this queue's fronts are all due later (within REQUEUE_SLACK)
                self._remove(entry)
                removed += 1
        self.expired += removed
        return removed

    # -- status ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Connections per protocol, for ``naas status``."""
        return {
            "tcp": len(self._tcp) + len(self._tcp_closing),
            "udp": len(self._udp),
            "icmp": len(self._icmp),
            "other": len(self._other),
        }

    # -- internals --------------------------------------------------------------------------------

    def _start_closing(self, entry: Entry, now: float) -> None:
        del entry.queue[entry]
        entry.closing = True
        entry.timeout = TCP_CLOSING_TIMEOUT
        entry.expires_at = entry.queued_until = now + TCP_CLOSING_TIMEOUT
        entry.queue = self._tcp_closing
        self._tcp_closing[entry] = None

    def _evict(self) -> None:
        fronts = [next(iter(queue)) for queue in self._queues if queue]
        self._remove(min(fronts, key=lambda entry: entry.queued_until))
        self.evicted += 1

    def _remove(self, entry: Entry) -> None:
        table = self._table
        peer = entry.peer
        del table[(peer, entry.key)]
        table.pop((peer, reverse_key(entry.key)), None)  # the same slot if the key is symmetric
        del entry.queue[entry]
        entries = self._by_peer[peer]
        del entries[entry]
        if not entries:
            del self._by_peer[peer]
        self._count -= 1
