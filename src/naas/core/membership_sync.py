"""Membership gossip: every member learning of every other, without I/O.

Theory of operation. NodeCore keeps the member table (its ``peers``, one Peer per
member, and its own certificate) and decides what a member record means: it checks
certificates against the network CA and learns endpoints (``members`` messages go to it,
not here). MembershipSync spreads the table, with control messages
(core/control_messages.py) sent only to peers with a session to send on:

    changed record    flooded at once to every member with a session but the one it came
                      from (``record_changed``: a new member, a new certificate, a new
                      endpoint)
    members_sum       a 16-byte hash of the sorted (node id, certificate not_before) list,
                      to one random peer every GOSSIP_INTERVAL and on every new session
    members_digest    the list itself, only from a member whose hash differs

The receiver of a digest sends the records the sender lacks or holds older (ours
included, never the sender's own), MAX_MEMBERS_PER_GOSSIP to a message, and, if the
sender knows members or certificates we lack, answers with its own digest (``reply``
set: a reply is never answered). At rest a member sends one hash every GOSSIP_INTERVAL,
whatever the mesh size, and the whole table never travels. NodeCore calls
``table_changed`` whenever a member or a certificate is added or a member removed, so
that the cached list and hash are recomputed.

The network document rides on the same table, as its node 0 (DOCUMENT_NODE) with the
document's version for a certificate's not_before: members with different documents
have different hashes, a digest shows who holds the older one, and the newer side sends
the document itself (a ``doc`` message) where it would send records. A member that
takes a new document announces it hash first (``document_changed``): a ``members_sum``
to every member with a session, and only those that lack it ask, with their digest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from naas.core.constants import GOSSIP_INTERVAL, MAX_CONTROL_BYTES, MAX_MEMBERS_PER_GOSSIP
from naas.core.control_messages import (
    MAX_DIGEST_ENTRIES,
    ControlMessage,
    Document,
    Members,
    MembersDigest,
    MembersSum,
    encode_control,
    sum_of_pairs,
)
from naas.core.network_document import DOCUMENT_NODE
from naas.core.peer import Peer
from naas.model.certificate import Certificate
from naas.model.network import MemberRecord

MembershipMessage = MembersSum | MembersDigest


class MembershipSync:
    def __init__(
        self,
        own_certificate: Certificate,
        peers: Mapping[int, Peer],
        *,
        now: float,
        session_peers: Callable[[float], Iterable[Peer]],
        random_session_peer: Callable[[float], Peer | None],
        send_inner: Callable[[Peer, bytes, float], None],
        document: Callable[[], tuple[int, bytes]] = lambda: (0, b""),
    ) -> None:
        """``peers``: NodeCore's member table, read only; ``session_peers(now)``: the peers
        with a session to send on, in a stable order; ``random_session_peer(now)``: one of
        them, at random; ``send_inner(peer, inner, now)``: seal an inner payload for it;
        ``document()``: the version and body of the network document held (0: none)."""
        self._own_certificate = own_certificate
        self._document = document
        self._peers = peers
        self._session_peers = session_peers
        self._random_session_peer = random_session_peer
        self._send_inner = send_inner
        self._versions_cache: list[tuple[int, int]] | None = None  # (node, not_before), sorted
        self._summary_cache: bytes | None = None
        self._next_gossip_at = now + GOSSIP_INTERVAL

    def table_changed(self) -> None:
        """A member or a newer certificate was added to NodeCore's table."""
        self._versions_cache = self._summary_cache = None

    def versions(self) -> list[tuple[int, int]]:
        """(node, certificate not_before) of every member we know, us included, sorted."""
        if self._versions_cache is None:
            own = self._own_certificate
            versions = [(p.node_id, p.certificate.not_before) for p in self._peers.values()]
            versions.append((own.node_id, own.not_before))
            document_version = self._document()[0]
            if document_version:
                versions.append((DOCUMENT_NODE, document_version))
            self._versions_cache = sorted(versions)
        return self._versions_cache

    def summary(self) -> bytes:
        """A hash of ``versions()``: two members knowing the same table have the same one."""
        if self._summary_cache is None:
            self._summary_cache = sum_of_pairs(self.versions(), b"naas-members")
        return self._summary_cache

    # -- events from NodeCore -------------------------------------------------------------------

    def session_started(self, peer: Peer, now: float) -> None:
        """A new session with ``peer``: compare member tables, 16 bytes."""
        self._send_control(peer, MembersSum(self.summary()), now)

    def record_changed(self, changed: Peer, now: float, exclude: int | None = None) -> None:
        """Flood one changed record to every other member we have a session with."""
        record = MemberRecord(changed.certificate, changed.public_endpoints())
        message = encode_control(Members((record,)))
        for peer in self._session_peers(now):
            if peer is not changed and peer.node_id != exclude:
                self._send_inner(peer, message, now)

    def own_certificate_changed(self, certificate: Certificate, now: float) -> None:
        """Our certificate was renewed: announce it like a new document."""
        self._own_certificate = certificate
        self.document_changed(now)  # the same announcement: our entry of the table changed

    def document_changed(self, now: float) -> None:
        """We hold a newer network document: say so, hash first, to every member with a
        session; those that lack it ask with a digest, those that have it (the one that
        sent it, say) now know that we do (``Peer.document_version``)."""
        self.table_changed()
        announcement = MembersSum(self.summary())
        for peer in self._session_peers(now):  # ``exclude`` too: it learns that we have it
            self._send_control(peer, announcement, now)

    def send_document(self, peer: Peer, now: float) -> None:
        """Send our document to ``peer`` itself (a member being revoked learns it so)."""
        version, body = self._document()
        if version:
            inner = encode_control(Document(body))
            if len(inner) <= MAX_CONTROL_BYTES and peer.send_session(now) is not None:
                self._send_inner(peer, inner, now)  # (a larger one would be refused: protocol.md §12)

    def message_received(self, sender: Peer, message: MembershipMessage, now: float) -> None:
        if isinstance(message, MembersSum):
            if message.hash != self.summary():
                self._send_control(sender, MembersDigest(tuple(self.versions()[:MAX_DIGEST_ENTRIES])), now)
            else:  # the same table: the same document
                sender.document_version = self._document()[0]
        else:
            sender.document_version = dict(message.versions).get(DOCUMENT_NODE, 0)
            self._digest_received(sender, message, now)

    def timer_fired(self, now: float) -> float:
        """Send the periodic ``members_sum``; returns when the timer is next needed here."""
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + GOSSIP_INTERVAL
            chosen = self._random_session_peer(now)
            if chosen is not None:  # anti-entropy: do we know the same members?
                self._send_control(chosen, MembersSum(self.summary()), now)
        return self._next_gossip_at

    # -- internals ----------------------------------------------------------------------------

    def _digest_received(self, sender: Peer, digest: MembersDigest, now: float) -> None:
        """Send the member records the sender lacks or holds older; answer with our own
        digest (unless this is an answer) if the sender knows members we lack."""
        theirs = dict(digest.versions)
        own = self._own_certificate
        records = [MemberRecord(own)] if theirs.get(own.node_id, 0) < own.not_before else []
        records += [
            MemberRecord(p.certificate, p.public_endpoints())
            for p in self._peers.values()
            if theirs.get(p.node_id, 0) < p.certificate.not_before and p.node_id != sender.node_id
        ]
        for start in range(0, len(records), MAX_MEMBERS_PER_GOSSIP):
            self._send_control(sender, Members(tuple(records[start : start + MAX_MEMBERS_PER_GOSSIP])), now)
        if theirs.get(DOCUMENT_NODE, 0) < self._document()[0]:
            self.send_document(sender, now)
        ours = dict(self.versions())
        if not digest.reply and any(version > ours.get(node, 0) for node, version in digest.versions):
            self._send_control(sender, MembersDigest(tuple(self.versions()[:MAX_DIGEST_ENTRIES]), True), now)

    def _send_control(self, peer: Peer, message: ControlMessage, now: float) -> None:
        if peer.send_session(now) is not None:  # never starts a handshake
            self._send_inner(peer, encode_control(message), now)
