"""A discrete-event simulator: many real NodeCores over a simulated underlay.

Theory of operation. The simulator owns a clock (``now``, seconds) and one heap of
events ordered by (time, insertion order), so a run is a pure function of the seed:

    TIMER    node n's timer is due: ``core.timer_fired(t)``
    DELIVER  a datagram reaches node n: ``core.datagrams_received([(bytes, source)], t)``

After every input the node is *drained*: ``take_all_datagrams()`` become DELIVER events at
``t + latency(src, dst)`` unless the underlay drops them (a cut pair, a crashed end, an
unknown address, or a loss draw from the seeded RNG); frames written to naas0 are
counted (``send_frame`` injects one at a member) and events discarded; and
``next_deadline()`` becomes a TIMER event if it is earlier than the one pending (a
popped TIMER that is no longer the node's pending one is stale and skipped). The clock
jumps from event to event, so an idle second of a 1000-member mesh costs only the probes
and floods it really carries, never a fixed time step.

Underlay. Every node has one endpoint ``10.<site>.<i/250>.<i%250+1>:5640`` and belongs to a
site; one-way latency is SAME_SITE_LATENCY inside a site and, across two sites, a value
drawn once per site pair from CROSS_SITE_LATENCY (plus optional per-datagram jitter).
``cut(a, b)`` / ``restore(a, b)`` drop or pass the pair's datagrams both ways;
``crash(name)`` silences a node for good (nothing delivered to or from it, no timers).

Members. ``add_node`` makes the keys from a seeded RNG, has the network CA issue the
certificate (pop/ca.py) and starts a NodeCore that knows only the PoPs added before it,
with their endpoints, as an enrolled member does; gossip does the rest. PoPs are
ordinary members with a known address. ``add_nodes_from_cache`` instead starts a batch
of members that all know every member of the batch, endpoints included: a whole network
restarting from its members.json caches (the cheap way to build a large mesh).
Per-node byte and packet counters count every datagram sent and received (UDP
payload; add 28 bytes per packet for IPv4 + UDP).

Checking. ``routes_of(name)`` is the node's {destination: next hop}. ``problems()``
lists what is wrong against the *true* graph: live nodes, linked where core/standing.py
says a pair keeps a standing link (every pair, up to ``full_mesh_up_to`` members) or
where ``send_frame`` made an on-demand link that has not gone idle yet, unless the pair is
cut:
(a) a live node without a route to another live one, (b) a next hop that is not a
live direct neighbour, (c) following next hops from any node does not reach the
destination within MAX_HOPS without a loop, (d) any route entry, to a live node or not,
whose next hop is crashed or across a cut; with ``lsdb=True`` also (e) a live node whose
advertised adjacency is not exactly its true live neighbours, or whose copy of another
live node's adjacency differs from the original (everyone must hold the same database,
hence compute the same routes); the database check runs first and is cheap (newest
seqs compared), so a large mesh computes routes only once its databases agree.
``run_until_converged`` steps the clock until nothing is left and returns how long that
took.

Cost. Wall time is the members' own work (AEAD, JSON, signature checks). While it runs the
simulator memoises Ed25519 verification (a pure function, so nothing simulated changes;
``memo_signatures=False`` turns it off) and counts the checks in ``signature_checks``.
Figures per size are in bench/results/sim-latest.md.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from naas.core import crypto, routing
from naas.core.crypto import ed25519_public, x25519_private_from_seed, x25519_public
from naas.core.network_document import make_document
from naas.core.node import LocalIdentity, NodeCore
from naas.core.routing import MAX_HOPS
from naas.core.standing import FULL_MESH_UP_TO, IDLE_LINK_AFTER, standing_pairs
from naas.model.document import Revocation
from naas.model.ids import Endpoint, NodeId
from naas.model.network import MemberRecord, NetworkInfo
from naas.model.policy import OPEN_POLICY, Policy
from naas.pop.ca import issue_certificate

NETWORK = "sim-net"
EPOCH_UNIX = 1_800_000_000  # the wall clock (unix seconds) at simulated time START
START = 1000.0  # simulated seconds at which a Simulator begins
MESH_PORT = 5640
MTU = 1400
SAME_SITE_LATENCY = 0.0002  # one way, seconds
CROSS_SITE_LATENCY = (0.010, 0.040)  # one way, drawn once per site pair
CERTIFICATE_DAYS = 365

_MEMO_LIMIT = 200_000  # remembered signature checks before the memo starts over

_TIMER, _DELIVER = 0, 1
Address = tuple[str, int]
_Event = tuple[float, int, int, int, tuple[bytes, Address] | None]  # time, order, kind, node, datagram


@dataclass(slots=True)
class SimNode:
    name: str
    index: int
    site: int
    address: Address
    core: NodeCore
    is_pop: bool
    crashed: bool = False
    timer_at: float = float("inf")  # the pending TIMER event's time
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    rx_packets: int = 0
    frames_out: int = 0  # frames the core wrote to its (simulated) naas0
    written: list[bytes] | None = None  # the frames themselves, once record_frames() asked

    @property
    def node_id(self) -> int:
        return self.core.node_id


class Simulator:
    def __init__(
        self,
        seed: int = 1,
        *,
        loss: float = 0.0,
        jitter: float = 0.0,
        memo_signatures: bool = True,
        full_mesh_up_to: int = FULL_MESH_UP_TO,
    ) -> None:
        self.seed = seed
        self.full_mesh_up_to = full_mesh_up_to
        self._standing: dict[int, set[int]] | None = None  # see standing()
        self._last_frame: dict[tuple[int, int], float] = {}  # (low, high) index pair -> time
        self.memo_signatures = memo_signatures
        self.signature_checks = 0  # Ed25519 verifications the members asked for
        self._verified: dict[tuple[bytes, bytes, bytes], bool] = {}
        self.loss = loss  # probability that any datagram is lost
        self.jitter = jitter  # up to this many seconds added to each datagram's latency
        self.now = START
        self.nodes: dict[str, SimNode] = {}
        self.underlay_drops = 0
        self.events_processed = 0
        self._rng = random.Random(f"underlay/{seed}")
        self._ca_private = random.Random(f"ca/{seed}").randbytes(32)
        self.network = NetworkInfo(
            name=NETWORK, mesh_port=MESH_PORT, ca_public=ed25519_public(self._ca_private), pops=()
        )
        self._list: list[SimNode] = []  # by index
        self._by_address: dict[Address, int] = {}
        self._by_id: dict[int, SimNode] = {}
        self._sites: dict[str, int] = {}
        self._site_latency: dict[tuple[int, int], float] = {}
        self._cuts: set[tuple[int, int]] = set()  # (low index, high index)
        self._pop_records: list[MemberRecord] = []
        self._enrolled: list[MemberRecord] = []  # certificates issued, nodes not started yet
        self._heap: list[_Event] = []
        self._order = 0

    # -- building --------------------------------------------------------------------------

    def add_node(
        self, name: str, site: str = "site-0", *, pop: bool = False, groups: tuple[str, ...] = ()
    ) -> NodeCore:
        """A new member at the current time, knowing the PoPs added so far (add PoPs first)."""
        record, secrets = self._enroll(name, site, pop, groups)
        return self._start(record, secrets, self._pop_records)

    def add_nodes_from_cache(self, specs: list[tuple[str, str]]) -> None:
        """Members (name, site) that all start now, each knowing every member added so far
        and every one of the batch, with endpoints: a network restarting from its caches."""
        enrolled = [self._enroll(name, site, False) for name, site in specs]
        known = [MemberRecord(n.core.identity.certificate, (Endpoint(*n.address),)) for n in self._list]
        known += [record for record, _ in enrolled]
        with self._signatures():  # every member checks every certificate: N^2 checks
            for record, secrets in enrolled:
                self._start(record, secrets, known)

    def _enroll(
        self, name: str, site: str, pop: bool, groups: tuple[str, ...] = ()
    ) -> tuple[MemberRecord, tuple[bytes, bytes, int]]:
        """Keys and a CA-signed certificate for a new node; its record carries the endpoint."""
        if name in self.nodes or any(record.certificate.name == name for record in self._enrolled):
            raise ValueError(f"duplicate node {name!r}")
        index = len(self._list) + len(self._enrolled)
        site_index = self._site(site)
        rng = random.Random(f"keys/{self.seed}/{name}")
        static_private = x25519_private_from_seed(rng.randbytes(32))
        signing_private = rng.randbytes(32)
        certificate = issue_certificate(
            self._ca_private,
            network=NETWORK,
            name=name,
            node_id=NodeId(index + 1),
            is_pop=pop,
            static_public=x25519_public(static_private),
            signing_public=ed25519_public(signing_private),
            ip=None,
            groups=groups,
            now=EPOCH_UNIX,
            days=CERTIFICATE_DAYS,
        )
        address = (f"10.{site_index}.{index // 250}.{index % 250 + 1}", MESH_PORT)
        record = MemberRecord(certificate, (Endpoint(*address),))
        self._enrolled.append(record)
        return record, (static_private, signing_private, site_index)

    def _start(
        self, record: MemberRecord, secrets: tuple[bytes, bytes, int], members: list[MemberRecord]
    ) -> NodeCore:
        static_private, signing_private, site_index = secrets
        certificate = record.certificate
        self._enrolled.remove(record)
        node_rng = random.Random(f"node/{self.seed}/{certificate.name}")
        core = NodeCore(
            LocalIdentity(certificate, static_private, signing_private),
            self.network,
            random_bytes=node_rng.randbytes,
            now=self.now,
            wall_offset=EPOCH_UNIX - START,
            mtu=MTU,
            members=members,
            full_mesh_up_to=self.full_mesh_up_to,
        )
        address = record.endpoints[0].as_tuple()
        index = certificate.node_id - 1
        assert index == len(self._list), "nodes start in the order they were enrolled"
        node = SimNode(certificate.name, index, site_index, address, core, certificate.is_pop)
        self.nodes[node.name] = node
        self._list.append(node)
        self._by_address[address] = index
        self._by_id[core.node_id] = node
        self._standing = None
        if certificate.is_pop:
            self._pop_records.append(record)
        self._drain(node)
        return core

    def _site(self, site: str) -> int:
        if site not in self._sites:
            index = len(self._sites)
            for other in self._sites.values():
                self._site_latency[(other, index)] = self._rng.uniform(*CROSS_SITE_LATENCY)
            self._sites[site] = index
        return self._sites[site]

    def latency(self, a: str, b: str) -> float:
        """One-way latency between two nodes, without jitter."""
        return self._latency(self.nodes[a], self.nodes[b])

    def _latency(self, a: SimNode, b: SimNode) -> float:
        if a.site == b.site:
            return SAME_SITE_LATENCY
        return self._site_latency[(min(a.site, b.site), max(a.site, b.site))]

    # -- faults ------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self._cuts.add(self._pair(a, b))

    def restore(self, a: str, b: str) -> None:
        self._cuts.discard(self._pair(a, b))

    def crash(self, name: str) -> None:
        """The node stops for good: nothing in or out, no more timers."""
        self.nodes[name].crashed = True

    def _pair(self, a: str, b: str) -> tuple[int, int]:
        i, j = self.nodes[a].index, self.nodes[b].index
        return (i, j) if i < j else (j, i)

    # -- running -------------------------------------------------------------------------------

    def run(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, end: float) -> None:
        """Process every event up to ``end`` (inclusive); the clock is ``end`` afterwards."""
        with self._signatures():
            self._run_until(end)

    def _run_until(self, end: float) -> None:
        heap, nodes = self._heap, self._list
        while heap and heap[0][0] <= end:
            at, _, kind, index, payload = heapq.heappop(heap)
            node = nodes[index]
            if node.crashed:
                continue
            self.now = at
            if kind == _TIMER:
                if at != node.timer_at:
                    continue  # superseded by an earlier deadline
                node.timer_at = float("inf")
                node.core.timer_fired(at)
            else:
                assert payload is not None
                node.rx_bytes += len(payload[0])
                node.rx_packets += 1
                node.core.datagrams_received((payload,), at)
            self.events_processed += 1
            self._drain(node)
        self.now = max(self.now, end)

    @contextmanager
    def _signatures(self) -> Iterator[None]:
        """Count Ed25519 verifications and, with ``memo_signatures``, remember their results
        while the simulator runs: the thousand members that check one flooded delta then pay
        for one check (~0.1 ms here). Verification is a pure function of its inputs, so the
        simulated behaviour is unchanged; only wall time is saved. Restored on exit."""
        real = crypto.ed25519_verify
        cache = self._verified

        def verify(public: bytes, signature: bytes, message: bytes) -> bool:
            self.signature_checks += 1
            if not self.memo_signatures:
                return real(public, signature, message)
            key = (public, signature, message)
            result = cache.get(key)
            if result is None:
                if len(cache) >= _MEMO_LIMIT:
                    cache.clear()
                result = cache[key] = real(public, signature, message)
            return result

        for module in (crypto, routing):  # routing imported the name: patch both
            setattr(module, "ed25519_verify", verify)  # noqa: B010
        try:
            yield
        finally:
            for module in (crypto, routing):
                setattr(module, "ed25519_verify", real)  # noqa: B010

    def _drain(self, node: SimNode) -> None:
        core = node.core
        now = self.now
        out = core.take_all_datagrams()
        if out:
            push, heap, rng, loss = heapq.heappush, self._heap, self._rng, self.loss
            for datagram, address in out:
                node.tx_bytes += len(datagram)
                node.tx_packets += 1
                target_index = self._by_address.get(address)
                if target_index is None:
                    self.underlay_drops += 1
                    continue
                target = self._list[target_index]
                pair = (node.index, target_index) if node.index < target_index else (target_index, node.index)
                if target.crashed or pair in self._cuts or (loss and rng.random() < loss):
                    self.underlay_drops += 1
                    continue
                delay = self._latency(node, target)
                if self.jitter:
                    delay += rng.random() * self.jitter
                self._order += 1
                push(heap, (now + delay, self._order, _DELIVER, target_index, (datagram, node.address)))
        frames = core.take_frames()
        node.frames_out += len(frames)
        if node.written is not None:
            node.written += [bytes(frame) for frame in frames]
        core.take_events()
        deadline = max(core.next_deadline(), now)
        if deadline < node.timer_at:
            node.timer_at = deadline
            self._order += 1
            heapq.heappush(self._heap, (deadline, self._order, _TIMER, node.index, None))

    def publish_document(
        self,
        pop: str,
        version: int,
        *,
        groups: Mapping[int, tuple[str, ...]] | None = None,
        revoke: tuple[str, ...] = (),
        policy: Policy = OPEN_POLICY,
        allowed_addresses: Mapping[int, tuple[str, ...]] | None = None,
    ) -> bytes:
        """The CA signs a network document (model/document.py) and ``pop`` takes it, as a
        PoP does from its store; returns the document's body."""
        until = EPOCH_UNIX + CERTIFICATE_DAYS * 86_400
        revoked = tuple(Revocation(self.nodes[name].node_id, name, until) for name in revoke)
        document = make_document(
            self._ca_private,
            network=NETWORK,
            version=version,
            issued_at=int(self.now - START) + EPOCH_UNIX,
            groups=groups or {},
            revoked=revoked,
            policy=policy,
            allowed_addresses=allowed_addresses,
        )
        node = self.nodes[pop]
        node.core.document_received(document.body, self.now)
        self._drain(node)
        return document.body

    def record_frames(self, name: str) -> list[bytes]:
        """From now on keep the frames ``name``'s core writes to its naas0; returns the list."""
        node = self.nodes[name]
        if node.written is None:
            node.written = []
        return node.written

    def send_raw_frame(self, src: str, frame: bytes) -> None:
        """``frame``, as it is, from ``src``'s naas0, now."""
        node = self.nodes[src]
        with self._signatures():
            node.core.tap_frames_received([frame], self.now)
            self._drain(node)

    def send_frame(self, src: str, dst: str, payload: bytes = b"x" * 64) -> None:
        """A unicast Ethernet frame from ``src``'s naas0 to ``dst``'s MAC, now."""
        self._last_frame[self._pair(src, dst)] = self.now
        self.send_raw_frame(src, self.nodes[dst].core.mac + self.nodes[src].core.mac + b"\x88\xb5" + payload)

    # -- checking --------------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [node for node in self._list if not node.crashed]

    def routes_of(self, name: str) -> dict[int, int]:
        """The node's routes: {destination node id: next hop node id}."""
        return {dst: route.next_hop for dst, route in self.nodes[name].core.routes.table().items()}

    def name_of(self, node_id: int) -> str:
        return self._by_id[node_id].name

    def standing(self) -> dict[int, set[int]]:
        """Node id -> the node ids it keeps a standing link to (core/standing.py)."""
        if self._standing is None:
            self._standing = {node.node_id: set() for node in self._list}
            for a, b in standing_pairs(list(self._standing), self.full_mesh_up_to):
                self._standing[a].add(b)
                self._standing[b].add(a)
        return self._standing

    def true_neighbours(self, node: SimNode) -> set[int]:
        """Node ids of the live nodes ``node`` keeps a link to (standing, or on demand after
        ``send_frame`` in the last IDLE_LINK_AFTER seconds) that the underlay lets through."""
        candidates = set(self.standing()[node.node_id])
        for (i, j), at in self._last_frame.items():
            if node.index in (i, j) and self.now - at < IDLE_LINK_AFTER:
                candidates.add(self._list[j if i == node.index else i].node_id)
        found = set()
        for other_id in candidates:
            other = self._by_id[other_id]
            pair = (node.index, other.index) if node.index < other.index else (other.index, node.index)
            if not other.crashed and pair not in self._cuts:
                found.add(other_id)
        return found

    def problems(self, *, lsdb: bool = True, limit: int = 20) -> list[str]:
        """What keeps the mesh from being converged on the true graph; [] when it is."""
        found: list[str] = []
        live = self.live()
        live_ids = {node.node_id for node in live}
        good_hop = {node.node_id: self.true_neighbours(node) for node in live}
        if lsdb:
            found = self._lsdb_problems(live, good_hop)
            if found:
                return found[:limit]
        tables = {node.node_id: self.routes_of(node.name) for node in live}
        for node in live:
            src = node.node_id
            for dst, hop in tables[src].items():  # (d), and (b) for every entry
                if hop not in good_hop[src]:
                    found.append(f"{node.name}: route to {self.name_of(dst)} via bad hop {self.name_of(hop)}")
            for dst in live_ids - {src}:  # (a) and (c)
                problem = self._walk(tables, good_hop, src, dst)
                if problem is not None:
                    found.append(f"{node.name} -> {self.name_of(dst)}: {problem}")
            if len(found) >= limit:
                return found[:limit]
        return found[:limit]

    def _walk(
        self, tables: dict[int, dict[int, int]], good_hop: dict[int, set[int]], src: int, dst: int
    ) -> str | None:
        seen = {src}
        current = src
        for _ in range(MAX_HOPS):
            hop = tables[current].get(dst)
            if hop is None:
                return f"no route at {self.name_of(current)}"
            if hop not in good_hop[current]:
                return f"bad hop {self.name_of(current)} -> {self.name_of(hop)}"
            if hop == dst:
                return None
            if hop in seen:
                return f"loop at {self.name_of(hop)}"
            seen.add(hop)
            current = hop
        return f"longer than {MAX_HOPS} hops"

    def _lsdb_problems(self, live: list[SimNode], good_hop: dict[int, set[int]]) -> list[str]:
        found = []
        for origin in live:
            own = origin.core.routes.database.adjacency(origin.node_id)
            if set(own) != good_hop[origin.node_id]:
                found.append(
                    f"{origin.name} advertises {len(own)} links, has {len(good_hop[origin.node_id])}"
                )
                continue
            seq = origin.core.routes.database.seq_of(origin.node_id)
            stale = [n.name for n in live if n.core.routes.database.seq_of(origin.node_id) != seq]
            if stale:
                found.append(
                    f"{len(stale)} nodes (e.g. {stale[0]}) hold an old copy of {origin.name}'s links"
                )
        return found

    def run_until_converged(
        self, timeout: float, interval: float = 0.25, *, lsdb: bool = True
    ) -> float | None:
        """Simulated seconds until ``problems()`` is empty (checked every ``interval``), or None."""
        started = self.now
        while True:
            if not self.problems(lsdb=lsdb, limit=1):
                return round(self.now - started, 6)
            if self.now - started >= timeout:
                return None
            self.run(interval)

    # -- counters ---------------------------------------------------------------------------------

    def control_bytes(self) -> int:
        """Datagram bytes sent by all nodes so far (no frames are sent: all of it is control)."""
        return sum(node.tx_bytes for node in self._list)

    def control_packets(self) -> int:
        return sum(node.tx_packets for node in self._list)
