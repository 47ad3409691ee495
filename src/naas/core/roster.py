"""Who the members are: NodeCore's member table, certificates, renewals, and the network
document with its revocations and groups.

Theory of operation. A member record (from gossip, an enrollment, a handshake's
certificate) is learned only if its certificate verifies under the network CA and its
node id is not revoked; a newer certificate (a later ``not_before``) replaces the one
held, and keeps the sessions when the keys are the same (a renewal). Our own renewed
certificate replaces our identity and is announced hash first (core/membership_sync.py).

A newer network document, signed by the CA, is taken from a PoP's store or from any
member (``document_received``): a member it newly revokes is sent the document, then
removed (sessions, endpoints, addresses, learned MACs, its direct link), and the new
version is announced to every peer with a session, hash first. Its groups replace the
certificates' (``groups_of``). A document that revokes this member sets ``revoked``: the
driver stops.

Roster is a base class of NodeCore (core/node.py), not a collaborator it is given: it
reads and changes most of what NodeCore holds (the member table and the tracked peers,
the addresses the data path checks, the MAC table, the firewall, the events, the next
deadline, our identity and the threshold of standing links), so as a part of its own it
would be handed a dozen of NodeCore's fields and hooks, and would hand its entry points
(``member_enrolled``, ``document_received``, ``groups_of``, ...) back through as many
one-line methods of NodeCore. It stays one class with NodeCore, in a module of its own;
NodeCore sets up the state declared below. The handshakes are a collaborator
(core/handshakes.py): a member that is removed or gets new keys loses its sessions and
its handshake in flight through them (``forget_sessions``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address

from naas.core.constants import MAX_ENDPOINTS_PER_MEMBER
from naas.core.crypto import certificate_problem
from naas.core.firewall import Firewall
from naas.core.handshakes import Handshakes
from naas.core.link_state_sync import LinkStateSync
from naas.core.membership_sync import MembershipSync
from naas.core.network_document import open_document_untrusted
from naas.core.peer import Address, LinkEvent, Peer
from naas.core.standing import pair_score, standing_threshold
from naas.core.switch import MacTable
from naas.core.wire import DropReason
from naas.model.certificate import Certificate
from naas.model.codec import certificate_to_bytes
from naas.model.document import DocumentError, NetworkDocument
from naas.model.ids import NodeId
from naas.model.network import MemberRecord, NetworkInfo


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    certificate: Certificate
    static_private: bytes  # X25519, never leaves this host
    signing_private: bytes  # Ed25519, never leaves this host


@dataclass(frozen=True, slots=True)
class NodeEvent:
    # member_learned | member_updated | member_revoked | peer_up | peer_down | session_started |
    # superframes_cut | document | revoked (this member)
    kind: str
    node_id: int
    name: str
    detail: str = ""


class Roster:
    """NodeCore's members and network document (a part of NodeCore: module docstring)."""

    # -- NodeCore's state, declared here for the methods below (see NodeCore.__init__) --
    identity: LocalIdentity
    node_id: NodeId
    network: NetworkInfo
    drops: Counter[DropReason]
    peers: dict[int, Peer]
    _tracked: dict[int, Peer]  # peers the timer looks at
    _member_addresses: dict[Address, int]  # members' direct endpoints (relay check)
    _ip_to_node: dict[IPv4Address, int]  # members' addresses (ARP answers)
    mac_table: MacTable
    firewall: Firewall
    membership: MembershipSync
    link_state: LinkStateSync
    handshakes: Handshakes
    full_mesh_up_to: int
    _standing_threshold: float
    _wall_offset: float  # add to `now` for the wall clock (certificate validity)
    _own_cert_bytes: bytes  # our certificate, encoded, for the handshakes
    document: NetworkDocument | None
    document_applied_at: float  # wall clock
    _revoked: frozenset[int]  # node ids the network document revokes
    revoked: bool  # this member is revoked: the driver stops
    _events: list[NodeEvent]
    _link_was_up: dict[int, bool]
    _next_deadline: float

    # -- membership -----------------------------------------------------------------------------

    def member_enrolled(self, certificate: Certificate, now: float) -> None:
        """A PoP issued ``certificate``: tell the mesh."""
        if certificate.node_id == self.node_id:
            self.certificate_renewed(certificate, now)
        else:
            self._learn_member(MemberRecord(certificate), now, gossip=True)

    def certificate_renewed(self, certificate: Certificate, now: float) -> bool:
        """Our certificate was renewed (same node id and keys, a later validity): use it
        in handshakes from now on and tell the mesh, hash first. False if it is not ours."""
        own = self.identity.certificate
        same_keys = (certificate.node_id, certificate.static_public, certificate.signing_public) == (
            own.node_id,
            own.static_public,
            own.signing_public,
        )
        if not same_keys or certificate.not_before <= own.not_before:
            return False
        identity = self.identity
        self.identity = LocalIdentity(certificate, identity.static_private, identity.signing_private)
        self._own_cert_bytes = certificate_to_bytes(certificate)
        self.membership.own_certificate_changed(certificate, now)
        self._policy_changed()
        return True

    def _learn_member(
        self, record: MemberRecord, now: float, *, gossip: bool, source: int | None = None
    ) -> None:
        cert = record.certificate
        if cert.node_id == self.node_id or cert.node_id in self._revoked:
            return
        if certificate_problem(cert, self.network.ca_public, self.network.name, now + self._wall_offset):
            self.drops[DropReason.BAD_CERTIFICATE] += 1
            return
        peer = self.peers.get(cert.node_id)
        changed = False
        if peer is None:
            peer = Peer(cert, standing_score=pair_score(self.node_id, cert.node_id))
            self.peers[cert.node_id] = peer
            self._events.append(NodeEvent("member_learned", cert.node_id, cert.name))
            self._member_joined(peer)
            changed = True
        elif peer.certificate != cert:
            if cert.not_before < peer.certificate.not_before:
                return  # an older certificate: ignore
            if cert.static_public != peer.certificate.static_public:
                self.handshakes.forget_sessions(peer)  # new keys; a renewal keeps its sessions
            peer.certificate = cert
            self._events.append(NodeEvent("member_updated", cert.node_id, cert.name, "new certificate"))
            self.membership.table_changed()
            changed = True
        if changed:
            self.firewall.members_changed()
        if cert.ip is not None:
            self._ip_to_node[cert.ip.ip] = cert.node_id
        for endpoint in record.endpoints:
            address = endpoint.as_tuple()
            if address not in peer.endpoints and len(peer.endpoints) < MAX_ENDPOINTS_PER_MEMBER:
                peer.endpoints.append(address)  # hearsay goes after what we saw ourselves
                changed = True
                if peer.send_session(now) is None and peer.pending is None and self._wanted(peer, now):
                    peer.next_attempt_at = now
                    self._tracked[peer.node_id] = peer
                    self._next_deadline = now
        if changed and gossip:
            self.membership.record_changed(peer, now, exclude=source)

    def _member_joined(self, peer: Peer) -> None:
        """Recompute which members keep standing links (core/standing.py) now that the mesh
        has one more. The threshold only falls as the mesh grows (members are never
        forgotten), so only the newcomer can become standing; links that stop being
        standing are withdrawn by the timer once idle."""
        self.membership.table_changed()
        self._standing_threshold = standing_threshold(len(self.peers) + 1, self.full_mesh_up_to)
        if peer.standing_score < self._standing_threshold:
            self._tracked[peer.node_id] = peer

    # -- the network document -----------------------------------------------------------------

    def _document_held(self) -> tuple[int, bytes]:
        document = self.document
        return (document.version, document.body) if document is not None else (0, b"")

    def document_received(self, body: bytes, now: float, source: Peer | None = None) -> bool:
        """Apply ``body`` if it is a newer document signed by the CA; True if it was."""
        try:
            document = open_document_untrusted(body, self.network.ca_public, self.network.name)
        except DocumentError:
            self.drops[DropReason.BAD_DOCUMENT] += 1
            return False
        if self.document is not None and document.version <= self.document.version:
            return False
        self.document = document
        self.document_applied_at = now + self._wall_offset  # wall clock, for status
        self._events.append(NodeEvent("document", 0, "", f"version={document.version}"))
        self._policy_changed()
        newly_revoked = document.revoked_ids - self._revoked
        self._revoked = document.revoked_ids
        for node in sorted(newly_revoked):
            peer = self.peers.get(node)
            if peer is not None:
                self.membership.send_document(peer, now)  # before its session goes: it learns why
                self._remove_member(peer, now)
        if source is not None and source.node_id not in self._revoked:
            source.document_version = document.version
        self.membership.document_changed(now)  # the table without the revoked: peers compare it
        if self.node_id in self._revoked and not self.revoked:
            self.revoked = True
            self._events.append(NodeEvent("revoked", self.node_id, self.identity.certificate.name))
        return True

    def _remove_member(self, peer: Peer, now: float) -> None:
        """Forget a revoked member: sessions, endpoints, addresses, learned MACs, links."""
        self.handshakes.forget_sessions(peer)
        node = peer.node_id
        del self.peers[node]
        self._tracked.pop(node, None)
        self._link_was_up.pop(node, None)
        for address in [a for a, n in self._member_addresses.items() if n == node]:
            del self._member_addresses[address]
        for ip in [ip for ip, n in self._ip_to_node.items() if n == node]:
            del self._ip_to_node[ip]
        self.mac_table.forget_node(node)
        self.firewall.member_removed(node)
        self.membership.table_changed()
        self._events.append(NodeEvent("member_revoked", node, peer.name))
        was_up = peer.direct_up
        peer.link_event(LinkEvent.REMOVED)
        if was_up:
            self.link_state.update_local_links(now, urgent=True)

    def groups_of(self, cert: Certificate) -> tuple[str, ...]:
        """A member's groups: the document's, else its certificate's."""
        if self.document is None:
            return cert.groups
        return self.document.groups_of(cert.node_id, cert.groups)

    def member_records(self) -> list[MemberRecord]:
        own = MemberRecord(self.identity.certificate)
        return [own] + [MemberRecord(p.certificate, p.public_endpoints()) for p in self.peers.values()]

    # -- NodeCore's part (core/node.py), called from here --------------------------------

    def _policy_changed(self) -> None:
        """The document or our identity changed: tell the firewall (core/firewall.py)."""
        raise NotImplementedError

    def _wanted(self, peer: Peer, now: float) -> bool:
        """Whether a direct link to ``peer`` is kept (standing, or frames flowed lately)."""
        raise NotImplementedError
