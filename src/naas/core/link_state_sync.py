"""Link-state synchronisation: every member's copy of everyone's signed links, kept the
same by flooding and by anti-entropy, without I/O.

Theory of operation. LinkStateSync owns this member's MeshRoutes (core/mesh_routes.py)
and the messages that keep link-state databases in step (``lsd``, ``lsd_req``,
``lsd_sum``, ``lsd_digest``; core/control_messages.py). NodeCore keeps the sessions and
the probes: it says when the live direct links may have changed
(``update_local_links``), when a session became usable (``session_started``), hands
over the lsd messages it receives (``message_received``) and calls ``timer_fired``
from its own timer. Messages go only to peers with a session to send on (NodeCore's
``session_peers``); this module never starts a handshake.

Own links. The live direct links (a session to send on, probes answered, an RTT; at
most MAX_LINKS, the nearest) go to the routes at once. A lost link is advertised at once
(``urgent``); new links and cost changes at most every LINK_STATE_BATCH_INTERVAL, so
links coming up together, and the links of a (re)start, share one signed delta.

Flooding. A delta of ours goes to every member we have a session with (direct or
relayed). A delta new to us goes on to them too, but skips those that already have it:
the origin, its live neighbours (the origin sent them its own), and, if the sender
passed it on in a flood, the sender's live neighbours (it sent them too, or skipped
them for the same reasons, back to the origin). In a full mesh nothing is passed on at
all; in a sparse one each member hears a delta about once; after a cut, the far side
still hears about it. A delta of ours from an earlier life of this member (a higher
seq) is outrun by a new full delta, sent to everyone. A gap in an origin's seqs asks the
sender for that origin's signed history (``lsd_req``). A bad signature is counted as a
BAD_CONTROL drop; deltas of origins we do not know as members are ignored (their
certificates come by gossip).

Anti-entropy, hash first. Every LINK_STATE_DIGEST_INTERVAL to one random peer, and on
every new session to that peer, a member sends a 16-byte hash of its (origin, seq) list
(``lsd_sum``). Only when the hashes differ does the receiver send the list itself
(``lsd_digest``). The receiver of a digest pushes the signed histories of every origin
it holds newer, and, if the sender holds some newer, answers with its own digest
(``reply`` set: a reply is never answered). Where our view of the links was stale and a
flood missed someone, this mends it. Deltas travel packed in order into messages well
under MAX_CONTROL_BYTES.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from naas.core.constants import LINK_STATE_BATCH_INTERVAL, LINK_STATE_DIGEST_INTERVAL
from naas.core.control_messages import (
    MAX_DELTAS_PER_MESSAGE,
    MAX_DIGEST_ENTRIES,
    ControlMessage,
    LinkState,
    LinkStateDigest,
    LinkStateRequest,
    LinkStateSum,
    encode_control,
)
from naas.core.mesh_routes import MeshRoutes
from naas.core.peer import Peer
from naas.core.routing import MAX_LINKS, ApplyResult, LinkStateDelta
from naas.core.wire import DropReason

LINK_STATE_MESSAGE_BYTES = 24_000  # packing budget of one lsd message (limit: MAX_CONTROL_BYTES)

LinkStateMessage = LinkState | LinkStateRequest | LinkStateDigest | LinkStateSum


class LinkStateSync:
    def __init__(
        self,
        node_id: int,
        signing_private: bytes,
        signing_public: bytes,
        *,
        first_seq: int,
        now: float,
        session_peers: Callable[[float], Iterable[Peer]],
        random_session_peer: Callable[[float], Peer | None],
        signing_key_of: Callable[[int], bytes | None],
        send_inner: Callable[[Peer, bytes, float], None],
        drops: Counter[DropReason],
    ) -> None:
        """``session_peers(now)``: the peers with a session to send on, in a stable order;
        ``random_session_peer(now)``: one of them, at random; ``signing_key_of(node)``: a
        member's Ed25519 public key, None for a node that is not a known member;
        ``send_inner(peer, inner, now)``: seal an inner payload for ``peer``; ``drops``:
        the node's drop counters."""
        self.node_id = node_id
        self._signing_public = signing_public
        self.routes = MeshRoutes(node_id, signing_private, first_seq=first_seq)
        self._session_peers = session_peers
        self._random_session_peer = random_session_peer
        self._signing_key_of = signing_key_of
        self._send_inner = send_inner
        self._drops = drops
        self._next_delta_at = now + LINK_STATE_BATCH_INTERVAL  # the links of a (re)start share one delta
        self._next_digest_at = now + LINK_STATE_DIGEST_INTERVAL

    # -- events from NodeCore -------------------------------------------------------------------

    def session_started(self, peer: Peer, now: float) -> None:
        """A new session with ``peer`` (a first meeting, a rekey, a return after a
        partition): compare link state, 16 bytes; a digest exchange follows if it differs."""
        self._send_control(peer, LinkStateSum(self.routes.summary()), now)

    def message_received(self, sender: Peer, message: LinkStateMessage, now: float) -> None:
        if isinstance(message, LinkState):
            self.deltas_received(sender, message, now)
        elif isinstance(message, LinkStateSum):
            if message.hash != self.routes.summary():
                self._send_control(
                    sender, LinkStateDigest(tuple(self.routes.seqs()[:MAX_DIGEST_ENTRIES])), now
                )
        elif isinstance(message, LinkStateDigest):
            self._digest_received(sender, message, now)
        else:
            self.send_deltas(sender, self.routes.history(message.origin), now)

    def timer_fired(self, now: float) -> float:
        """Advertise batched link changes that are due, and send the periodic ``lsd_sum``;
        returns when the timer is next needed here."""
        self.update_local_links(now)
        if now >= self._next_digest_at:
            self._next_digest_at = now + LINK_STATE_DIGEST_INTERVAL
            chosen = self._random_session_peer(now)
            if chosen is not None:  # anti-entropy: do we hold the same link state?
                self._send_control(chosen, LinkStateSum(self.routes.summary()), now)
        due = self._next_digest_at
        if self._next_delta_at > now:  # a batched link-up may be waiting for it
            due = min(due, self._next_delta_at)
        return due

    def update_local_links(self, now: float, urgent: bool = False) -> None:
        """Tell the routes which direct links are alive; flood our delta if they changed.

        A lost link is advertised at once (``urgent``); new links and cost changes at
        most every LINK_STATE_BATCH_INTERVAL, so links coming up together cost one delta.
        """
        live = {
            peer.node_id: max(1, int(peer.stats.rtt * 1_000_000))
            for peer in self._session_peers(now)
            if peer.direct_up and peer.stats.rtt is not None
        }
        if len(live) > MAX_LINKS:  # a delta holds at most MAX_LINKS: advertise the nearest ones
            live = dict(sorted(live.items(), key=lambda item: (item[1], item[0]))[:MAX_LINKS])
        advertise = urgent or now >= self._next_delta_at
        delta = self.routes.links_measured(live, advertise=advertise)
        if delta is not None:
            self._next_delta_at = now + LINK_STATE_BATCH_INTERVAL
            self._flood((delta,), now)

    # -- receiving ----------------------------------------------------------------------------

    def deltas_received(self, sender: Peer, message: LinkState, now: float) -> None:
        """Apply signed deltas and flood what was new to everyone else; ask on a gap."""
        fresh = []
        for delta in message.deltas:
            if delta.origin == self.node_id:
                newer = self.routes.own_delta_seen(delta, self._signing_public)
                if newer is not None:  # ours, to everyone: not the sender's flood
                    self._flood((newer,), now)
                continue
            signing_public = self._signing_key_of(delta.origin)
            if signing_public is None:
                continue  # not a member we know (yet): its certificate will come by gossip
            result = self.routes.received(delta, signing_public)
            if result is None:
                self._drops[DropReason.BAD_CONTROL] += 1
            elif result is ApplyResult.APPLIED:
                fresh.append(delta)
            elif result is ApplyResult.GAP:
                self._send_control(sender, LinkStateRequest(delta.origin), now)
        if fresh:
            self._flood(tuple(fresh), now, sender.node_id, message.flooded)

    def _digest_received(self, sender: Peer, digest: LinkStateDigest, now: float) -> None:
        """Send the history of every origin we hold newer than the sender; if the sender
        holds some newer, answer with our digest (unless this is an answer)."""
        theirs = dict(digest.seqs)
        push: list[LinkStateDelta] = []
        for origin, seq in self.routes.seqs():
            if seq > theirs.get(origin, 0):
                push += self.routes.history(origin)
        if push:
            self.send_deltas(sender, push, now)
        database = self.routes.database
        lacking = any(
            seq > (database.seq_of(origin) or 0)
            and (self._signing_key_of(origin) is not None or origin == self.node_id)
            for origin, seq in digest.seqs
        )
        if lacking and not digest.reply:
            self._send_control(
                sender, LinkStateDigest(tuple(self.routes.seqs()[:MAX_DIGEST_ENTRIES]), True), now
            )

    # -- sending ------------------------------------------------------------------------------

    def _flood(
        self, deltas: tuple[LinkStateDelta, ...], now: float, sender: int | None = None, flooded: bool = False
    ) -> None:
        """Send deltas on to every member with a session, skipping those that already
        have them (see the module docstring)."""
        message = encode_control(LinkState(deltas, flooded=True))
        origins = [d.origin for d in deltas]
        linked = self.routes.linked
        own = self.node_id
        for peer in self._session_peers(now):
            node = peer.node_id
            if node == sender:
                continue
            if flooded and sender is not None and linked(sender, node):
                continue
            if all(node == origin or (origin != own and linked(origin, node)) for origin in origins):
                continue
            self._send_inner(peer, message, now)

    def send_deltas(self, peer: Peer, deltas: list[LinkStateDelta], now: float) -> None:
        """Signed deltas to ``peer``, packed in order into messages that stay well under
        MAX_CONTROL_BYTES (a full delta of a large mesh costs ~15 bytes per link)."""
        batch: list[LinkStateDelta] = []
        size = 0
        for delta in deltas:
            cost = 120 + 16 * len(delta.links)  # JSON bytes, an upper bound
            if batch and (size + cost > LINK_STATE_MESSAGE_BYTES or len(batch) == MAX_DELTAS_PER_MESSAGE):
                self._send_control(peer, LinkState(tuple(batch)), now)
                batch, size = [], 0
            batch.append(delta)
            size += cost
        if batch:
            self._send_control(peer, LinkState(tuple(batch)), now)

    def _send_control(self, peer: Peer, message: ControlMessage, now: float) -> None:
        if peer.send_session(now) is not None:  # never starts a handshake
            self._send_inner(peer, encode_control(message), now)
