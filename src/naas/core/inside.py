"""Inside: frames read from naas0, to the members they are for.

Theory of operation. ``frames_received`` takes a batch of naas0 reads; ``express_send``
one read, when it is the common case of a sparse flow (core/datapath.py says why). For
each frame, in order:

1. With offloads every read starts with a virtio-net header (core/offload.py). A TCP
   super-frame, or a frame whose checksum is still to be done, goes as it is, as one
   OFFLOAD_FRAME, to the member its destination MAC names (cut into smaller super-frames
   or segments first when the link to it loses datagrams, core/loss.py); anything else
   loses the header and goes on as a plain frame.
2. A frame of the wrong size is dropped. ARP for a member's address and DHCP from this
   host are answered here (layer-3 networks), straight back to naas0. A TCP SYN gets its
   MSS clamped to the overlay MTU (core/ethernet.py).
3. The switch: the destination MAC picks a member (model/ids.py, core/switch.py);
   broadcast, multicast and unknown destinations are flooded to every member with a
   session (past the full-mesh size, to every member).
4. The policy's egress check (core/firewall.py): a frame its rules would drop at the
   receiver is not sent. ``express_send`` takes only frames whose flow the firewall's
   connection table already allowed (the cache-hit path of the same decision).
5. `DataPath.send_inner` seals it for the member (core/datapath.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from naas.core import arp, dhcp
from naas.core.ethernet import clamp_tcp_mss
from naas.core.offload import (
    VNET_FLAGS,
    VNET_GSO_TYPE,
    VNET_HDR_LEN,
    VNET_NEEDS_CSUM,
    check_vnet_untrusted,
    complete_checksum,
    smaller_super_frames,
    software_segments,
)
from naas.core.peer import Address
from naas.core.wire import (
    DEFAULT_HOP_LIMIT,
    ETH_DST,
    ETH_DST_NODE,
    ETH_DST_PREFIX,
    ETH_GROUP_BYTE,
    ETH_SRC,
    ETH_TYPE,
    ETHERNET_HEADER_LEN,
    FRAME_AT,
    INNER_FRAME,
    INNER_OFFLOAD_FRAME,
    IPV4_PROTOCOL,
    BadPacket,
    DropReason,
    shifted,
)
from naas.model.ids import MAC_PREFIX, NodeId, mac_for_node
from naas.model.policy import PROTO_TCP

if TYPE_CHECKING:
    from naas.core.datapath import DataPath, DataPathHooks

_FRAME = bytes((INNER_FRAME,))
_OFFLOAD_FRAME = bytes((INNER_OFFLOAD_FRAME,))
_MIN_VNET_READ = VNET_HDR_LEN + ETHERNET_HEADER_LEN
_ETHERTYPE_ARP = b"\x08\x06"
_ETHERTYPE_IPV4 = b"\x08\x00"
_VNET_ETH_TYPE = shifted(ETH_TYPE, VNET_HDR_LEN)  # fields of a naas0 read: after its virtio-net header
_VNET_IPV4_PROTOCOL = VNET_HDR_LEN + IPV4_PROTOCOL


class Inside:
    """Frames from naas0 (module docstring); one per DataPath, which it sends through."""

    def __init__(
        self, path: DataPath, hooks: DataPathHooks, dhcp_responder: dhcp.DhcpResponder | None
    ) -> None:
        self.node_id = path.node_id
        self.mac = path.mac
        self.tap_offload = path.tap_offload
        self.drops = path.drops
        self.peers = path.peers
        self.mac_table = path.mac_table
        self.firewall = path.firewall
        self._ip_to_node = path.ip_to_node
        self._dhcp = dhcp_responder
        self._max_frame = path.max_frame
        self._max_single_inner = path.max_single_inner
        self._max_mss = path.max_mss
        self._frames_out = path.frames_out
        self._send_inner = path.send_inner
        self._local_frame = path.local_frame
        self._activate = hooks.activate
        self._standing_threshold = hooks.standing_threshold
        self._own_ip = hooks.own_ip

    def frames_received(self, reads: Iterable[bytes], now: float) -> None:
        self._switch(reads, now, self.tap_offload)

    def _switch(self, reads: Iterable[bytes], now: float, vnet: bool) -> None:
        """Frames from naas0 to the members they are for; ``vnet``: each read starts with a
        virtio-net header. The common case, a small frame for a member, stays in this loop:
        each extra call costs microseconds when the CPU comes back cold (docs/performance.md)."""
        learned = self.mac_table.lookup
        peers = self.peers
        firewall = self.firewall
        for frame in reads:
            if vnet:
                if len(frame) < _MIN_VNET_READ:
                    self.drops[DropReason.BAD_FRAME] += 1
                    continue
                if (
                    frame[VNET_FLAGS] & VNET_NEEDS_CSUM or frame[VNET_GSO_TYPE]
                ):  # a checksum to do, or a super-frame
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
            multicast = frame[ETH_GROUP_BYTE] & 1
            if (
                self._dhcp is not None
                and (multicast or frame[ETH_TYPE] == _ETHERTYPE_ARP)
                and self._answered_locally(frame, multicast)
            ):
                continue
            if frame[ETH_TYPE] == _ETHERTYPE_IPV4 and frame[IPV4_PROTOCOL] == PROTO_TCP:
                frame = clamp_tcp_mss(frame, self._max_mss)
            inner = _FRAME + frame
            if multicast:
                self._flood(inner, now)
                continue
            if frame[ETH_DST_PREFIX] == MAC_PREFIX:  # a member's MAC holds its node id (model/ids.py)
                node = int.from_bytes(frame[ETH_DST_NODE], "big") or None
            else:
                node = learned(frame[ETH_DST], now)
            if node is None:
                self._flood(inner, now)
            elif node != self.node_id:
                peer = peers.get(node)
                if peer is None:
                    self.drops[DropReason.NO_ROUTE] += 1
                elif not firewall.enforcing or firewall.outbound(node, frame, 0, now):
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
                if self.firewall.enforcing and not self.firewall.outbound(node, data, VNET_HDR_LEN, now):
                    return []
                pieces = smaller_super_frames(data[:VNET_HDR_LEN], data[VNET_HDR_LEN:], cut_size)
                self._activate(peer, now)
                for piece in pieces:
                    self._send_inner(peer, _OFFLOAD_FRAME + piece, now)
                return []
        except BadPacket as exc:
            self.drops[exc.reason] += 1
            return []
        if self.firewall.enforcing and not self.firewall.outbound(node, data, VNET_HDR_LEN, now):
            return []
        if (
            not gso_type
            and data[_VNET_ETH_TYPE] == _ETHERTYPE_IPV4
            and data[_VNET_IPV4_PROTOCOL] == PROTO_TCP
        ):
            frame = data[VNET_HDR_LEN:]
            clamped = clamp_tcp_mss(frame, self._max_mss, checksum_partial=True)
            if clamped is not frame:
                data = data[:VNET_HDR_LEN] + clamped
        self._activate(peer, now)
        self._send_inner(peer, _OFFLOAD_FRAME + data, now)
        return []

    def _flood(self, inner: bytes, now: float) -> None:
        """Broadcast: to every member with a session; past the full-mesh size also to the
        others (a handshake starts, and the session lapses if no unicast follows)."""
        everyone = self._standing_threshold() < 1.0
        firewall = self.firewall
        for peer in self.peers.values():
            if (peer.send_session(now) is not None or (everyone and peer.endpoints)) and (
                not firewall.enforcing or firewall.outbound(peer.node_id, inner, FRAME_AT, now)
            ):
                self._send_inner(peer, inner, now)

    def _answered_locally(self, frame: bytes, multicast: int) -> bool:
        """ARP for members and this host's DHCP are answered here, never flooded."""
        ethertype = frame[ETH_TYPE]
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
            client_mac = frame[ETH_SRC]
            if client_mac != self.mac:
                return False  # a host bridged behind us: not ours to answer
            own_ip = self._own_ip()
            reply = self._dhcp.answer(request_dhcp, client_mac, own_ip)
            if reply is not None:
                self._frames_out.append(self._local_frame(reply))
            return True
        return False

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
            if len(read) < _MIN_VNET_READ or read[VNET_FLAGS] & VNET_NEEDS_CSUM or read[VNET_GSO_TYPE]:
                return None
            frame = read[VNET_HDR_LEN:]
        else:
            frame = read
        if (
            len(frame) < ETHERNET_HEADER_LEN
            or len(frame) > self._max_frame  # (so the inner message fits one datagram)
            or frame[ETH_DST_PREFIX] != MAC_PREFIX  # unicast to a member (a member's MAC holds its node id)
            or frame[ETH_TYPE] == _ETHERTYPE_ARP
        ):
            return None
        peer = self.peers.get(int.from_bytes(frame[ETH_DST_NODE], "big"))
        if peer is None or peer.active_until < now or not peer.direct_up or peer.relayed_via is not None:
            return None
        address = peer.current_endpoint
        sessions = peer.sessions
        session = sessions[0] if sessions else None
        if address is None or session is None or not session.confirmed or not session.usable(now):
            return None
        if not self.firewall.outbound_cached(peer.node_id, frame, 0, now):
            return None  # a flow to decide: the general path's work
        if frame[ETH_TYPE] == _ETHERTYPE_IPV4 and frame[IPV4_PROTOCOL] == PROTO_TCP:
            frame = clamp_tcp_mss(frame, self._max_mss)
        self._activate(peer, now)
        datagram = session.seal(peer.certificate.node_id, self.node_id, DEFAULT_HOP_LIMIT, _FRAME + frame)
        stats = peer.stats
        stats.tx_packets += 1
        stats.tx_bytes += len(datagram)
        return datagram, address
