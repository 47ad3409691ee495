"""The data path: frames from naas0 sealed out to the mesh, datagrams from the mesh opened into naas0.

Theory of operation. NodeCore (core/node.py) decides who gets a session and when; the
data path moves the bytes. It is composed of:

- ``Inside`` (core/inside.py): frames read from naas0 -> offloads -> ARP/DHCP answered
  locally -> switch (core/switch.py) -> the policy's egress check (core/firewall.py) ->
  ``send_inner``;
- ``Outside`` (core/outside.py): datagrams from the underlay -> relay, or handshake, or
  open (fragments joined) -> port security and the policy (core/firewall.py) -> learn
  the source MAC -> naas0;
- this class, which seals: ``send_inner`` puts an inner message in the member's newest
  confirmed session (core/session.py), for its endpoint or, while the direct link is
  down, for the next hop the routes pick (``address_for``). Without a session the
  message waits in a short queue while NodeCore runs a handshake. A message bigger than
  one datagram (a super-frame) is sealed once and cut into FRAGMENT pieces that leave as
  one UDP GSO run (``take_runs``); anything else is one datagram (``take_datagrams``).

It is given its collaborators (the members, the session index, the MAC table, the
firewall, the routes, the cookie responder, ...), which NodeCore shares with the rest of
the node, and ``DataPathHooks``: NodeCore's decisions it calls back (keep a link, start a
handshake, take a control message, ...). The driver drains what it produced with
``take_frames`` (for naas0), ``take_datagrams`` and ``take_runs`` (for the underlay).

One decision per flow. The firewall decides a flow's first frame (port security, then
the rules) and keeps the decision in its connection table; the other frames of the flow
only look it up. The express lane (``express_send``, ``express_receive``) is the
cache-hit path of the same pipeline: the driver offers it the first read of each
wake-up, and it takes the common frame of a sparse flow - a small unicast frame to or
from a member on an active direct link with a confirmed session, whose flow the table
already allowed - sealing or opening it in one function with the very effects of the
general path; anything else it declines with nothing changed, and the general path,
which decides and fills the table, takes it. Why a lane at all: a ping or a request after
a pause finds the CPU cold, and every Python call on the way costs microseconds then
(docs/performance.md, "The express lane").

Keeping warm (``warm_up``): between sparse frames the driver runs a frame through
``send_inner`` and ``runs_received`` on a session the node holds with itself, so the
next real frame finds this code and AES-GCM's in the CPU's caches. Nothing of it leaves
the node or touches a member's state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from naas.core import dhcp
from naas.core.control_messages import ControlMessage
from naas.core.cookie import CookieResponder, Verdict
from naas.core.firewall import Firewall
from naas.core.fragments import FRAGMENT_HEADER_LEN, datagrams_of, piece_size_for
from naas.core.handshake import TransportKeys
from naas.core.inside import Inside
from naas.core.membership_sync import MembershipSync
from naas.core.mesh_routes import MeshRoutes
from naas.core.offload import PLAIN_VNET_HDR
from naas.core.outside import Outside
from naas.core.peer import Address, LinkEvent, Peer
from naas.core.session import Session
from naas.core.switch import MacTable
from naas.core.wire import DEFAULT_HOP_LIMIT, ETHERNET_HEADER_LEN, INNER_FRAME, DropReason
from naas.model.certificate import Certificate

_FRAME = bytes((INNER_FRAME,))
LOOPBACK: Address = ("loopback", 0)  # where warm_up's datagram "goes": never a socket


def warm_up_frame(mac: bytes) -> bytes:
    """What `DataPath.warm_up` sends itself: a ping-sized broadcast (98 bytes) from ``mac``;
    broadcast, so opening it keeps no link alive."""
    return b"\xff" * 6 + mac + b"\x08\x00" + bytes(84)


@dataclass(frozen=True, slots=True)
class DataPathHooks:
    """What the data path asks of NodeCore: its decisions, and facts that change under it."""

    activate: Callable[[Peer, float], None]  # frames flow to or from a member: keep a direct link
    initiate: Callable[[Peer, float], None]  # start (or restart) a handshake
    session_ready: Callable[[Peer, float], None]  # a session's first message was opened
    control_received: Callable[[Peer, ControlMessage, Address | None, float], None]
    initiation_verdict: Callable[[bytes, Address, float, bool], Verdict]  # may it cost a DH? raises if not
    initiation_received: Callable[[bytes, Address, bool, float], None]
    response_received: Callable[[bytes, Address, bool, float], None]
    cookie_reply_received: Callable[[bytes, float], None]
    revoked: Callable[[], frozenset[int]]  # node ids the network document revokes
    standing_threshold: Callable[[], float]  # below 1.0: past the full-mesh size (flooding)
    own_ip: Callable[[], IPv4Interface | None]  # this member's overlay address (DHCP answers)


class DataPath:
    """Moves one node's bytes (module docstring)."""

    def __init__(
        self,
        *,
        node_id: int,
        mac: bytes,
        mtu: int,
        tap_offload: bool,
        drops: Counter[DropReason],
        peers: dict[int, Peer],
        by_index: dict[int, tuple[Peer, Session]],
        mac_table: MacTable,
        firewall: Firewall,
        routes: MeshRoutes,
        membership: MembershipSync,
        cookies: CookieResponder,
        member_addresses: dict[Address, int],
        ip_to_node: dict[IPv4Address, int],
        dhcp_responder: dhcp.DhcpResponder | None,
        hooks: DataPathHooks,
    ) -> None:
        self.node_id = node_id
        self.mac = mac
        self.tap_offload = tap_offload  # naas0 reads and writes carry a virtio-net header
        self.drops = drops
        self.peers = peers
        self.by_index = by_index  # local session index -> its peer and session
        self.mac_table = mac_table
        self.firewall = firewall
        self.routes = routes  # where datagrams go while a direct link is down
        self.membership = membership  # told when a member's endpoint changes
        self.cookies = cookies
        self.member_addresses = member_addresses  # members' direct endpoints (relay check)
        self.ip_to_node = ip_to_node  # members' addresses (ARP answers)
        self.max_frame = mtu + ETHERNET_HEADER_LEN + 4  # the largest frame from naas0: one VLAN tag allowed
        self.max_single_inner = 1 + self.max_frame  # larger inner messages travel as FRAGMENTs
        self.piece_size = piece_size_for(mtu)  # bytes of sealed message per FRAGMENT
        self.max_mss = mtu - 40  # TCP MSS clamp
        self._initiate = hooks.initiate
        # what the driver drains (the lists stay the same objects: Inside and Outside fill them)
        self.datagrams_out: list[tuple[bytes, Address]] = []
        self.runs_out: list[tuple[bytes | bytearray, Address, int]] = []  # (run, to, segment size)
        self.frames_out: list[bytes | memoryview] = []
        self.loopback: tuple[Peer, Session, bytes] | None = None  # for warm_up: see open_loopback
        self.inside = Inside(self, hooks, dhcp_responder)
        self.outside = Outside(self, hooks)
        self.tap_frames_received = self.inside.frames_received
        self.express_send = self.inside.express_send
        self.datagrams_received = self.outside.datagrams_received
        self.runs_received = self.outside.runs_received
        self.express_receive = self.outside.express_receive

    def take_datagrams(self) -> list[tuple[bytes, Address]]:
        out = self.datagrams_out[:]
        self.datagrams_out.clear()
        return out

    def take_runs(self) -> list[tuple[bytes | bytearray, Address, int]]:
        """Coalesced datagrams: ``(run, destination, segment size)`` (daemon/udp.py)."""
        out = self.runs_out[:]
        self.runs_out.clear()
        return out

    def take_all_datagrams(self) -> list[tuple[bytes, Address]]:
        """`take_datagrams` and the datagrams of `take_runs`, for drivers without GSO."""
        out = self.take_datagrams()
        for run, address, segment in self.take_runs():
            out += [(datagram, address) for datagram in datagrams_of(run, segment)]
        return out

    def take_frames(self) -> list[bytes | memoryview]:
        out = self.frames_out[:]
        self.frames_out.clear()
        return out

    def local_frame(self, frame: bytes) -> bytes:
        """A frame for naas0, with the virtio header it expects when offloads are on."""
        return PLAIN_VNET_HDR + frame if self.tap_offload else frame

    def warm_up(self, now: float) -> bool:
        """Run a ping-sized broadcast frame through the code real frames take, on the
        loopback session: sealed by `send_inner`, opened by `runs_received`, thrown away.

        The driver calls this while traffic flows, between sparse frames: after a few
        milliseconds asleep this code and AES-GCM's are out of the CPU's caches, and the
        next real frame would pay for bringing them back (docs/performance.md, "Idle
        latency"). Nothing leaves the node and no member's state changes: the session,
        its counters and its statistics are the loopback's own. True if the frame came
        back intact; a failure is counted in `drops` like any other.
        """
        assert self.loopback is not None, "NodeCore opens it (open_loopback)"
        peer, session, frame = self.loopback
        session.created_at = now  # it never expires
        datagrams, frames = self.datagrams_out, self.frames_out
        sent, written = len(datagrams), len(frames)
        self.send_inner(peer, _FRAME + frame, now)
        if len(datagrams) == sent:
            return False  # not sealed (the session cannot send): nothing to open
        datagram, address = datagrams.pop()
        self.runs_received(((datagram, address, len(datagram)),), now)
        return len(frames) > written and frames.pop() == self.local_frame(frame)

    def open_loopback(self, certificate: Certificate, key: bytes, index: int, now: float) -> None:
        """Set up the session `warm_up` runs on: this node's (``certificate``, ours) with
        itself, under ``key``, random, which never leaves it. Its ``index`` stays taken in
        the session index, so no real session gets it."""
        keys = TransportKeys(send_key=key, receive_key=key, handshake_hash=b"")
        session = Session(keys, local_index=index, remote_index=index, is_initiator=True, now=now)
        peer = Peer(certificate, current_endpoint=LOOPBACK)
        peer.link_event(LinkEvent.PROBE_ANSWERED)  # its "link" is always up
        peer.sessions.append(session)
        self.by_index[index] = (peer, session)
        self.loopback = (peer, session, warm_up_frame(self.mac))

    def send_inner(self, peer: Peer, inner: bytes, now: float, address: Address | None = None) -> None:
        """Seal ``inner`` for ``peer``; to ``address`` if given (probes), else where routes say."""
        session = peer.send_session(now)
        if address is None:
            address = self.address_for(peer)
        if session is None or address is None:
            if len(peer.queue) == peer.queue.maxlen:
                self.drops[DropReason.QUEUE_FULL] += 1
            peer.queue.append(inner)
            if peer.pending is None and peer.endpoints:
                self._initiate(peer, now)
            return
        stats = peer.stats
        stats.tx_packets += 1
        if len(inner) > self.max_single_inner:  # a super-frame: pieces, in GSO runs
            segment = FRAGMENT_HEADER_LEN + self.piece_size
            for run in session.seal_runs(
                peer.node_id, self.node_id, DEFAULT_HOP_LIMIT, inner, self.piece_size
            ):
                self.runs_out.append((run, address, segment))
                stats.tx_bytes += len(run)
            return
        datagram = session.seal(peer.node_id, self.node_id, DEFAULT_HOP_LIMIT, inner)
        self.datagrams_out.append((datagram, address))
        stats.tx_bytes += len(datagram)

    def address_for(self, peer: Peer) -> Address | None:
        """Where datagrams for ``peer`` go: its endpoint while the direct link is up,
        else the endpoint of the next hop the routes pick (end-to-end session inside)."""
        if not peer.direct_up:
            hop_id = self.routes.next_hop(peer.node_id)
            hop = self.peers.get(hop_id) if hop_id is not None and hop_id != peer.node_id else None
            if hop is not None and hop.direct_up and hop.current_endpoint is not None:
                peer.relayed_via = hop.node_id
                return hop.current_endpoint
        peer.relayed_via = None
        return peer.current_endpoint or (peer.endpoints[0] if peer.endpoints else None)

    def endpoint_confirmed(self, peer: Peer, address: Address, now: float) -> None:
        """Authenticated traffic came straight from ``address``: reply there (roaming)."""
        if peer.current_endpoint is not None:
            self.member_addresses.pop(peer.current_endpoint, None)
        peer.current_endpoint = address
        self.member_addresses[address] = peer.node_id
        if peer.note_endpoint(address):
            self.membership.record_changed(peer, now)
