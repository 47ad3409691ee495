"""NodeCore: one mesh member's protocol engine, without I/O.

Theory of operation. The driver feeds events in and drains effects out:

    tap_frames_received(frames, now)      Ethernet frames read from naas0 ("inside")
    datagrams_received(datagrams, now)    UDP datagrams from the underlay ("outside")
    runs_received(runs, now)              ... coalesced by UDP GRO: (run, sender, segment)
    timer_fired(now)                      at or after next_deadline()
    member_enrolled(certificate, now)     a PoP's enrollment service issued a certificate
    document_received(body, now)          a network document (from a PoP's store)
        -> take_datagrams()  [(bytes, (host, port))] to send
        -> take_runs()       [(bytes, (host, port), segment)] to send with UDP GSO
        -> take_frames()     [bytes] to write into naas0
        -> take_events()     [NodeEvent] to log

The data path (frames switched and sealed, datagrams relayed or opened, FRAGMENT pieces
joined, the policy applied, the offload fast path) is an object NodeCore holds
(``datapath``, core/datapath.py), given the collaborators it shares with the node and
the hooks it calls back (``DataPathHooks``); the driver's input methods and ``take_``
methods are the data path's own. The handshakes (Noise IK initiations and responses,
cookies under load) are another (``handshakes``, core/handshakes.py), made after the
data path they send through and given ``HandshakeHooks``; the data path's handshake
hooks reach them through NodeCore, one call more on a rare path (``activate``, called
per frame, stays a method of NodeCore itself). The members, their certificates and the
network document (core/roster.py) are a part of NodeCore, its base class Roster: they
change most of what NodeCore holds. NodeCore owns the state they share, sets it up
here, and decides who gets a session and when. A member with no session to send on
gets an initiation, retried until answered (its frames wait in a short queue); the
peer's certificate, signed by the network CA, travels inside the encrypted handshake
payload and must match the Noise static key. Control messages (probes, member records,
link state) come from the data path. ``topology`` (and ``status``, its JSON form) is
built by core/status.py from what NodeCore holds.

Two parts live in modules of their own, each given NodeCore's sessions to send on:
core/link_state_sync.py (``link_state``: owns the routes, floods signed link-state
deltas, hash-first anti-entropy) and core/membership_sync.py (``membership``: floods
changed member records, hash-first anti-entropy). NodeCore keeps what feeds them: it
measures direct links with probes and says when they change, checks certificates and
learns members and endpoints, and tells both when a new session is ready.
Anything malformed or unauthenticated from outside is dropped with a DropReason and
counted (``drops``); it never raises out of an input method. Timers (handshake
retransmission, rekey, probes that measure RTT and detect dead links, and the two sync
modules' batching and anti-entropy) are all driven by ``now``; randomness (ephemeral
keys, indexes, jitter, the anti-entropy peer) comes from the ``random_bytes`` callable
the driver passes in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address
from typing import Any

from naas.core import dhcp
from naas.core.constants import (
    LINK_DOWN_AFTER_MISSES,
    LINK_STATE_BATCH_INTERVAL,
    PROBE_INTERVAL,
    PROBE_JITTER,
    PROBE_RETRY_INTERVAL,
    REHANDSHAKE_AFTER_MISSES,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from naas.core.control_messages import (
    ControlMessage,
    Document,
    LossReport,
    Members,
    MembersDigest,
    MembersSum,
    Probe,
    ProbeAck,
    encode_control,
)
from naas.core.cookie import CookieResponder
from naas.core.crypto import KEY_LEN
from naas.core.datapath import DataPath, DataPathHooks
from naas.core.firewall import Firewall, MemberFacts, networks
from naas.core.fragments import one_run_limit, piece_size_for
from naas.core.handshakes import HandshakeHooks, Handshakes
from naas.core.link_state_sync import LinkStateSync
from naas.core.loss import SPLIT_HOLD
from naas.core.membership_sync import MembershipSync
from naas.core.peer import Address, LinkEvent, LinkState, Peer
from naas.core.policy import Party
from naas.core.roster import LocalIdentity as LocalIdentity  # re-exported: the drivers build it
from naas.core.roster import NodeEvent as NodeEvent
from naas.core.roster import Roster
from naas.core.session import Session
from naas.core.standing import FULL_MESH_UP_TO, IDLE_LINK_AFTER
from naas.core.status import topology_of
from naas.core.switch import MacTable
from naas.core.topology import Topology
from naas.core.wire import DropReason
from naas.model.codec import certificate_to_bytes
from naas.model.document import NetworkDocument
from naas.model.network import MemberRecord, NetworkInfo
from naas.model.policy import OPEN_POLICY

DHCP_LEASE_SECONDS = 3600


class NodeCore(Roster):
    def __init__(
        self,
        identity: LocalIdentity,
        network: NetworkInfo,
        *,
        random_bytes: Callable[[int], bytes],
        now: float,
        wall_offset: float,
        mtu: int,
        members: Iterable[MemberRecord] = (),
        full_mesh_up_to: int = FULL_MESH_UP_TO,
        tap_offload: bool = False,
        document: bytes | None = None,
    ) -> None:
        """``document``: the body of the network document this member held last, if any."""
        self.identity = identity
        self.network = network
        self.node_id = identity.certificate.node_id
        self.mac = identity.certificate.mac
        self.mtu = mtu
        self.drops: Counter[DropReason] = Counter()
        self.peers: dict[int, Peer] = {}
        # peers the timer must look at: wanted ones (standing or active), and any with a
        # session, a handshake or queued frames; an idle member of a large mesh costs nothing
        self._tracked: dict[int, Peer] = {}
        self.full_mesh_up_to = full_mesh_up_to
        self._standing_threshold = 1.0
        self._random = random_bytes
        self._wall_offset = wall_offset
        self._own_cert_bytes = certificate_to_bytes(identity.certificate)
        self._by_index: dict[int, tuple[Peer, Session]] = {}
        self.cookies = CookieResponder(identity.certificate.static_public, random_bytes, now)
        # naas0 reads and writes carry a virtio-net header (daemon/tap.py, core/offload.py)
        self.tap_offload = tap_offload
        self._events: list[NodeEvent] = []
        self._link_was_up: dict[int, bool] = {}
        self._next_deadline = now
        self.mac_table = MacTable(self.node_id)
        piece_size = piece_size_for(mtu)
        # the pieces of the largest super-frame: what one lost datagram costs (core/loss.py)
        self._superframe_pieces = -(-one_run_limit(piece_size) // piece_size)
        self._ip_to_node: dict[IPv4Address, int] = {}
        self._member_addresses: dict[Address, int] = {}  # direct endpoints -> node (relay check)
        self.link_state = LinkStateSync(
            self.node_id,
            identity.signing_private,
            identity.certificate.signing_public,
            first_seq=int((now + wall_offset) * 1000),
            now=now,
            session_peers=self._session_peers,
            random_session_peer=self._random_session_peer,
            signing_key_of=self._signing_key_of,
            send_inner=self._send_inner,
            drops=self.drops,
        )
        self.routes = self.link_state.routes  # the same object (status, simulator, tests)
        self.document: NetworkDocument | None = None
        self.document_applied_at = 0.0
        self._revoked: frozenset[int] = frozenset()
        self.revoked = False  # this member is revoked: the driver stops
        self.membership = MembershipSync(
            identity.certificate,
            self.peers,
            now=now,
            session_peers=self._session_peers,
            random_session_peer=self._random_session_peer,
            send_inner=self._send_inner,
            document=self._document_held,
        )
        dhcp_responder: dhcp.DhcpResponder | None = None
        own_ip = identity.certificate.ip
        if network.subnet is not None and own_ip is not None:
            dhcp_responder = dhcp.DhcpResponder(
                server_mac=self.mac,
                server_ip=own_ip.ip,
                subnet=network.subnet,
                lease_seconds=DHCP_LEASE_SECONDS,
                gateway=network.gateway,
                mtu=mtu,
            )
        own_party = Party(self.node_id, identity.certificate.name, frozenset(identity.certificate.groups))
        self.firewall = Firewall(own_party, self._member_facts, self.drops, layer3=own_ip is not None)
        self.datapath = DataPath(
            node_id=self.node_id,
            mac=self.mac,
            mtu=mtu,
            tap_offload=tap_offload,
            drops=self.drops,
            peers=self.peers,
            by_index=self._by_index,
            mac_table=self.mac_table,
            firewall=self.firewall,
            routes=self.routes,
            membership=self.membership,
            cookies=self.cookies,
            member_addresses=self._member_addresses,
            ip_to_node=self._ip_to_node,
            dhcp_responder=dhcp_responder,
            hooks=DataPathHooks(
                activate=self._activate,  # per frame: NodeCore's own method, no call in between
                # the handshakes are made below (they send through this data path): found at call time
                initiate=lambda peer, now: self.handshakes.initiate(peer, now),
                session_ready=self._session_ready,
                control_received=self._control_received,
                initiation_verdict=lambda datagram, address, now, counted: self.handshakes.initiation_verdict(
                    datagram, address, now, counted
                ),
                initiation_received=lambda datagram, address, relayed, now: (
                    self.handshakes.initiation_received(datagram, address, relayed, now)
                ),
                response_received=lambda datagram, address, relayed, now: self.handshakes.response_received(
                    datagram, address, relayed, now
                ),
                cookie_reply_received=lambda datagram, now: self.handshakes.cookie_reply_received(
                    datagram, now
                ),
                revoked=lambda: self._revoked,
                standing_threshold=lambda: self._standing_threshold,
                own_ip=lambda: self.identity.certificate.ip,
            ),
        )
        datapath = self.datapath
        # the driver's entry points are the data path's own (no call in between)
        self.tap_frames_received = datapath.tap_frames_received
        self.datagrams_received = datapath.datagrams_received
        self.runs_received = datapath.runs_received
        self.express_send = datapath.express_send
        self.express_receive = datapath.express_receive
        self.warm_up = datapath.warm_up
        self.take_datagrams = datapath.take_datagrams
        self.take_runs = datapath.take_runs
        self.take_all_datagrams = datapath.take_all_datagrams
        self.take_frames = datapath.take_frames
        self.handshakes = Handshakes(
            node_id=self.node_id,
            static_private=identity.static_private,  # a renewed certificate keeps the keys
            network=network,
            peers=self.peers,
            by_index=self._by_index,
            tracked=self._tracked,
            cookies=self.cookies,
            datapath=datapath,
            random_bytes=random_bytes,
            wall_offset=wall_offset,
            hooks=HandshakeHooks(
                own_certificate=lambda: self._own_cert_bytes,
                revoked=lambda: self._revoked,
                learn_member=lambda record, now: self._learn_member(record, now, gossip=True),
                session_ready=self._session_ready,
            ),
        )
        if document is not None:
            self.document_received(document, now)
        for record in members:
            self._learn_member(record, now, gossip=False)
        key = self._random(KEY_LEN)  # warm_up's session, with itself (core/datapath.py)
        datapath.open_loopback(self.identity.certificate, key, self.handshakes.new_index(), now)

    # -- what the firewall knows of members (core/firewall.py) --------------------------------

    def _member_facts(self, node: int) -> MemberFacts | None:
        """A member's identity and addresses as the policy and port security see them:
        its certificate, with the groups and allowed addresses of the network document."""
        if node == self.node_id:
            cert = self.identity.certificate
        else:
            peer = self.peers.get(node)
            if peer is None:
                return None
            cert = peer.certificate
        document = self.document
        allowed = document.addresses_of(node) if document is not None else ()
        party = Party(node, cert.name, frozenset(self.groups_of(cert)))
        return MemberFacts(party, int(cert.ip.ip) if cert.ip is not None else 0, networks(allowed))

    def _policy_changed(self) -> None:
        """The document or our identity changed: the firewall decides with the new ones."""
        document = self.document
        facts = self._member_facts(self.node_id)
        assert facts is not None
        self.firewall.configure(document.policy if document is not None else OPEN_POLICY, facts.party)

    # -- the data path's, for status and the sync modules ----------------------------------

    @property
    def relayed_packets(self) -> int:
        return self.datapath.outside.relayed_packets

    @property
    def relayed_bytes(self) -> int:
        return self.datapath.outside.relayed_bytes

    def _send_inner(self, peer: Peer, inner: bytes, now: float, address: Address | None = None) -> None:
        """`DataPath.send_inner` (for the sync modules, made before it)."""
        self.datapath.send_inner(peer, inner, now, address)

    # -- effects --------------------------------------------------------------------------

    def take_events(self) -> list[NodeEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        return self._next_deadline

    # -- which direct links are kept --------------------------------------------------------

    def _wanted(self, peer: Peer, now: float) -> bool:
        """A direct link is kept to ``peer``: a standing one, or frames flowed lately."""
        return peer.standing_score < self._standing_threshold or peer.active_until > now

    def _activate(self, peer: Peer, now: float) -> None:
        """Frames flow to or from ``peer``: keep a direct link to it for IDLE_LINK_AFTER."""
        if peer.active_until < now and not self._wanted(peer, now):
            self._tracked[peer.node_id] = peer
            peer.next_probe_at = now
            self._next_deadline = now
        peer.active_until = now + IDLE_LINK_AFTER

    def _session_ready(self, peer: Peer, now: float) -> None:
        """A session became usable for sending: flush the queue, greet a new peer."""
        while peer.queue:
            self._send_inner(peer, peer.queue.popleft(), now)
        peer.next_probe_at = now
        peer.stats.unanswered = 0
        if not peer.greeted:
            peer.greeted = True
            self._events.append(NodeEvent("session_started", peer.node_id, peer.name))
        # every new session (a first meeting, a rekey, a return after a partition) compares
        # tables: 2 x 16 bytes, and a digest exchange follows only if they differ
        self.membership.session_started(peer, now)
        self.link_state.session_started(peer, now)
        self._next_deadline = now

    # -- sending control messages (for the sync modules too) ------------------------------

    def _send_control(
        self, peer: Peer, message: ControlMessage, now: float, address: Address | None = None
    ) -> None:
        if peer.send_session(now) is not None:
            self._send_inner(peer, encode_control(message), now, address)

    def _session_peers(self, now: float) -> Iterator[Peer]:
        """The peers with a session to send on (only tracked peers have sessions)."""
        return (peer for peer in self._tracked.values() if peer.send_session(now) is not None)

    def _random_session_peer(self, now: float) -> Peer | None:
        candidates = list(self._session_peers(now))
        return candidates[self._random(1)[0] % len(candidates)] if candidates else None

    def _signing_key_of(self, node: int) -> bytes | None:
        """A member's Ed25519 key (it checks link-state signatures); None if unknown."""
        peer = self.peers.get(node)
        return peer.certificate.signing_public if peer is not None else None

    # -- control messages ---------------------------------------------------------------------

    def _control_received(
        self, peer: Peer, message: ControlMessage, reply_to: Address | None, now: float
    ) -> None:
        """``reply_to`` is the address a direct (not relayed) message came from."""
        if isinstance(message, Probe):
            # answer on the path the probe took, so that it measures the direct link
            self._send_control(peer, ProbeAck(message.seq, message.ts), now, reply_to)
        elif isinstance(message, ProbeAck):
            rtt = now - message.ts
            if reply_to is not None and 0 <= rtt < 60:
                stats = peer.stats
                stats.rtt = rtt if stats.rtt is None else 0.75 * stats.rtt + 0.25 * rtt
                stats.unanswered = 0
                if peer.link_event(LinkEvent.PROBE_ANSWERED):
                    self.link_state.update_local_links(now)
                    # a batched link-up is advertised by the timer: make it come in time
                    self._next_deadline = min(self._next_deadline, now + LINK_STATE_BATCH_INTERVAL)
        elif isinstance(message, LossReport):
            adaptation = peer.tx_adaptation
            if adaptation.report(message.opened, message.lost, self._superframe_pieces, now):
                loss = 100 * message.lost / (message.opened + message.lost)
                segments = adaptation.piece_segments
                detail = f"lost={loss:.2f}% segments={segments} for {SPLIT_HOLD:.0f}s"
                self._events.append(NodeEvent("superframes_cut", peer.node_id, peer.name, detail))
        elif isinstance(message, Members):
            for record in message.members:
                self._learn_member(record, now, gossip=True, source=peer.node_id)
        elif isinstance(message, MembersSum | MembersDigest):
            self.membership.message_received(peer, message, now)
        elif isinstance(message, Document):
            self.document_received(message.body, now, source=peer)
        else:  # lsd, lsd_req, lsd_sum, lsd_digest
            self.link_state.message_received(peer, message, now)

    # -- timers -------------------------------------------------------------------------------

    def timer_fired(self, now: float) -> None:
        deadline = now + PROBE_INTERVAL
        for peer in list(self._tracked.values()):  # handshakes may track more
            for old in peer.expire_sessions(now):
                self._by_index.pop(old.local_index, None)
            pending = peer.pending
            if pending is not None:
                if now - pending.first_sent_at > REKEY_ATTEMPT_TIME:
                    self._expired_handshake_attempt(peer, now)
                elif now - pending.last_sent_at >= REKEY_TIMEOUT:
                    self.handshakes.initiate(peer, now)  # again, under a new ephemeral key
            wanted = self._wanted(peer, now)
            if not wanted and peer.link is LinkState.UP:
                self._link_went_idle(peer)
            session = peer.send_session(now)
            silent = now - (peer.stats.last_rx if peer.stats.last_rx is not None else -1e9)
            if (
                peer.pending is None
                and peer.endpoints
                and now >= peer.next_attempt_at
                and (
                    (
                        wanted
                        and (
                            session is None
                            or session.wants_rekey(now)
                            or silent > REHANDSHAKE_AFTER_MISSES * PROBE_INTERVAL  # it may have restarted
                        )
                    )
                    or (session is None and peer.queue)
                )
            ):
                self.handshakes.initiate(peer, now)
                peer.next_attempt_at = now + REHANDSHAKE_AFTER_MISSES * PROBE_INTERVAL
            if wanted and session is not None and now >= peer.next_probe_at:
                self._expired_probe_interval(peer, now)
            if session is not None:
                self._report_loss(peer, now)
            up = peer.link_up(now)
            if self._link_was_up.get(peer.node_id, False) != up:
                self._link_was_up[peer.node_id] = up
                self._events.append(NodeEvent("peer_up" if up else "peer_down", peer.node_id, peer.name))
            if peer.pending is not None:
                deadline = min(deadline, peer.pending.last_sent_at + REKEY_TIMEOUT)
            elif session is None and peer.endpoints and (wanted or peer.queue):
                deadline = min(deadline, max(peer.next_attempt_at, now + 0.05))
            elif session is not None and wanted:
                deadline = min(deadline, peer.next_probe_at)
            if not (wanted or peer.sessions or peer.pending or peer.queue):
                del self._tracked[peer.node_id]  # idle: nothing to do until frames flow
        if self.firewall.connections:
            self.firewall.connections.expire(now)  # idle connections out, a bounded number per call
        link_state_at = self.link_state.timer_fired(now)
        gossip_at = self.membership.timer_fired(now)
        self._next_deadline = max(now + 0.01, min(deadline, gossip_at, link_state_at))

    def _expired_handshake_attempt(self, peer: Peer, now: float) -> None:
        """REKEY_ATTEMPT_TIME without a response: give up, try again after a backoff."""
        self.handshakes.forget_pending(peer)
        peer.next_attempt_at = now + peer.attempt_backoff
        peer.attempt_backoff = min(peer.attempt_backoff * 2, 30.0)

    def _link_went_idle(self, peer: Peer) -> None:
        """An on-demand link no frame used for IDLE_LINK_AFTER: stop measuring and
        advertising it (the routes still reach the member through others)."""
        peer.link_event(LinkEvent.WENT_IDLE)

    def _report_loss(self, peer: Peer, now: float) -> None:
        """Tell ``peer`` how many of its messages were lost, if some were (core/loss.py)."""
        report = peer.rx_loss.tick(peer.stats.rx_packets, peer.sessions, now)
        if report is not None:
            opened, lost = report
            peer.stats.rx_lost += lost
            self._send_control(peer, LossReport(opened, lost), now)

    def _expired_probe_interval(self, peer: Peer, now: float) -> None:
        """Time to probe the direct link to ``peer`` (never relayed). A miss makes the next probe
        come sooner; LINK_DOWN_AFTER_MISSES misses in a row take the link down, and the
        routes then send through another member until a probe is answered again."""
        stats = peer.stats
        misses = stats.unanswered
        if misses >= LINK_DOWN_AFTER_MISSES and peer.link is LinkState.UP:
            peer.link_event(LinkEvent.PROBES_MISSED)
            stats.rtt = None  # measured again when probes are answered
            self.link_state.update_local_links(now, urgent=True)
        address = peer.current_endpoint or (peer.endpoints[0] if peer.endpoints else None)
        if address is None:
            return
        peer.probe_seq += 1
        stats.unanswered += 1
        if misses or not peer.direct_up:  # likely lost: not the loss of the frames' path (core/loss.py)
            peer.tx_adaptation.blind_sent += 1
        self._send_control(peer, Probe(peer.probe_seq, now), now, address)
        if misses and peer.direct_up:
            peer.next_probe_at = now + PROBE_RETRY_INTERVAL
        else:
            jitter = (self._random(1)[0] / 255 - 0.5) * 2 * PROBE_JITTER
            peer.next_probe_at = now + PROBE_INTERVAL * (1 + jitter)

    # -- status ---------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """``naas status --json``: the JSON form of ``topology``."""
        return self.topology(now).to_dict()

    def topology(self, now: float) -> Topology:
        """This member's view of the mesh (core/topology.py, built by core/status.py)."""
        return topology_of(
            now,
            network=self.network.name,
            own=self.identity.certificate,
            mtu=self.mtu,
            peers=self.peers,
            routes=self.routes,
            groups_of=self.groups_of,
            address_for=self.datapath.address_for,
            wanted=self._wanted,
            document=self.document,
            document_applied_at=self.document_applied_at,
            drops=self.drops,
            relayed_packets=self.relayed_packets,
            relayed_bytes=self.relayed_bytes,
            learned_macs=len(self.mac_table),
            policy=self.firewall.status(),
        )
