"""Outside: datagrams from the underlay, relayed or opened into naas0.

Theory of operation. ``datagrams_received`` takes a batch of datagrams, ``runs_received``
the coalesced runs of UDP GRO, ``express_receive`` one datagram when it is the common
case (core/datapath.py says why). For each datagram:

1. The outer header names the destination. A datagram for another member is relayed on
   that header, never opened, and only when it comes from a member; a GRO run of
   datagrams all for one other member is relayed whole, as one GSO run.
2. For us, the type decides: INITIATION and RESPONSE go to NodeCore's handshakes (the
   initiations of a batch last, through the cookie checks, core/cookie.py); DATA is found
   by its receiver index and opened (AEAD and anti-replay).
3. FRAGMENT pieces are joined first (core/fragments.py). A GRO run holding a whole
   message is joined and opened at once; otherwise the session's Reassembly collects
   pieces until the message is whole.
4. An opened message is a frame, an OFFLOAD_FRAME, a control message (to NodeCore) or a
   keepalive. A frame passes port security and the policy (core/firewall.py), from the
   identity of the session that opened it, before its source MAC is learnt
   (core/switch.py) and it is written to naas0. Authenticated traffic straight from an
   address makes it the member's endpoint (roaming); its first message confirms a new
   session.

Malformed or unauthenticated input raises BadPacket inside; the input methods count its
DropReason and go on with the next datagram.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from naas.core.constants import MAX_HANDSHAKES_PER_BATCH
from naas.core.control_messages import decode_control_untrusted
from naas.core.fragments import FRAGMENT_HEADER_LEN, PIECE_HEAD, Reassembly, datagrams_of, run_span
from naas.core.offload import (
    PLAIN_VNET_HDR,
    VNET_HDR_LEN,
    check_vnet_untrusted,
    software_segments,
)
from naas.core.peer import Address, Peer
from naas.core.session import Session
from naas.core.wire import (
    DATA_AAD_SLICE,
    DATA_HEAD,
    DATA_HEADER_LEN,
    DEFAULT_HOP_LIMIT,
    ETH_GROUP_BYTE,
    ETH_SRC,
    ETH_SRC_PREFIX,
    ETHERNET_HEADER_LEN,
    FRAME_AT,
    INNER_CONTROL,
    INNER_FRAME,
    INNER_KEEPALIVE,
    INNER_OFFLOAD_FRAME,
    OUTER,
    OUTER_DST_NODE,
    OUTER_FIXED,
    OUTER_FLAGS,
    OUTER_HOP_LIMIT,
    OUTER_SRC_NODE,
    OUTER_TYPE,
    TYPE_COOKIE_REPLY,
    TYPE_DATA,
    TYPE_FRAGMENT,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    BadPacket,
    DropReason,
    shifted,
    with_hop_limit,
)
from naas.model.ids import MAC_PREFIX

if TYPE_CHECKING:
    from naas.core.datapath import DataPath, DataPathHooks

_FRAME = bytes((INNER_FRAME,))
_INNER_SRC = shifted(ETH_SRC, FRAME_AT)  # fields of an inner FRAME: after its kind byte
_INNER_SRC_PREFIX = shifted(ETH_SRC_PREFIX, FRAME_AT)
_INNER_GROUP_BYTE = FRAME_AT + ETH_GROUP_BYTE
_EXPRESS_OUTER = bytes((TYPE_DATA, DEFAULT_HOP_LIMIT, 0, 0))  # a DATA datagram sent straight to us, no flags
_INITIATION_TYPE = bytes((TYPE_INITIATION,))


class Outside:
    """Datagrams from the underlay (module docstring); one per DataPath."""

    def __init__(self, path: DataPath, hooks: DataPathHooks) -> None:
        self.node_id = path.node_id
        self.tap_offload = path.tap_offload
        self.drops = path.drops
        self.peers = path.peers
        self.mac_table = path.mac_table
        self.firewall = path.firewall
        self.cookies = path.cookies
        self.relayed_packets = 0
        self.relayed_bytes = 0
        self._by_index = path.by_index
        self._member_addresses = path.member_addresses
        self._node_id_bytes = path.node_id.to_bytes(4, "big")
        self._frames_out = path.frames_out
        self._runs_out = path.runs_out
        self._datagrams_out = path.datagrams_out
        self._address_for = path.address_for
        self._endpoint_confirmed = path.endpoint_confirmed
        self._activate = hooks.activate
        self._session_ready = hooks.session_ready
        self._control_received = hooks.control_received
        self._initiation_verdict = hooks.initiation_verdict
        self._initiation_received = hooks.initiation_received
        self._response_received = hooks.response_received
        self._cookie_reply_received = hooks.cookie_reply_received
        self._revoked = hooks.revoked

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
                run[OUTER_TYPE] == TYPE_INITIATION
                and self.cookies.under_load(now)
                and run[::segment] == _INITIATION_TYPE * -(-len(run) // segment)
            ):  # a run of initiations only: whatever else is in a run is not the buckets' to drop
                self._initiation_run_received(run, address, segment, now)
                continue
            if segment >= DATA_HEADER_LEN:
                if run[OUTER_DST_NODE] == self._node_id_bytes:
                    if run[OUTER_TYPE] == TYPE_FRAGMENT:
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
        hops = run[OUTER_HOP_LIMIT]
        target = self.peers.get(int.from_bytes(run[OUTER_DST_NODE], "big"))
        if hops <= 1 or target is None or address not in self._member_addresses or self._revoked():
            return False  # (with revocations, each datagram's source is checked on its own)
        next_address = self._address_for(target)
        if next_address is None or next_address == address:
            return False
        count = -(-len(run) // segment)
        if run[OUTER_FLAGS] != b"\0\0" or len(run) - (count - 1) * segment < DATA_HEADER_LEN:
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
        if src in self._revoked():
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
        src = int.from_bytes(header[OUTER_SRC_NODE], "big")
        relayed = header[OUTER_HOP_LIMIT] != DEFAULT_HOP_LIMIT
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
            if not self.firewall.inbound(peer.node_id, inner, FRAME_AT, now):
                return  # spoofed, or the policy denies it: counted
            if inner[_INNER_SRC_PREFIX] != MAC_PREFIX and not self.mac_table.learn(
                inner[_INNER_SRC], peer.node_id, now
            ):
                raise BadPacket(DropReason.SPOOFED_SOURCE, "a MAC heard at another member")
            if not inner[_INNER_GROUP_BYTE] & 1:  # unicast to us: keep the link (a broadcast alone does not)
                self._activate(peer, now)
            if self.tap_offload:
                self._frames_out.append(PLAIN_VNET_HDR + memoryview(inner)[1:])
            else:
                self._frames_out.append(inner[1:])
        elif kind == INNER_OFFLOAD_FRAME:
            start = FRAME_AT + VNET_HDR_LEN
            if len(inner) < start + ETHERNET_HEADER_LEN:
                raise BadPacket(DropReason.BAD_FRAME)
            vnet = inner[1:start]
            check_vnet_untrusted(vnet, len(inner) - start)
            if not self.firewall.inbound(peer.node_id, inner, start, now):
                return
            if not self.mac_table.learn(inner[shifted(ETH_SRC, start)], peer.node_id, now):
                raise BadPacket(DropReason.SPOOFED_SOURCE, "a MAC heard at another member")
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
            or datagram[OUTER_FIXED] != _EXPRESS_OUTER
            or datagram[OUTER_DST_NODE] != self._node_id_bytes
        ):
            return None
        receiver_index, counter = DATA_HEAD.unpack_from(datagram, OUTER.size)
        entry = self._by_index.get(receiver_index)
        if entry is None:
            return None
        peer, session = entry
        if (
            address != peer.current_endpoint
            or int.from_bytes(datagram[OUTER_SRC_NODE], "big") != peer.certificate.node_id
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
            and inner[_INNER_SRC_PREFIX] == MAC_PREFIX
            and not inner[_INNER_GROUP_BYTE] & 1
        ):
            if not self.firewall.inbound(peer.node_id, inner, FRAME_AT, now):
                return b""  # spoofed, or the policy denies it: counted
            self._activate(peer, now)  # unicast from a member (its MAC is not learnt: it says where it is)
            return PLAIN_VNET_HDR + memoryview(inner)[1:] if self.tap_offload else inner[1:]
        try:
            self._inner_received(peer, inner, address, False, now)
        except BadPacket as exc:
            self.drops[exc.reason] += 1
        return b""
