r"""Link-state routing: signed adjacency deltas in, a next hop per destination out.

Theory of operation. Every member measures its live direct links (RTT, from probes) and
describes them as a *link-state delta* signed with its Ed25519 key:

    origin, seq, full, links=((neighbour, cost_us), ...), signature

``LocalLinks`` builds this member's own deltas. Each ``update(live_links)`` returns only
what changed since the last one (a cost of 0 withdraws a link), or None when nothing did.
Costs move only past a hysteresis threshold (20% and 2 ms, compared with the *advertised*
cost, so slow drift is still reported once it adds up): RTT jitter must not flood the
mesh. The first delta and every FULL_DELTA_EVERY-th one are *full* (the whole adjacency),
so receivers' replay histories stay short. Seq starts from a value the driver passes in
(wall-clock ms at startup), so a restarted member still outranks its previous life.

The node floods a delta its ``LinkStateDatabase.apply`` reports APPLIED to its other
neighbours; it verifies signatures first (``verify_delta``, the origin's signing key is
in its certificate). The database keeps, per origin, the highest seq and the adjacency:

    STALE    seq <= known: a duplicate of the flood or an old copy; drop, do not relay.
    GAP      a changes-only delta that is not exactly known+1 (or an unknown origin):
             not applied; ask the neighbour that sent it for the origin's history.
    APPLIED  a full delta with a newer seq (replaces), or the next delta in sequence.

Resync must be verifiable end to end, so a relay cannot send an adjacency it made up:
the database stores the origin's last signed full delta plus the signed deltas applied
since (``signed_history``), which the asker replays in order. Past MAX_HISTORY deltas
the history is dropped (the adjacency is kept) and ``needs_full`` says that only a new
full delta from the origin restores it; LocalLinks' full delta every FULL_DELTA_EVERY
deltas keeps histories below that. ``snapshot`` is an unsigned view for local use
(status, drawings), never for relaying. The database has no clock and forgets nothing
by itself (``forget`` is for the caller).

``compute_routes`` runs Dijkstra from this node. An edge u->v counts only if u lists v
*and* v lists u (tinc's graph.c and OSPF's two-way check, RFC 2328 16.1): a one-sided
claim, stale or forged, never attracts traffic. The source's own edges come from its
live links, which answered probes both ways and are authoritative for the first hop.
Labels are (cost, hops, next hop) compared in that order, so ties break the same way on
every run; paths longer than MAX_HOPS relays would hit the hop limit and are not used.

             1000
        A ----------- B          A's route to C
         \            |          all links up:                 via C, cost 3000, 1 hop
    3000  \           | 2000     A-C down:                     via B, cost 3000, 2 hops
           `--------- C          A-C down, C withdraws B-C:    none (B's claim is one-way)

Expected use by the node: it applies its own signed deltas to its own database too (so
``signed_history`` covers every origin alike); when two members' databases differ (a
hash of their seqs, then the seqs themselves: the database exchange of tinc and OSPF)
each sends the other the ``signed_history`` of the origins it holds newer; after any
APPLIED delta or live-link change it recomputes the routes.
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from naas.core.crypto import ed25519_sign, ed25519_verify
from naas.core.wire import BadPacket, DropReason
from naas.model.codec import CodecError, b64d, b64e
from naas.model.ids import is_valid_node_id

# -- protocol constants ----------------------------------------------------------------------
MAX_HOPS = 8  # longest path used, in links; matches wire.DEFAULT_HOP_LIMIT
MAX_COST = 60_000_000  # microseconds; larger measured costs are clamped to this
HYSTERESIS_RATIO = 0.2  # a cost change is worth a delta only if it is 20% of the advertised cost
HYSTERESIS_FLOOR = 2_000  # ... and 2 ms: LAN jitter and small WAN swings never flood the mesh
FULL_DELTA_EVERY = 32  # LocalLinks sends a full delta at least every this many deltas
SEQ_MAX = 2**64 - 1

# -- implementation limits --------------------------------------------------------------------
MAX_LINKS = 1024  # entries in one delta
MAX_HISTORY = 64  # signed deltas kept per origin after its last full one

_DOMAIN = b"naas-lsd/1"
_HEAD = struct.Struct("!IQBH")  # origin node, seq, full flag (0/1), number of links
_LINK = struct.Struct("!II")  # neighbour node, cost in microseconds (0 = withdrawn)
_SIGNATURE_LEN = 64


@dataclass(frozen=True, slots=True)
class LinkStateDelta:
    origin: int
    seq: int  # >= 1, strictly increasing per origin
    full: bool  # True: links is the complete adjacency; False: changes only
    links: tuple[tuple[int, int], ...]  # (neighbour, cost us); cost 0 = removed (changes only)
    signature: bytes = b""  # Ed25519 by the origin over delta_signing_bytes


@dataclass(frozen=True, slots=True)
class Route:
    next_hop: int
    cost: int  # microseconds, sum of the advertised link costs
    hops: int  # 1 = direct


class ApplyResult(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"
    GAP = "gap"


# -- signing -------------------------------------------------------------------------------


def delta_signing_bytes(delta: LinkStateDelta) -> bytes:
    """Canonical bytes: domain tag, header, then the (neighbour, cost) pairs sorted."""
    parts = [_DOMAIN, _HEAD.pack(delta.origin, delta.seq, int(delta.full), len(delta.links))]
    parts.extend(_LINK.pack(neighbour, cost) for neighbour, cost in sorted(delta.links))
    return b"".join(parts)


def sign_delta(delta: LinkStateDelta, signing_private: bytes) -> LinkStateDelta:
    return replace(delta, signature=ed25519_sign(signing_private, delta_signing_bytes(delta)))


def verify_delta(delta: LinkStateDelta, signing_public: bytes) -> bool:
    if len(delta.signature) != _SIGNATURE_LEN:
        return False
    return ed25519_verify(signing_public, delta.signature, delta_signing_bytes(delta))


# -- JSON form (inside control messages) ---------------------------------------------------


def encode_delta(delta: LinkStateDelta) -> dict[str, Any]:
    return {
        "origin": delta.origin,
        "seq": delta.seq,
        "full": delta.full,
        "links": [[neighbour, cost] for neighbour, cost in delta.links],
        "signature": b64e(delta.signature),
    }


def _bad(detail: str) -> BadPacket:
    return BadPacket(DropReason.BAD_CONTROL, f"link-state delta: {detail}")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_delta_untrusted(obj: Any) -> LinkStateDelta:
    """Parse the JSON form; anything malformed raises BadPacket(BAD_CONTROL).

    The signature is not checked here (the caller knows the origin's key), but it must
    be present: unsigned deltas never travel.
    """
    if not isinstance(obj, Mapping):
        raise _bad("not an object")
    origin, seq, full, raw_links = obj.get("origin"), obj.get("seq"), obj.get("full"), obj.get("links")
    if not _is_int(origin) or not is_valid_node_id(origin):
        raise _bad("bad origin")
    if not _is_int(seq) or not 1 <= seq <= SEQ_MAX:
        raise _bad("bad seq")
    if not isinstance(full, bool):
        raise _bad("bad full flag")
    if not isinstance(raw_links, list) or len(raw_links) > MAX_LINKS:
        raise _bad("bad link list")
    links: list[tuple[int, int]] = []
    seen: set[int] = set()
    for entry in raw_links:
        if not isinstance(entry, list) or len(entry) != 2:
            raise _bad("bad link entry")
        neighbour, cost = entry
        if not _is_int(neighbour) or not is_valid_node_id(neighbour) or neighbour == origin:
            raise _bad("bad neighbour")
        if neighbour in seen:
            raise _bad("duplicate neighbour")
        if not _is_int(cost) or not (1 if full else 0) <= cost <= MAX_COST:
            raise _bad("bad cost")
        seen.add(neighbour)
        links.append((neighbour, cost))
    raw_signature = obj.get("signature")
    if not isinstance(raw_signature, str):
        raise _bad("bad signature")
    try:
        signature = b64d(raw_signature, length=_SIGNATURE_LEN, field="signature")
    except CodecError as exc:
        raise _bad(str(exc)) from None
    return LinkStateDelta(origin, seq, full, tuple(links), signature)


# -- the database of everyone's adjacencies ------------------------------------------------


@dataclass(slots=True)
class _OriginState:
    seq: int
    links: dict[int, int]
    history: list[LinkStateDelta]  # last full delta, then the deltas since; [] if overflowed


class LinkStateDatabase:
    """The newest adjacency of every origin, with the signed deltas that prove it.

    Apply only deltas whose signature verified against the origin's key.
    """

    __slots__ = ("_origins",)

    def __init__(self) -> None:
        self._origins: dict[int, _OriginState] = {}

    def apply(self, delta: LinkStateDelta) -> ApplyResult:
        state = self._origins.get(delta.origin)
        if state is not None and delta.seq <= state.seq:
            return ApplyResult.STALE
        if delta.full:
            links = {neighbour: cost for neighbour, cost in delta.links if cost > 0}
            self._origins[delta.origin] = _OriginState(delta.seq, links, [delta])
            return ApplyResult.APPLIED
        if state is None or delta.seq != state.seq + 1:
            return ApplyResult.GAP
        for neighbour, cost in delta.links:
            if cost > 0:
                state.links[neighbour] = cost
            else:
                state.links.pop(neighbour, None)
        state.seq = delta.seq
        if state.history:
            state.history.append(delta)
            if len(state.history) > MAX_HISTORY + 1:
                state.history = []  # too long to replay: wait for the origin's next full delta
        return ApplyResult.APPLIED

    def forget(self, origin: int) -> None:
        self._origins.pop(origin, None)

    def origins(self) -> list[int]:
        return sorted(self._origins)

    def seq_of(self, origin: int) -> int | None:
        state = self._origins.get(origin)
        return state.seq if state is not None else None

    def adjacency(self, origin: int) -> Mapping[int, int]:
        """The links ``origin`` advertises (neighbour -> cost); empty if unknown. Read only."""
        state = self._origins.get(origin)
        return state.links if state is not None else {}

    def snapshot(self, origin: int) -> LinkStateDelta | None:
        """An unsigned full delta of what we hold for ``origin``: for local views only."""
        state = self._origins.get(origin)
        if state is None:
            return None
        return LinkStateDelta(origin, state.seq, True, tuple(sorted(state.links.items())))

    def signed_history(self, origin: int) -> list[LinkStateDelta]:
        """The origin's last full signed delta and the deltas since, to replay in order.

        Empty if unknown or if the history overflowed (see ``needs_full``).
        """
        state = self._origins.get(origin)
        return list(state.history) if state is not None else []

    def needs_full(self, origin: int) -> bool:
        """True if we hold ``origin``'s adjacency but can no longer prove it to others."""
        state = self._origins.get(origin)
        return state is not None and not state.history


# -- this node's own links -------------------------------------------------------------


def _significant(old: int, new: int) -> bool:
    change = abs(new - old)
    return change >= HYSTERESIS_FLOOR and change >= HYSTERESIS_RATIO * old


class LocalLinks:
    """Turns this node's live links into its own (unsigned) deltas; sign with sign_delta."""

    __slots__ = ("_advertised", "_deltas_since_full", "_next_seq", "origin")

    def __init__(self, origin: int, first_seq: int) -> None:
        if not is_valid_node_id(origin) or not 1 <= first_seq <= SEQ_MAX:
            raise ValueError("bad origin or first seq")
        self.origin = origin
        self._next_seq = first_seq
        self._advertised: dict[int, int] = {}
        self._deltas_since_full: int | None = None  # None: nothing sent yet

    @property
    def advertised(self) -> Mapping[int, int]:
        """The adjacency our last delta announced (costs as advertised, not as measured)."""
        return self._advertised

    @property
    def last_seq(self) -> int:
        """The seq of the last delta made (first_seq - 1 before any)."""
        return self._next_seq - 1

    def update(self, links: Mapping[int, int]) -> LinkStateDelta | None:
        """The changes from the last advertised adjacency to ``links`` (neighbour -> cost us).

        None when nothing changed past the hysteresis; a full delta when one is due.
        """
        current = {neighbour: self._clamp(neighbour, cost) for neighbour, cost in links.items()}
        changes = [(n, 0) for n in self._advertised if n not in current]
        for neighbour, cost in current.items():
            old = self._advertised.get(neighbour)
            if old is None or _significant(old, cost):
                changes.append((neighbour, cost))
        if not changes and (self._deltas_since_full is not None or not current):
            return None
        for neighbour, cost in changes:
            if cost:
                self._advertised[neighbour] = cost
            else:
                del self._advertised[neighbour]
        if self._deltas_since_full is None or self._deltas_since_full + 1 >= FULL_DELTA_EVERY:
            return self.full_delta()
        self._deltas_since_full += 1
        return LinkStateDelta(self.origin, self._take_seq(), False, tuple(sorted(changes)))

    def full_delta(self) -> LinkStateDelta:
        """The whole advertised adjacency under the next seq (periodic refresh, resync)."""
        self._deltas_since_full = 0
        return LinkStateDelta(self.origin, self._take_seq(), True, tuple(sorted(self._advertised.items())))

    def outrun(self, seen_seq: int) -> LinkStateDelta | None:
        """A copy of our own delta came back with ``seen_seq`` (from an earlier life, or a
        clock that went back): if it is not below ours, jump past it with a full delta."""
        if seen_seq < self._next_seq:
            return None
        self._next_seq = seen_seq + 1
        return self.full_delta()

    def _take_seq(self) -> int:
        if self._next_seq > SEQ_MAX:
            raise OverflowError("link-state seq exhausted")
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        return seq

    def _clamp(self, neighbour: int, cost: int) -> int:
        if neighbour == self.origin or not is_valid_node_id(neighbour):
            raise ValueError(f"bad neighbour {neighbour}")
        return min(max(cost, 1), MAX_COST)  # 0 would mean "withdrawn"


# -- shortest paths ------------------------------------------------------------------------


def compute_routes(source: int, db: LinkStateDatabase, local_links: Mapping[int, int]) -> dict[int, Route]:
    """Best route to every reachable member: least cost, then fewest hops, then the lowest
    next-hop id, over paths of at most MAX_HOPS links whose every edge is two-way.

    Dijkstra over (node, hops) labels: the first time a node is settled is its route, but
    a later, costlier label with fewer hops is still expanded, because it may reach
    further within the hop limit. Each node expands at most MAX_HOPS times, usually once.
    """
    routes: dict[int, Route] = {}
    fewest_hops: dict[int, int] = {source: 0}  # fewest hops among the labels expanded so far
    heap: list[tuple[int, int, int, int]] = [  # (cost, hops, next hop, node)
        (min(max(cost, 1), MAX_COST), 1, neighbour, neighbour)
        for neighbour, cost in local_links.items()
        if neighbour != source
    ]
    heapq.heapify(heap)
    while heap:
        cost, hops, next_hop, node = heapq.heappop(heap)
        if hops >= fewest_hops.get(node, MAX_HOPS + 1):
            continue  # dominated: an earlier label was no worse and no longer
        fewest_hops[node] = hops
        if node not in routes:
            routes[node] = Route(next_hop, cost, hops)
        if hops == MAX_HOPS:
            continue
        for neighbour, link_cost in db.adjacency(node).items():
            if neighbour == source or hops + 1 >= fewest_hops.get(neighbour, MAX_HOPS + 1):
                continue
            if node in db.adjacency(neighbour):  # two-way check
                heapq.heappush(heap, (cost + link_cost, hops + 1, next_hop, neighbour))
    return routes
