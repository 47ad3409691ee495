"""One member's routing state: its own live links, everyone's signed link state, and
the next hop towards each member.

Theory of operation. NodeCore measures its direct links with probes; LinkStateSync
(core/link_state_sync.py), which owns this object, hands the live ones (neighbour -> RTT
in microseconds) to ``links_measured``; when they changed beyond the hysteresis of
``routing.LocalLinks``, a signed delta comes back for it to flood. Deltas from other
members arrive through ``received`` (signature checked against the origin's certificate
key, then applied; a gap asks the sender for the origin's history). ``next_hop(dst)``
recomputes shortest paths lazily, only after something changed. Everything is pure: the
caller owns time and I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from naas.core.control_messages import sum_of_pairs
from naas.core.routing import (
    ApplyResult,
    LinkStateDatabase,
    LinkStateDelta,
    LocalLinks,
    Route,
    compute_routes,
    sign_delta,
    verify_delta,
)


class MeshRoutes:
    def __init__(self, node_id: int, signing_private: bytes, *, first_seq: int) -> None:
        self.node_id = node_id
        self._signing_private = signing_private
        self._local = LocalLinks(node_id, first_seq)
        self._live: dict[int, int] = {}
        self.database = LinkStateDatabase()
        self._routes: dict[int, Route] = {}
        self._dirty = True
        self._summary: bytes | None = None

    def table(self) -> dict[int, Route]:
        if self._dirty:
            self._routes = compute_routes(self.node_id, self.database, self._live)
            self._dirty = False
        return self._routes

    def next_hop(self, destination: int) -> int | None:
        route = self.table().get(destination)
        return route.next_hop if route is not None else None

    def links_measured(self, live: dict[int, int], *, advertise: bool = True) -> LinkStateDelta | None:
        """This member's live direct links now; a signed delta to flood if they changed.

        Routes follow ``live`` at once; with ``advertise`` False the delta waits (batching
        link-ups), and the next call with ``advertise`` True carries every change since.
        """
        if live != self._live:
            self._live = dict(live)
            self._dirty = True
        if not advertise:
            return None
        delta = self._local.update(live)
        return self._signed(delta) if delta is not None else None

    def neighbours_of(self, origin: int) -> Mapping[int, int]:
        """The live links ``origin`` last advertised (ours: the live ones now)."""
        if origin == self.node_id:
            return self._live
        return self.database.adjacency(origin)

    def linked(self, a: int, b: int) -> bool:
        """Both ``a`` and ``b`` advertise the link between them (the two-way check)."""
        return b in self.neighbours_of(a) and a in self.neighbours_of(b)

    def seqs(self) -> list[tuple[int, int]]:
        """(origin, newest seq held) for every origin, sorted."""
        database = self.database
        return sorted((o, seq) for o in database.origins() if (seq := database.seq_of(o)) is not None)

    def summary(self) -> bytes:
        """A hash of ``seqs()``: two members holding the same link state have the same one."""
        if self._summary is None:
            self._summary = sum_of_pairs(self.seqs(), b"naas-lsd-sum")
        return self._summary

    def _signed(self, delta: LinkStateDelta) -> LinkStateDelta:
        signed = sign_delta(delta, self._signing_private)
        self.database.apply(signed)
        self._summary = None
        return signed

    def received(self, delta: LinkStateDelta, origin_signing_public: bytes) -> ApplyResult | None:
        """Apply another member's delta; None if it is ours or its signature is bad."""
        if delta.origin == self.node_id:
            return None
        known = self.database.seq_of(delta.origin)
        if known is not None and delta.seq <= known:
            return ApplyResult.STALE  # duplicates are common in a flood: skip the signature check
        if not verify_delta(delta, origin_signing_public):
            return None
        result = self.database.apply(delta)
        if result is ApplyResult.APPLIED:
            self._dirty = True
            self._summary = None
        return result

    def own_delta_seen(self, delta: LinkStateDelta, own_signing_public: bytes) -> LinkStateDelta | None:
        """A delta of ours came back: if it is from an earlier life of this member (seq not
        below ours), a signed full delta that outruns it, to flood; else None."""
        if delta.origin != self.node_id or not verify_delta(delta, own_signing_public):
            return None
        newer = self._local.outrun(delta.seq)
        return self._signed(newer) if newer is not None else None

    def history(self, origin: int) -> list[LinkStateDelta]:
        return self.database.signed_history(origin)
