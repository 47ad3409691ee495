"""Handshakes: NodeCore's Noise IK initiations and responses, and their flood protection.

Theory of operation. NodeCore (core/node.py) inherits this class; the state is
NodeCore's, and what it sends goes out through the data path (core/datapath.py). A member with no
session to send on calls ``_initiate``: a fresh Noise IK initiation (core/handshake.py)
carrying a strictly increasing timestamp and the member's certificate, its MACs filled
in (core/cookie.py: mac2 when the responder gave us a cookie lately), sent to every
endpoint the peer is known at and, while the direct link is down, through the next hop.

On the responder, the data path hands the initiations of a batch to
``_initiation_verdict`` after the batch's sessions (mac1; under load the host's bucket,
mac2 or a COOKIE_REPLY), and at most MAX_HANDSHAKES_PER_BATCH of those it lets through
to ``_initiation_received``: the Noise work, then the certificate (signed by the network
CA, naming the Noise static key and the outer header's node id), then the timestamp.
The response goes back where the initiation came from; the new session stays
unconfirmed, and the peer's endpoint unmoved, until DATA on it opens
(core/outside.py, ``Outside._message_received``). The initiator's ``_response_received`` completes its
handshake and sends at once on the new session, which confirms it.
``_cookie_reply_received`` keeps a responder's cookie and sends the initiation again
with mac2.

Anything malformed or unauthenticated raises BadPacket, counted by the data path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from naas.core.cookie import COOKIE_LIFETIME, CookieResponder, Verdict, mac_key, open_cookie_reply, with_macs
from naas.core.crypto import certificate_problem
from naas.core.firewall import Firewall
from naas.core.handshake import HandshakeError, InitiatorHandshake, ResponderHandshake
from naas.core.membership_sync import MembershipSync
from naas.core.mesh_routes import MeshRoutes
from naas.core.peer import Address, Peer, PendingHandshake
from naas.core.session import Session
from naas.core.switch import MacTable
from naas.core.wire import (
    HANDSHAKE_TIMESTAMP,
    INITIATION_MIN,
    INNER_KEEPALIVE,
    BadPacket,
    DropReason,
    pack_cookie_reply,
    pack_initiation,
    pack_response,
    parse_cookie_reply_untrusted,
    parse_initiation_untrusted,
    parse_response_untrusted,
)
from naas.model.codec import CodecError, certificate_from_bytes_untrusted
from naas.model.ids import NodeId
from naas.model.network import MemberRecord, NetworkInfo

if TYPE_CHECKING:
    from naas.core.datapath import DataPath
    from naas.core.roster import LocalIdentity

_KEEPALIVE = bytes((INNER_KEEPALIVE,))


class Handshakes:
    """NodeCore's handshakes. Never made on its own: NodeCore sets up the state below."""

    # -- NodeCore's state, declared here for the methods below (see NodeCore.__init__) --
    identity: LocalIdentity
    node_id: NodeId
    drops: Counter[DropReason]
    peers: dict[int, Peer]
    mac_table: MacTable
    firewall: Firewall
    membership: MembershipSync
    routes: MeshRoutes
    datapath: DataPath  # core/datapath.py: sends what the handshakes make
    _by_index: dict[int, tuple[Peer, Session]]  # local session index -> its peer and session
    _member_addresses: dict[Address, int]  # members' direct endpoints (relay check)
    _ip_to_node: dict[IPv4Address, int]  # members' addresses (ARP answers)
    _revoked: frozenset[int]  # node ids the network document revoked (core/roster.py)
    _datagrams_out: list[tuple[bytes, Address]]  # the data path's (the same list)
    _send_inner: Callable[..., None]  # DataPath.send_inner
    _address_for: Callable[[Peer], Address | None]  # DataPath.address_for
    _endpoint_confirmed: Callable[[Peer, Address, float], None]  # DataPath.endpoint_confirmed
    network: NetworkInfo
    cookies: CookieResponder
    _random: Callable[[int], bytes]
    _wall_offset: float  # add to `now` for the wall clock (timestamps, certificate validity)
    _last_stamp: int  # the newest initiation timestamp we sent
    _prologue: bytes
    _own_cert_bytes: bytes
    _pending_by_index: dict[int, Peer]  # our handshakes in flight, by their local index
    _tracked: dict[int, Peer]  # peers the timer looks at

    def _initiate(self, peer: Peer, now: float) -> None:
        if peer.pending is not None:
            self._pending_by_index.pop(peer.pending.local_index, None)
        handshake = InitiatorHandshake(
            local_static_private=self.identity.static_private,
            remote_static_public=peer.certificate.static_public,
            prologue=self._prologue,
        )
        stamp = max(self._last_stamp + 1, int((now + self._wall_offset) * 1000))
        self._last_stamp = stamp
        message = handshake.create_initiation(
            self._random(32), HANDSHAKE_TIMESTAMP.pack(stamp) + self._own_cert_bytes
        )
        index = self._new_index()
        first = peer.pending.first_sent_at if peer.pending is not None else now
        cookie = peer.cookie if now - peer.cookie_at < COOKIE_LIFETIME else None
        datagram, mac1 = with_macs(
            pack_initiation(peer.node_id, self.node_id, index, message),
            mac_key(peer.certificate.static_public),
            cookie,
        )
        peer.pending = PendingHandshake(handshake, index, first, now, mac1, cookie is not None)
        if peer.calling_since is None:
            peer.calling_since = now
        self._pending_by_index[index] = peer
        self._tracked[peer.node_id] = peer
        targets = [peer.current_endpoint] if peer.current_endpoint else []
        targets += [e for e in peer.endpoints if e != peer.current_endpoint]
        via = self._address_for(peer) if not peer.direct_up else None
        if via is not None and via not in targets:
            targets.append(via)  # through the next hop, in case the direct path is down
        for address in targets:
            self._datagrams_out.append((datagram, address))

    def _initiation_verdict(self, datagram: bytes, address: Address, now: float, counted: bool) -> Verdict:
        """Whether an initiation may cost a Diffie-Hellman (core/cookie.py). Under load,
        one without a valid mac2 is answered with a cookie reply and dropped here."""
        if len(datagram) < INITIATION_MIN:
            raise BadPacket(DropReason.TOO_SHORT, "initiation")
        verdict = self.cookies.check(datagram, address, now, counted=counted)
        if verdict is Verdict.SEND_COOKIE:
            initiation = parse_initiation_untrusted(datagram)
            body = self.cookies.cookie_reply_body(datagram, address, now)
            reply = pack_cookie_reply(initiation.src_node, self.node_id, initiation.sender_index, body)
            self._datagrams_out.append((reply, address))
            raise BadPacket(DropReason.COOKIE_REQUIRED)
        return verdict

    def _cookie_reply_received(self, datagram: bytes, now: float) -> None:
        """A responder under load sent us a cookie: keep it, and send the initiation again
        at once, now with a mac2 that proves our address."""
        reply = parse_cookie_reply_untrusted(datagram)
        peer = self._pending_by_index.get(reply.receiver_index)
        if peer is None or peer.pending is None or peer.node_id != reply.src_node:
            raise BadPacket(DropReason.UNKNOWN_INDEX, "cookie reply")
        peer.cookie = open_cookie_reply(peer.certificate.static_public, reply.body, peer.pending.mac1)
        peer.cookie_at = now
        if not peer.pending.with_cookie:
            self._initiate(peer, now)

    def _initiation_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        """An initiation that `_initiation_verdict` let through: the Noise handshake. The
        member's endpoint does not move here: only data on the new session, which a
        replayed initiation cannot produce, moves it (core/outside.py)."""
        initiation = parse_initiation_untrusted(datagram)
        handshake = ResponderHandshake(
            local_static_private=self.identity.static_private, prologue=self._prologue
        )
        try:
            payload = handshake.consume_initiation(initiation.noise_message)
        except HandshakeError:
            raise BadPacket(DropReason.HANDSHAKE_FAILED) from None
        if len(payload) < HANDSHAKE_TIMESTAMP.size:
            raise BadPacket(DropReason.HANDSHAKE_FAILED, "short payload")
        (stamp,) = HANDSHAKE_TIMESTAMP.unpack_from(payload)
        try:
            cert = certificate_from_bytes_untrusted(payload[HANDSHAKE_TIMESTAMP.size :])
        except CodecError:
            raise BadPacket(DropReason.BAD_CERTIFICATE, "undecodable") from None
        if (
            cert.node_id != initiation.src_node
            or cert.static_public != handshake.remote_static_public
            or cert.node_id == self.node_id
            or certificate_problem(cert, self.network.ca_public, self.network.name, now + self._wall_offset)
        ):
            raise BadPacket(DropReason.BAD_CERTIFICATE)
        if cert.node_id in self._revoked:
            raise BadPacket(DropReason.REVOKED, cert.name)
        peer = self.peers.get(cert.node_id)
        if peer is None or peer.certificate != cert:
            self._learn_member(MemberRecord(cert), now, gossip=True)
            peer = self.peers[cert.node_id]
            if peer.certificate != cert:
                raise BadPacket(DropReason.BAD_CERTIFICATE, "superseded certificate")
        if stamp <= peer.last_initiation_stamp:
            raise BadPacket(DropReason.STALE_INITIATION)
        peer.last_initiation_stamp = stamp
        index = self._new_index()
        message, keys = handshake.create_response(self._random(32), b"")
        session = Session(
            keys, local_index=index, remote_index=initiation.sender_index, is_initiator=False, now=now
        )
        self._install_session(peer, session)
        response = pack_response(peer.node_id, self.node_id, index, initiation.sender_index, message)
        self._datagrams_out.append((response, address if not relayed else self._address_for(peer) or address))

    def _response_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        response = parse_response_untrusted(datagram)
        peer = self._pending_by_index.get(response.receiver_index)
        if peer is None or peer.pending is None or peer.node_id != response.src_node:
            raise BadPacket(DropReason.UNKNOWN_INDEX)
        try:
            _payload, keys = peer.pending.handshake.consume_response(response.noise_message)
        except HandshakeError:
            raise BadPacket(DropReason.HANDSHAKE_FAILED) from None
        del self._pending_by_index[response.receiver_index]
        session = Session(
            keys,
            local_index=peer.pending.local_index,
            remote_index=response.sender_index,
            is_initiator=True,
            now=now,
        )
        peer.pending = None
        peer.attempt_backoff = 1.0
        self._install_session(peer, session)
        if not relayed:
            self._endpoint_confirmed(peer, address, now)
        had_queued = bool(peer.queue)
        self._session_ready(peer, now)  # sends what was queued: that confirms the keys too
        if not had_queued:
            self._send_inner(peer, _KEEPALIVE, now)  # confirms the keys to the responder

    def _install_session(self, peer: Peer, session: Session) -> None:
        peer.calling_since = None
        self._by_index[session.local_index] = (peer, session)
        self._tracked[peer.node_id] = peer
        for old in peer.add_session(session):
            self._by_index.pop(old.local_index, None)
        peer.stats.handshakes += 1

    def _new_index(self) -> int:
        for _ in range(16):
            index = int.from_bytes(self._random(4), "big")
            if index and index not in self._by_index and index not in self._pending_by_index:
                return index
        raise RuntimeError("cannot find a free session index")

    # -- NodeCore's part (core/node.py), called from here --------------------------------

    def _session_ready(self, peer: Peer, now: float) -> None:
        """A session became usable for sending (its first message was opened)."""
        raise NotImplementedError

    def _learn_member(
        self, record: MemberRecord, now: float, *, gossip: bool, source: int | None = None
    ) -> None:
        """A member record from an initiation, gossip or enrollment: check and keep it."""
        raise NotImplementedError
