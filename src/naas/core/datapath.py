"""The data path: frames from naas0 sealed out to the mesh, datagrams from the mesh opened into naas0.

Theory of operation. DataPath is the part of NodeCore (core/node.py) that moves bytes;
NodeCore inherits it and keeps what decides who gets a session and when: handshakes,
membership, control messages, timers, probes and status. The state is NodeCore's, set
up in its ``__init__``; the class below only declares what it uses, and declares at
the end the few NodeCore methods it calls. The driver drains the results with
``take_frames`` (for naas0), ``take_datagrams`` and ``take_runs`` (for the underlay).

Inside -> outside (``tap_frames_received``, a batch of naas0 reads):

1. With ``tap_offload`` every read starts with a virtio-net header (core/offload.py).
   A TCP super-frame of up to 64 KiB, or a frame whose checksum is still to be done,
   goes as it is, header included, as one OFFLOAD_FRAME to the member its destination
   MAC names, unless the link to that member loses datagrams (core/loss.py): then a
   super-frame is cut here into smaller ones, or into segments. Everything else loses
   the header (a full-size or multicast frame after its checksum is finished, one for a
   MAC not learnt yet after being cut up in software) and goes on as a plain frame.
2. A plain frame of the wrong size is dropped. ARP for a member's address and DHCP
   from this host are answered here (layer-3 networks only), straight back to naas0.
   A TCP SYN gets its MSS clamped to the overlay MTU (core/ethernet.py).
3. The switch: the destination MAC picks a member (model/ids.py, core/switch.py).
   Broadcast, multicast and unknown destinations are flooded to every member with a
   session (past the full-mesh size, core/standing.py, to every member).
4. ``_send_inner`` seals the inner message in that member's newest confirmed session
   (core/session.py), for its endpoint, or for the next hop the routes pick while the
   direct link is down. Without a session the message waits in a short queue while
   NodeCore runs a handshake. A message bigger than one datagram (a super-frame) is
   sealed once and cut into FRAGMENT pieces that leave as one UDP GSO run
   (``take_runs``); anything else is one datagram (``take_datagrams``).

Outside -> inside (``datagrams_received``, and ``runs_received`` for UDP GRO runs):

1. The outer header names the destination. A datagram for another member is relayed
   on that header, never opened, and only when it comes from a member; a GRO run of
   datagrams all for one other member is relayed whole, as one GSO run.
2. For us, the type decides: INITIATION and RESPONSE go to NodeCore's handshake; DATA
   is found by its receiver index and opened (AEAD and anti-replay).
3. FRAGMENT pieces are joined first (core/fragments.py). A GRO run that holds a whole
   message is joined and opened at once, with no bookkeeping; otherwise the session's
   Reassembly collects pieces until the message is whole, then it is opened.
4. An opened message is a frame (its source MAC learnt; written to naas0, behind a
   plain virtio-net header when offloads are on), an OFFLOAD_FRAME (written as it is,
   or cut up in software when naas0 has no offloads), a control message (handed to
   NodeCore) or a keepalive. Authenticated traffic straight from an address makes it
   the member's endpoint (roaming), and its first message confirms a new session.

The express lane (``express_send``, ``express_receive``): the driver offers the first
read of each wake-up to one of these first. The common frame of a sparse flow - a small
unicast frame to or from a member on an active direct link with a confirmed session -
is sealed or opened in one function, with the very effects the steps above would have;
anything else is declined with nothing changed and takes the steps above.

Keeping warm (``warm_up``): between sparse frames the driver runs a frame through
``_send_inner`` and ``runs_received`` on a session the node holds with itself, so the
next real frame finds this code and AES-GCM's in the CPU's caches. Nothing of it leaves
the node or touches a member's state.

Malformed or unauthenticated input raises BadPacket inside; the input methods count
its DropReason in ``drops`` and go on with the next datagram or frame.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from naas.core import arp, dhcp
from naas.core.constants import MAX_HANDSHAKES_PER_BATCH
from naas.core.control_messages import ControlMessage, decode_control_untrusted
from naas.core.cookie import CookieResponder, Verdict
from naas.core.ethernet import clamp_tcp_mss
from naas.core.fragments import FRAGMENT_HEADER_LEN, PIECE_HEAD, Reassembly, datagrams_of, run_span
from naas.core.membership_sync import MembershipSync
from naas.core.mesh_routes import MeshRoutes
from naas.core.offload import (
    PLAIN_VNET_HDR,
    VNET_HDR_LEN,
    VNET_NEEDS_CSUM,
    check_vnet_untrusted,
    complete_checksum,
    smaller_super_frames,
    software_segments,
)
from naas.core.peer import Address, Peer
from naas.core.session import Session
from naas.core.switch import MacTable
from naas.core.wire import (
    DATA_AAD_SLICE,
    DATA_HEAD,
    DATA_HEADER_LEN,
    DEFAULT_HOP_LIMIT,
    ETHERNET_HEADER_LEN,
    INNER_CONTROL,
    INNER_FRAME,
    INNER_KEEPALIVE,
    INNER_OFFLOAD_FRAME,
    OUTER,
    TYPE_COOKIE_REPLY,
    TYPE_DATA,
    TYPE_FRAGMENT,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    BadPacket,
    DropReason,
    with_hop_limit,
)
from naas.model.ids import MAC_PREFIX, NodeId, mac_for_node

if TYPE_CHECKING:
    from naas.core.roster import LocalIdentity

_FRAME = bytes((INNER_FRAME,))
_OFFLOAD_FRAME = bytes((INNER_OFFLOAD_FRAME,))
_MIN_VNET_READ = VNET_HDR_LEN + ETHERNET_HEADER_LEN
_ETHERTYPE_ARP = b"\x08\x06"
_ETHERTYPE_IPV4 = b"\x08\x00"
_EXPRESS_OUTER = bytes((TYPE_DATA, DEFAULT_HOP_LIMIT, 0, 0))  # a DATA datagram sent straight to us, no flags
_INITIATION_TYPE = bytes((TYPE_INITIATION,))
LOOPBACK: Address = ("loopback", 0)  # where warm_up's datagram "goes": never a socket


def warm_up_frame(mac: bytes) -> bytes:
    """What `DataPath.warm_up` sends itself: a ping-sized broadcast (98 bytes) from ``mac``;
    broadcast, so opening it keeps no link alive."""
    return b"\xff" * 6 + mac + _ETHERTYPE_IPV4 + bytes(84)


class DataPath:
    """NodeCore's data path. Never made on its own: NodeCore sets up the state below."""

    # -- NodeCore's state, declared here for the methods below (see NodeCore.__init__) --
    identity: LocalIdentity
    node_id: NodeId
    mac: bytes
    tap_offload: bool  # naas0 reads and writes carry a virtio-net header
    drops: Counter[DropReason]
    peers: dict[int, Peer]
    mac_table: MacTable
    routes: MeshRoutes  # where datagrams go while a direct link is down
    membership: MembershipSync  # told when a member's endpoint changes
    relayed_packets: int
    relayed_bytes: int
    cookies: CookieResponder  # handshake flood protection (core/cookie.py)
    _standing_threshold: float  # below 1.0: past the full-mesh size (_flood)
    _by_index: dict[int, tuple[Peer, Session]]  # local session index -> its peer and session
    _datagrams_out: list[tuple[bytes, Address]]
    _runs_out: list[tuple[bytes | bytearray, Address, int]]  # (run, to, segment size)
    _frames_out: list[bytes | memoryview]
    _max_frame: int  # the largest frame from naas0: MTU, Ethernet header, one VLAN tag
    _max_single_inner: int  # larger inner messages travel as FRAGMENTs
    _piece_size: int  # bytes of sealed message per FRAGMENT
    _node_id_bytes: bytes  # node_id as in an outer header
    _max_mss: int  # TCP MSS clamp
    _ip_to_node: dict[IPv4Address, int]  # members' addresses (ARP answers)
    _member_addresses: dict[Address, int]  # members' direct endpoints (relay check)
    _revoked: frozenset[int]  # node ids the network document revoked (core/roster.py)
    _dhcp: dhcp.DhcpResponder | None  # only on layer-3 networks
    _loopback: tuple[Peer, Session, bytes]  # this node's session with itself, for warm_up, and its frame

    # -- effects --------------------------------------------------------------------------

    def take_datagrams(self) -> list[tuple[bytes, Address]]:
        out, self._datagrams_out = self._datagrams_out, []
        return out

    def take_runs(self) -> list[tuple[bytes | bytearray, Address, int]]:
        """Coalesced datagrams: ``(run, destination, segment size)`` (daemon/udp.py)."""
        out, self._runs_out = self._runs_out, []
        return out

    def take_all_datagrams(self) -> list[tuple[bytes, Address]]:
        """`take_datagrams` and the datagrams of `take_runs`, for drivers without GSO."""
        out = self.take_datagrams()
        for run, address, segment in self.take_runs():
            out += [(datagram, address) for datagram in datagrams_of(run, segment)]
        return out

    def take_frames(self) -> list[bytes | memoryview]:
        out, self._frames_out = self._frames_out, []
        return out

    # -- inside: frames from naas0 ---------------------------------------------------------

    def tap_frames_received(self, reads: Iterable[bytes], now: float) -> None:
        self._switch(reads, now, self.tap_offload)

    def _switch(self, reads: Iterable[bytes], now: float, vnet: bool) -> None:
        """Frames from naas0 to the members they are for; ``vnet``: each read starts with a
        virtio-net header. The common case, a small frame for a member, stays in this loop:
        each extra call costs microseconds when the CPU comes back cold (docs/performance.md)."""
        learned = self.mac_table.lookup
        peers = self.peers
        for frame in reads:
            if vnet:
                if len(frame) < _MIN_VNET_READ:
                    self.drops[DropReason.BAD_FRAME] += 1
                    continue
                if frame[0] & VNET_NEEDS_CSUM or frame[1]:  # a checksum to do, or a super-frame
                    plain = self._offload_read(frame, now)
                    if plain:
                        self._switch(plain, now, vnet=False)
                    continue
                frame = frame[VNET_HDR_LEN:]
            if len(frame) < ETHERNET_HEADER_LEN:
                self.drops[DropReason.BAD_FRAME] += 1
                continue
            if len(frame) > self._max_frame:
                self.drops[DropReason.FRAME_TOO_BIG] += 1
                continue
            multicast = frame[0] & 1
            if (
                self._dhcp is not None
                and (multicast or frame[12:14] == _ETHERTYPE_ARP)
                and self._answered_locally(frame, multicast)
            ):
                continue
            if frame[12:14] == _ETHERTYPE_IPV4 and frame[23] == 6:
                frame = clamp_tcp_mss(frame, self._max_mss)
            inner = _FRAME + frame
            if multicast:
                self._flood(inner, now)
                continue
            if frame[:2] == MAC_PREFIX:  # a member's MAC holds its node id (model/ids.py)
                node = int.from_bytes(frame[2:6], "big") or None
            else:
                node = learned(frame[:6], now)
            if node is None:
                self._flood(inner, now)
            elif node != self.node_id:
                peer = peers.get(node)
                if peer is None:
                    self.drops[DropReason.NO_ROUTE] += 1
                else:
                    self._activate(peer, now)
                    self._send_inner(peer, inner, now)

    def _offload_read(self, data: bytes, now: float) -> list[bytes]:
        """A read with work left (a checksum, a TCP super-frame) goes as it is, as an
        OFFLOAD_FRAME, to the one member it is for; the receiver's kernel or
        `software_segments` finishes it. A lossy link gets smaller super-frames, each an
        OFFLOAD_FRAME. Returns the plain frames to switch instead: the frame with its
        checksum done (full-size or multicast), or its segments (a MAC not learnt yet, a
        link lossy enough for single segments)."""
        try:
            _, gso_type, _, _, csum_start, csum_offset = check_vnet_untrusted(
                data[:VNET_HDR_LEN], len(data) - VNET_HDR_LEN
            )
            if not gso_type and (len(data) >= self._max_single_inner or data[VNET_HDR_LEN] & 1):
                # a full-size segment or a multicast: finish the checksum, send it plainly
                return [complete_checksum(data[VNET_HDR_LEN:], csum_start, csum_offset)]
            node = self.mac_table.lookup(data[VNET_HDR_LEN : VNET_HDR_LEN + 6], now)
            if node is None:  # not learnt yet: flood ordinary frames
                return software_segments(data[:VNET_HDR_LEN], data[VNET_HDR_LEN:])
            peer = self.peers.get(node)
            if peer is None:
                if node != self.node_id:
                    self.drops[DropReason.NO_ROUTE] += 1
                return []
            cut_size = peer.tx_adaptation.cut_size(now) if gso_type else 0
            if cut_size == 1:  # a lossy link (core/loss.py): single segments
                return software_segments(data[:VNET_HDR_LEN], data[VNET_HDR_LEN:])
            if cut_size:  # ... smaller super-frames
                pieces = smaller_super_frames(data[:VNET_HDR_LEN], data[VNET_HDR_LEN:], cut_size)
                self._activate(peer, now)
                for piece in pieces:
                    self._send_inner(peer, _OFFLOAD_FRAME + piece, now)
                return []
        except BadPacket as exc:
            self.drops[exc.reason] += 1
            return []
        if not gso_type and data[22:24] == _ETHERTYPE_IPV4 and data[33] == 6:  # a TCP SYN?
            frame = data[VNET_HDR_LEN:]
            clamped = clamp_tcp_mss(frame, self._max_mss, checksum_partial=True)
            if clamped is not frame:
                data = data[:VNET_HDR_LEN] + clamped
        self._activate(peer, now)
        self._send_inner(peer, _OFFLOAD_FRAME + data, now)
        return []

    def _local_frame(self, frame: bytes) -> bytes:
        """A frame for naas0, with the virtio header it expects when offloads are on."""
        return PLAIN_VNET_HDR + frame if self.tap_offload else frame

    def _flood(self, inner: bytes, now: float) -> None:
        """Broadcast: to every member with a session; past the full-mesh size also to the
        others (a handshake starts, and the session lapses if no unicast follows)."""
        everyone = self._standing_threshold < 1.0
        for peer in self.peers.values():
            if peer.send_session(now) is not None or (everyone and peer.endpoints):
                self._send_inner(peer, inner, now)

    def _answered_locally(self, frame: bytes, multicast: int) -> bool:
        """ARP for members and this host's DHCP are answered here, never flooded."""
        ethertype = frame[12:14]
        if ethertype == _ETHERTYPE_ARP:
            try:
                request = arp.parse_arp_untrusted(frame)
            except BadPacket as exc:
                self.drops[exc.reason] += 1
                return True
            node = self._ip_to_node.get(request.target_ip)
            if request.op != 1 or node is None or node == self.node_id:
                return False
            self._frames_out.append(
                self._local_frame(arp.build_arp_reply(request, mac_for_node(NodeId(node))))
            )
            return True
        if multicast and ethertype == _ETHERTYPE_IPV4 and self._dhcp is not None:
            try:
                request_dhcp = dhcp.parse_dhcp_untrusted(frame)
            except BadPacket as exc:
                self.drops[exc.reason] += 1
                return True
            if request_dhcp is None:
                return False
            client_mac = frame[6:12]
            if client_mac != self.mac:
                return False  # a host bridged behind us: not ours to answer
            own_ip = self.identity.certificate.ip
            reply = self._dhcp.answer(request_dhcp, client_mac, own_ip)
            if reply is not None:
                self._frames_out.append(self._local_frame(reply))
            return True
        return False

    # -- outside: datagrams from the underlay ------------------------------------------------

    def datagrams_received(self, datagrams: Iterable[tuple[bytes, Address]], now: float) -> None:
        self._outside(datagrams, now, counted=False)

    def _outside(self, datagrams: Iterable[tuple[bytes, Address]], now: float, *, counted: bool) -> None:
        """Datagrams from the underlay, initiations last (``counted``: their arrivals were
        already taken from their host's bucket, core/cookie.py)."""
        initiations: list[tuple[bytes, Address, bool]] = []
        for datagram, address in datagrams:
            try:
                if len(datagram) < DATA_HEADER_LEN:
                    raise BadPacket(DropReason.TOO_SHORT, f"{len(datagram)} bytes")
                kind, hops, flags, dst, src = OUTER.unpack_from(datagram)
                if flags:
                    raise BadPacket(DropReason.BAD_FLAGS)
                if dst != self.node_id:
                    self._relay(datagram, dst, src, hops, address)
                    continue
                relayed = hops != DEFAULT_HOP_LIMIT
                if kind == TYPE_DATA:
                    self._message_received(datagram, datagram[DATA_HEADER_LEN:], src, address, relayed, now)
                elif kind == TYPE_FRAGMENT:
                    self._fragment_received(datagram, src, address, relayed, now)
                elif kind == TYPE_INITIATION:
                    initiations.append((datagram, address, relayed))
                elif kind == TYPE_RESPONSE:
                    self._response_received(datagram, address, relayed, now)
                elif kind == TYPE_COOKIE_REPLY:
                    self._cookie_reply_received(datagram, now)
                else:
                    raise BadPacket(DropReason.UNKNOWN_TYPE, str(kind))
            except BadPacket as exc:
                self.drops[exc.reason] += 1
        if initiations:
            self._initiations_received(initiations, now, counted)

    def _initiations_received(
        self, initiations: list[tuple[bytes, Address, bool]], now: float, counted: bool
    ) -> None:
        """The initiations of a batch, after its sessions' datagrams: at most
        MAX_HANDSHAKES_PER_BATCH of them get a Diffie-Hellman; more mean "under load".
        Under load, each host's bucket is asked once for all of its initiations in the
        batch, and those it has no token for are dropped together (core/cookie.py)."""
        if not counted and len(initiations) > 1 and self.cookies.under_load(now):
            initiations = self._within_arrivals(initiations, now)
            counted = True
        admitted = 0
        for datagram, address, relayed in initiations:
            try:
                self._initiation_verdict(datagram, address, now, counted)
                if admitted >= MAX_HANDSHAKES_PER_BATCH:
                    self.cookies.overloaded(now)
                    raise BadPacket(DropReason.HANDSHAKE_BUSY)
                admitted += 1
                self.cookies.handshakes_admitted += 1
                self._initiation_received(datagram, address, relayed, now)
            except BadPacket as exc:
                self.drops[exc.reason] += 1

    def _within_arrivals(
        self, initiations: list[tuple[bytes, Address, bool]], now: float
    ) -> list[tuple[bytes, Address, bool]]:
        """The initiations of a batch that their hosts' arrivals buckets let through."""
        per_host: dict[str, int] = {}
        for _, address, _ in initiations:
            per_host[address[0]] = per_host.get(address[0], 0) + 1
        allowed = {host: self.cookies.arrivals_allowed(host, count, now) for host, count in per_host.items()}
        kept = []
        for item in initiations:
            host = item[1][0]
            if allowed[host]:
                allowed[host] -= 1
                kept.append(item)
        if len(kept) < len(initiations):
            self.drops[DropReason.RATE_LIMITED] += len(initiations) - len(kept)
        return kept

    def runs_received(self, runs: Iterable[tuple[bytes, Address, int]], now: float) -> None:
        """Coalesced datagrams from UDP GRO: ``(run, sender, segment size)``.

        The usual runs are handled whole: all the pieces of one message for us (joined
        and opened at once), or datagrams for another member (relayed as one run).
        Anything else is taken apart and handled datagram by datagram.
        """
        for run, address, segment in runs:
            if len(run) <= segment:  # one datagram: GRO found nothing to join it with
                self.datagrams_received(((run, address),), now)
                continue
            if (
                run[0] == TYPE_INITIATION
                and self.cookies.under_load(now)
                and run[::segment] == _INITIATION_TYPE * -(-len(run) // segment)
            ):  # a run of initiations only: whatever else is in a run is not the buckets' to drop
                self._initiation_run_received(run, address, segment, now)
                continue
            if segment >= DATA_HEADER_LEN:
                if run[4:8] == self._node_id_bytes:
                    if run[0] == TYPE_FRAGMENT:
                        span = run_span(run, segment)
                        if span is not None:
                            try:
                                self._span_received(run, span, address, now)
                            except BadPacket as exc:
                                self.drops[exc.reason] += 1
                            continue
                elif self._relayed_run(run, address, segment):
                    continue
            self.datagrams_received([(datagram, address) for datagram in datagrams_of(run, segment)], now)

    def _initiation_run_received(self, run: bytes, address: Address, segment: int, now: float) -> None:
        """A GRO run of initiations from one host while under load (a flood, most likely):
        what its host's bucket has no token for is dropped whole, unparsed."""
        count = -(-len(run) // segment)
        allowed = self.cookies.arrivals_allowed(address[0], count, now)
        if allowed < count:
            self.drops[DropReason.RATE_LIMITED] += count - allowed
        if allowed:
            datagrams = datagrams_of(run[: allowed * segment], segment)
            self._outside([(datagram, address) for datagram in datagrams], now, counted=True)

    def _relayed_run(self, run: bytes, address: Address, segment: int) -> bool:
        """Relay a run of datagrams all for the same other member as one run; False when
        it is not such a run or cannot be relayed (then each datagram is handled alone)."""
        hops = run[1]
        target = self.peers.get(int.from_bytes(run[4:8], "big"))
        if hops <= 1 or target is None or address not in self._member_addresses or self._revoked:
            return False  # (with revocations, each datagram's source is checked on its own)
        next_address = self._address_for(target)
        if next_address is None or next_address == address:
            return False
        count = -(-len(run) // segment)
        if run[2:4] != b"\0\0" or len(run) - (count - 1) * segment < DATA_HEADER_LEN:
            return False  # flags are 0, the last datagram has a whole header: as _relay checks
        for at in range(8):  # type, hop limit, flags, destination: the same in every datagram
            if run[at::segment] != bytes((run[at],)) * count:
                return False
        out = bytearray(run)
        out[1::segment] = bytes((hops - 1,)) * count  # every hop limit, in one step
        self._runs_out.append((out, next_address, segment))
        self.relayed_packets += count
        self.relayed_bytes += len(run)
        return True

    def _relay(self, datagram: bytes, dst: int, src: int, hops: int, address: Address) -> None:
        """Forward a datagram for another member on its outer header, never decrypting.

        Only members relay through us: the datagram must come from a member's endpoint,
        and never from or for a revoked one.
        """
        if address not in self._member_addresses:
            raise BadPacket(DropReason.WRONG_DESTINATION, "not from a member")
        if src in self._revoked:
            raise BadPacket(DropReason.REVOKED, str(src))
        if hops <= 1:
            raise BadPacket(DropReason.HOP_LIMIT_EXCEEDED)
        target = self.peers.get(dst)
        if target is None:
            raise BadPacket(DropReason.NO_ROUTE, str(dst))
        next_address = self._address_for(target)
        if next_address is None or next_address == address:
            raise BadPacket(DropReason.NO_ROUTE, str(dst))
        self._datagrams_out.append((with_hop_limit(datagram, hops - 1), next_address))
        self.relayed_packets += 1
        self.relayed_bytes += len(datagram)

    def _fragment_received(
        self, datagram: bytes, src: int, address: Address, relayed: bool, now: float
    ) -> None:
        """One piece of a message; the message is opened when its last piece is in."""
        if len(datagram) <= FRAGMENT_HEADER_LEN:
            raise BadPacket(DropReason.TOO_SHORT, "fragment")
        index, count = PIECE_HEAD.unpack_from(datagram, DATA_HEADER_LEN)
        self._span_received(datagram, (index, count, 1, datagram[FRAGMENT_HEADER_LEN:]), address, now)

    def _span_received(
        self, header: bytes, span: tuple[int, int, int, bytes], address: Address, now: float
    ) -> None:
        """Consecutive pieces of a message (core/fragments.py), ``header`` the first's."""
        src = int.from_bytes(header[8:12], "big")
        relayed = header[1] != DEFAULT_HOP_LIMIT
        first, count, pieces, joined = span
        if first == 0 and pieces == count:  # the whole message in one run: the usual case
            self._message_received(header, joined, src, address, relayed, now)
            return
        _, session, counter = self._session_of(header, src)
        if session.already_opened(counter):  # a late duplicate must not start a message again
            raise BadPacket(DropReason.REPLAYED, "fragment")
        if session.reassembly is None:
            session.reassembly = Reassembly(self.drops)
        sealed = session.reassembly.add(counter, first, count, joined, pieces)
        if sealed is not None:
            self._message_received(header, sealed, src, address, relayed, now)

    def _session_of(self, header: bytes, src: int) -> tuple[Peer, Session, int]:
        """The peer and session a DATA or FRAGMENT header names, and its counter."""
        receiver_index, counter = DATA_HEAD.unpack_from(header, OUTER.size)
        entry = self._by_index.get(receiver_index)
        if entry is None:
            raise BadPacket(DropReason.UNKNOWN_INDEX)
        peer, session = entry
        if src != peer.node_id:
            raise BadPacket(DropReason.UNKNOWN_SENDER)
        return peer, session, counter

    def _message_received(
        self, header: bytes, sealed: bytes, src: int, address: Address, relayed: bool, now: float
    ) -> None:
        """One sealed message: a DATA datagram's payload or a FRAGMENT message's joined
        pieces, ``header`` the datagram (or first piece) it came in."""
        peer, session, counter = self._session_of(header, src)
        was_confirmed = session.confirmed
        inner = session.open_sealed(header[DATA_AAD_SLICE], counter, sealed, now)
        stats = peer.stats
        stats.rx_packets += 1
        stats.rx_bytes += DATA_HEADER_LEN + len(sealed)
        stats.last_rx = now
        if not relayed and address != peer.current_endpoint:
            self._endpoint_confirmed(peer, address, now)
        if not was_confirmed:
            self._session_ready(peer, now)
        self._inner_received(peer, inner, address, relayed, now)

    def _inner_received(self, peer: Peer, inner: bytes, address: Address, relayed: bool, now: float) -> None:
        """What an opened message holds, from ``peer``: a frame, an OFFLOAD_FRAME, a
        control message or a keepalive."""
        if not inner:
            raise BadPacket(DropReason.BAD_INNER, "empty")
        kind = inner[0]
        if kind == INNER_FRAME:
            if len(inner) < 1 + ETHERNET_HEADER_LEN:
                raise BadPacket(DropReason.BAD_FRAME)
            if inner[7:9] != MAC_PREFIX:  # a member's MAC says where it is; others are learnt
                self.mac_table.learn(inner[7:13], peer.node_id, now)
            if not inner[1] & 1:  # unicast to us: keep the link (a broadcast alone does not)
                self._activate(peer, now)
            if self.tap_offload:
                self._frames_out.append(PLAIN_VNET_HDR + memoryview(inner)[1:])
            else:
                self._frames_out.append(inner[1:])
        elif kind == INNER_OFFLOAD_FRAME:
            start = 1 + VNET_HDR_LEN
            if len(inner) < start + ETHERNET_HEADER_LEN:
                raise BadPacket(DropReason.BAD_FRAME)
            vnet = inner[1:start]
            check_vnet_untrusted(vnet, len(inner) - start)
            self.mac_table.learn(inner[start + 6 : start + 12], peer.node_id, now)
            self._activate(peer, now)
            if self.tap_offload:
                self._frames_out.append(memoryview(inner)[1:])  # the kernel finishes it
            else:
                self._frames_out += software_segments(vnet, inner[start:])
        elif kind == INNER_CONTROL:
            reply_to = None if relayed else address
            self._control_received(peer, decode_control_untrusted(inner[1:]), reply_to, now)
        elif kind != INNER_KEEPALIVE:
            raise BadPacket(DropReason.BAD_INNER, str(kind))

    # -- the express lane: one small frame of a sparse flow --------------------------------

    def express_send(self, read: bytes, now: float) -> tuple[bytes, Address] | None:
        """`tap_frames_received` for a single naas0 read, in one step, when it is the
        common case of a sparse flow: a small plain unicast frame for a member whose
        link is direct and active, with a confirmed session to send on. Returns the
        datagram and where it goes, with the same counters changed as the general path
        would change; None, with nothing changed, for anything else (then the read goes
        to `tap_frames_received`).

        Why: a ping or a request after a pause finds the CPU cold, and every Python call
        on the way costs microseconds then (docs/performance.md, "The express lane").
        Nothing the general path would do is skipped: whatever needs more than sealing
        (ARP, DHCP, multicast, a MAC not a member's, a link to start, a relay, a
        fragment) is left to it. Nothing here needs the driver's timer or log either.
        """
        if self.tap_offload:
            if len(read) < _MIN_VNET_READ or read[0] & VNET_NEEDS_CSUM or read[1]:
                return None
            frame = read[VNET_HDR_LEN:]
        else:
            frame = read
        if (
            len(frame) < ETHERNET_HEADER_LEN
            or len(frame) > self._max_frame  # (so the inner message fits one datagram)
            or frame[:2] != MAC_PREFIX  # unicast to a member (a member's MAC holds its node id)
            or frame[12:14] == _ETHERTYPE_ARP
        ):
            return None
        peer = self.peers.get(int.from_bytes(frame[2:6], "big"))
        if peer is None or peer.active_until < now or not peer.direct_up or peer.relayed_via is not None:
            return None
        address = peer.current_endpoint
        sessions = peer.sessions
        session = sessions[0] if sessions else None
        if address is None or session is None or not session.confirmed or not session.usable(now):
            return None
        if frame[12:14] == _ETHERTYPE_IPV4 and frame[23] == 6:
            frame = clamp_tcp_mss(frame, self._max_mss)
        self._activate(peer, now)
        datagram = session.seal(peer.certificate.node_id, self.node_id, DEFAULT_HOP_LIMIT, _FRAME + frame)
        stats = peer.stats
        stats.tx_packets += 1
        stats.tx_bytes += len(datagram)
        return datagram, address

    def express_receive(self, datagram: bytes, address: Address, now: float) -> bytes | memoryview | None:
        """`datagrams_received` for a single datagram, in one step, when it is the common
        case: a DATA datagram straight from a member's current endpoint, on a confirmed
        session, for a link that is active. Returns what to write into naas0: a frame,
        or an empty bytes when there is nothing to write now (a drop, counted in
        ``drops``, or a message that is not a plain frame, handled as the general path
        would and left for `take_frames` and the other ``take_`` methods); None, with
        nothing changed, for anything else (then the datagram goes to
        `datagrams_received`)."""
        if (
            len(datagram) < DATA_HEADER_LEN
            or datagram[:4] != _EXPRESS_OUTER
            or datagram[4:8] != self._node_id_bytes
        ):
            return None
        receiver_index, counter = DATA_HEAD.unpack_from(datagram, OUTER.size)
        entry = self._by_index.get(receiver_index)
        if entry is None:
            return None
        peer, session = entry
        if (
            address != peer.current_endpoint
            or int.from_bytes(datagram[8:12], "big") != peer.certificate.node_id
            or not session.confirmed
            or peer.active_until < now
        ):
            return None
        try:
            inner = session.open_sealed(datagram[DATA_AAD_SLICE], counter, datagram[DATA_HEADER_LEN:], now)
        except BadPacket as exc:
            self.drops[exc.reason] += 1
            return b""
        stats = peer.stats
        stats.rx_packets += 1
        stats.rx_bytes += len(datagram)
        stats.last_rx = now
        if (
            inner[:1] == _FRAME
            and len(inner) > ETHERNET_HEADER_LEN
            and inner[7:9] == MAC_PREFIX
            and not inner[1] & 1
        ):
            self._activate(peer, now)  # unicast from a member (its MAC is not learnt: it says where it is)
            return PLAIN_VNET_HDR + memoryview(inner)[1:] if self.tap_offload else inner[1:]
        try:
            self._inner_received(peer, inner, address, False, now)
        except BadPacket as exc:
            self.drops[exc.reason] += 1
        return b""

    # -- keeping the path warm ------------------------------------------------------------

    def warm_up(self, now: float) -> bool:
        """Run a ping-sized broadcast frame through the code real frames take, on the
        loopback session: sealed by `_send_inner`, opened by `runs_received`, thrown away.

        The driver calls this while traffic flows, between sparse frames: after a few
        milliseconds asleep this code and AES-GCM's are out of the CPU's caches, and the
        next real frame would pay for bringing them back (docs/performance.md, "Idle
        latency"). Nothing leaves the node and no member's state changes: the session,
        its counters and its statistics are the loopback's own. True if the frame came
        back intact; a failure is counted in `drops` like any other.
        """
        peer, session, frame = self._loopback
        session.created_at = now  # it never expires
        datagrams, frames = self._datagrams_out, self._frames_out
        sent, written = len(datagrams), len(frames)
        self._send_inner(peer, _FRAME + frame, now)
        if len(datagrams) == sent:
            return False  # not sealed (the session cannot send): nothing to open
        datagram, address = datagrams.pop()
        self.runs_received(((datagram, address, len(datagram)),), now)
        return len(frames) > written and frames.pop() == self._local_frame(frame)

    # -- sending, and where to ----------------------------------------------------------------

    def _send_inner(self, peer: Peer, inner: bytes, now: float, address: Address | None = None) -> None:
        """Seal ``inner`` for ``peer``; to ``address`` if given (probes), else where routes say."""
        session = peer.send_session(now)
        if address is None:
            address = self._address_for(peer)
        if session is None or address is None:
            if len(peer.queue) == peer.queue.maxlen:
                self.drops[DropReason.QUEUE_FULL] += 1
            peer.queue.append(inner)
            if peer.pending is None and peer.endpoints:
                self._initiate(peer, now)
            return
        stats = peer.stats
        stats.tx_packets += 1
        if len(inner) > self._max_single_inner:  # a super-frame: pieces, in GSO runs
            segment = FRAGMENT_HEADER_LEN + self._piece_size
            for run in session.seal_runs(
                peer.node_id, self.node_id, DEFAULT_HOP_LIMIT, inner, self._piece_size
            ):
                self._runs_out.append((run, address, segment))
                stats.tx_bytes += len(run)
            return
        datagram = session.seal(peer.node_id, self.node_id, DEFAULT_HOP_LIMIT, inner)
        self._datagrams_out.append((datagram, address))
        stats.tx_bytes += len(datagram)

    def _address_for(self, peer: Peer) -> Address | None:
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

    def _endpoint_confirmed(self, peer: Peer, address: Address, now: float) -> None:
        """Authenticated traffic came straight from ``address``: reply there (roaming)."""
        if peer.current_endpoint is not None:
            self._member_addresses.pop(peer.current_endpoint, None)
        peer.current_endpoint = address
        self._member_addresses[address] = peer.node_id
        if peer.note_endpoint(address):
            self.membership.record_changed(peer, now)

    # -- NodeCore's part (core/node.py), called from here --------------------------------

    def _activate(self, peer: Peer, now: float) -> None:
        """Frames flow to or from ``peer``: keep a direct link to it for a while."""
        raise NotImplementedError

    def _initiate(self, peer: Peer, now: float) -> None:
        """Start (or restart) a handshake with ``peer``."""
        raise NotImplementedError

    def _initiation_verdict(self, datagram: bytes, address: Address, now: float, counted: bool) -> Verdict:
        """May this initiation cost a Diffie-Hellman? Raises BadPacket if not."""
        raise NotImplementedError

    def _initiation_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        raise NotImplementedError

    def _cookie_reply_received(self, datagram: bytes, now: float) -> None:
        raise NotImplementedError

    def _response_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        raise NotImplementedError

    def _session_ready(self, peer: Peer, now: float) -> None:
        """A session became usable for sending (its first message was opened)."""
        raise NotImplementedError

    def _control_received(
        self, peer: Peer, message: ControlMessage, reply_to: Address | None, now: float
    ) -> None:
        raise NotImplementedError
