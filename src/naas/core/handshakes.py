"""Handshakes: one member's Noise IK initiations and responses, and their flood protection.

Theory of operation. NodeCore (core/node.py) makes one Handshakes and holds it
(``handshakes``). It owns the handshakes in flight (``pending_by_index``: our
initiations by their local index; the newest timestamp sent; the prologue) and is given
its collaborators, which it shares with the rest of the node: the members (``peers``),
the session index (``by_index``, local index -> its peer and session), the peers the
timer looks at (``tracked``), the cookie responder (core/cookie.py), the data path it
sends through (core/datapath.py: ``send_inner``, ``address_for``, ``endpoint_confirmed``,
``datagrams_out``), and ``HandshakeHooks``: what lives in NodeCore and changes under it
(our certificate, the revoked members) or is NodeCore's decision (learning a member from
its certificate, a session becoming usable). It is made after the data path it sends
through, so the data path's handshake hooks (``DataPathHooks``: ``initiate``,
``initiation_verdict``, ``initiation_received``, ``response_received``,
``cookie_reply_received``) reach its methods through NodeCore. NodeCore's timer calls
``initiate`` (REKEY_TIMEOUT, a rekey) and ``forget_pending`` (REKEY_ATTEMPT_TIME), its
member table ``forget_sessions`` (new keys, a revoked member; core/roster.py).

A member with no session to send on gets ``initiate``: a fresh Noise IK initiation
(core/handshake.py, ``create_initiation``) carrying a strictly increasing timestamp and
the member's certificate, its MACs filled in (core/cookie.py: mac2 when the responder
gave us a cookie lately), sent to every endpoint the peer is known at and, while the
direct link is down, through the next hop.

On the responder, the data path hands the initiations of a batch to
``initiation_verdict`` after the batch's sessions (mac1; under load the host's bucket,
mac2 or a COOKIE_REPLY), and at most MAX_HANDSHAKES_PER_BATCH of those it lets through
to ``initiation_received``: the Noise work (``consume_initiation``), then the
certificate (signed by the network CA, naming the Noise static key and the outer
header's node id), then the timestamp. The response (``create_response``) goes back
where the initiation came from; the new session stays unconfirmed, and the peer's
endpoint unmoved, until DATA on it opens (core/outside.py, ``Outside._message_received``).
The initiator's ``response_received`` (``consume_response``) completes its handshake and
sends at once on the new session, which confirms it. ``cookie_reply_received`` keeps a
responder's cookie and sends the initiation again with mac2.

Anything malformed or unauthenticated raises BadPacket, counted by the data path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from naas.core.cookie import COOKIE_LIFETIME, CookieResponder, Verdict, mac_key, open_cookie_reply, with_macs
from naas.core.crypto import certificate_problem
from naas.core.datapath import DataPath
from naas.core.handshake import HandshakeError, InitiatorHandshake, ResponderHandshake
from naas.core.peer import Address, Peer, PendingHandshake
from naas.core.session import Session
from naas.core.wire import (
    HANDSHAKE_TIMESTAMP,
    INITIATION_MIN,
    INNER_KEEPALIVE,
    PROLOGUE_PREFIX,
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
from naas.model.network import MemberRecord, NetworkInfo

_KEEPALIVE = bytes((INNER_KEEPALIVE,))


@dataclass(frozen=True, slots=True)
class HandshakeHooks:
    """What the handshakes ask of NodeCore: facts that change under them, its decisions."""

    own_certificate: Callable[[], bytes]  # ours, encoded: it changes when renewed (core/roster.py)
    revoked: Callable[[], frozenset[int]]  # node ids the network document revokes
    learn_member: Callable[[MemberRecord, float], None]  # a certificate from an initiation
    session_ready: Callable[[Peer, float], None]  # a session became usable for sending


class Handshakes:
    """One member's handshakes (module docstring)."""

    def __init__(
        self,
        *,
        node_id: int,
        static_private: bytes,
        network: NetworkInfo,
        peers: dict[int, Peer],
        by_index: dict[int, tuple[Peer, Session]],
        tracked: dict[int, Peer],
        cookies: CookieResponder,
        datapath: DataPath,
        random_bytes: Callable[[int], bytes],
        wall_offset: float,
        hooks: HandshakeHooks,
    ) -> None:
        """``static_private``: our X25519 key (a renewed certificate keeps it);
        ``wall_offset``: add to ``now`` for the wall clock (timestamps, certificate validity)."""
        self.node_id = node_id
        self._static_private = static_private
        self.network = network
        self.peers = peers
        self.by_index = by_index  # local session index -> its peer and session
        self.tracked = tracked  # peers the timer looks at: a handshake makes one tracked
        self.cookies = cookies
        self._random = random_bytes
        self._wall_offset = wall_offset
        self._send_inner = datapath.send_inner
        self._address_for = datapath.address_for
        self._endpoint_confirmed = datapath.endpoint_confirmed
        self._datagrams_out = datapath.datagrams_out  # the data path's (the same list)
        self._own_certificate = hooks.own_certificate
        self._revoked = hooks.revoked
        self._learn_member = hooks.learn_member
        self._session_ready = hooks.session_ready
        self.prologue = PROLOGUE_PREFIX + network.name.encode()
        self.pending_by_index: dict[int, Peer] = {}  # our handshakes in flight, by their local index
        self.last_stamp = 0  # the newest initiation timestamp we sent

    # -- the initiator ----------------------------------------------------------------------

    def initiate(self, peer: Peer, now: float) -> None:
        """Start a handshake with ``peer``, or start it again under a new ephemeral key."""
        first = peer.pending.first_sent_at if peer.pending is not None else now  # of this attempt
        self.forget_pending(peer)
        handshake = InitiatorHandshake(
            local_static_private=self._static_private,
            remote_static_public=peer.certificate.static_public,
            prologue=self.prologue,
        )
        stamp = max(self.last_stamp + 1, int((now + self._wall_offset) * 1000))
        self.last_stamp = stamp
        message = handshake.create_initiation(
            self._random(32), HANDSHAKE_TIMESTAMP.pack(stamp) + self._own_certificate()
        )
        index = self.new_index()
        cookie = peer.cookie if now - peer.cookie_at < COOKIE_LIFETIME else None
        datagram, mac1 = with_macs(
            pack_initiation(peer.node_id, self.node_id, index, message),
            mac_key(peer.certificate.static_public),
            cookie,
        )
        peer.pending = PendingHandshake(handshake, index, first, now, mac1, cookie is not None)
        if peer.calling_since is None:
            peer.calling_since = now
        self.pending_by_index[index] = peer
        self.tracked[peer.node_id] = peer
        targets = [peer.current_endpoint] if peer.current_endpoint else []
        targets += [e for e in peer.endpoints if e != peer.current_endpoint]
        via = self._address_for(peer) if not peer.direct_up else None
        if via is not None and via not in targets:
            targets.append(via)  # through the next hop, in case the direct path is down
        for address in targets:
            self._datagrams_out.append((datagram, address))

    def forget_pending(self, peer: Peer) -> None:
        """Drop the handshake in flight with ``peer``, if any: its response will not be taken."""
        pending = peer.pending
        if pending is not None:
            self.pending_by_index.pop(pending.local_index, None)
            peer.pending = None

    def cookie_reply_received(self, datagram: bytes, now: float) -> None:
        """A responder under load sent us a cookie: keep it, and send the initiation again
        at once, now with a mac2 that proves our address."""
        reply = parse_cookie_reply_untrusted(datagram)
        peer = self.pending_by_index.get(reply.receiver_index)
        if peer is None or peer.pending is None or peer.node_id != reply.src_node:
            raise BadPacket(DropReason.UNKNOWN_INDEX, "cookie reply")
        peer.cookie = open_cookie_reply(peer.certificate.static_public, reply.body, peer.pending.mac1)
        peer.cookie_at = now
        if not peer.pending.with_cookie:
            self.initiate(peer, now)

    def response_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        """The answer to one of our initiations: the session it makes is ours to send on."""
        response = parse_response_untrusted(datagram)
        peer = self.pending_by_index.get(response.receiver_index)
        if peer is None or peer.pending is None or peer.node_id != response.src_node:
            raise BadPacket(DropReason.UNKNOWN_INDEX)
        try:
            _payload, keys = peer.pending.handshake.consume_response(response.noise_message)
        except HandshakeError:
            raise BadPacket(DropReason.HANDSHAKE_FAILED) from None
        del self.pending_by_index[response.receiver_index]
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

    # -- the responder ----------------------------------------------------------------------

    def initiation_verdict(self, datagram: bytes, address: Address, now: float, counted: bool) -> Verdict:
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

    def initiation_received(self, datagram: bytes, address: Address, relayed: bool, now: float) -> None:
        """An initiation that `initiation_verdict` let through: the Noise handshake. The
        member's endpoint does not move here: only data on the new session, which a
        replayed initiation cannot produce, moves it (core/outside.py)."""
        initiation = parse_initiation_untrusted(datagram)
        handshake = ResponderHandshake(local_static_private=self._static_private, prologue=self.prologue)
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
        if cert.node_id in self._revoked():
            raise BadPacket(DropReason.REVOKED, cert.name)
        peer = self.peers.get(cert.node_id)
        if peer is None or peer.certificate != cert:
            self._learn_member(MemberRecord(cert), now)
            peer = self.peers[cert.node_id]
            if peer.certificate != cert:
                raise BadPacket(DropReason.BAD_CERTIFICATE, "superseded certificate")
        if stamp <= peer.last_initiation_stamp:
            raise BadPacket(DropReason.STALE_INITIATION)
        peer.last_initiation_stamp = stamp
        index = self.new_index()
        message, keys = handshake.create_response(self._random(32), b"")
        session = Session(
            keys, local_index=index, remote_index=initiation.sender_index, is_initiator=False, now=now
        )
        self._install_session(peer, session)
        response = pack_response(peer.node_id, self.node_id, index, initiation.sender_index, message)
        self._datagrams_out.append((response, address if not relayed else self._address_for(peer) or address))

    # -- the session index ------------------------------------------------------------------

    def _install_session(self, peer: Peer, session: Session) -> None:
        peer.calling_since = None
        self.by_index[session.local_index] = (peer, session)
        self.tracked[peer.node_id] = peer
        for old in peer.add_session(session):
            self.by_index.pop(old.local_index, None)
        peer.stats.handshakes += 1

    def forget_sessions(self, peer: Peer) -> None:
        """``peer`` got new keys or is gone: drop its sessions and its handshake in flight."""
        for session in peer.sessions:
            self.by_index.pop(session.local_index, None)
        peer.sessions.clear()
        self.forget_pending(peer)

    def new_index(self) -> int:
        """A random local index no session and no handshake in flight has."""
        for _ in range(16):
            index = int.from_bytes(self._random(4), "big")
            if index and index not in self.by_index and index not in self.pending_by_index:
                return index
        raise RuntimeError("cannot find a free session index")
