"""What a member keeps about each other member: certificate, endpoints, sessions,
the handshake in flight, frames waiting for it, link measurements and counters.

Sessions are held newest first (at most three: the one being confirmed, the one in
use, the previous one still accepted while the other side switches). The session we
send on is the newest *confirmed* one. Pure data plus small helpers; the protocol
decisions are made by NodeCore.

The direct link to a member is a state machine (``LinkState``, ``LINK_TRANSITIONS``),
driven by what NodeCore sees happen (``LinkEvent``)::

              probe_answered                     probes_missed
    DOWN -------------------------> UP -------------------------> DOWN
    IDLE -------------------------> UP -------------------------> IDLE
              probe_answered             went_idle

``UP`` means probes to its endpoint are answered: frames go straight there, and the link
is advertised in link state (core/link_state_sync.py). ``DOWN``: not answered (yet, or
any more); the routes send through another member. ``IDLE``: an on-demand link no frame
has used for a while (core/standing.py): no longer measured or advertised. ``removed``
(the member was revoked) takes any state to ``DOWN``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from naas.core.constants import (
    MAX_ENDPOINTS_PER_MEMBER,
    MAX_QUEUED_FRAMES,
    MAX_SESSIONS_PER_PEER,
)
from naas.core.handshake import InitiatorHandshake
from naas.core.loss import ReceiveLoss, SendAdaptation
from naas.core.session import Session
from naas.model.certificate import Certificate
from naas.model.ids import Endpoint

Address = tuple[str, int]


class LinkState(enum.Enum):
    DOWN = "down"
    UP = "up"
    IDLE = "idle"


class LinkEvent(enum.Enum):
    PROBE_ANSWERED = "probe_answered"  # a probe came back on the direct path
    PROBES_MISSED = "probes_missed"  # LINK_DOWN_AFTER_MISSES probes in a row were not
    WENT_IDLE = "went_idle"  # no frames for IDLE_LINK_AFTER, and not a standing link
    REMOVED = "removed"  # the network document revoked the member


LINK_TRANSITIONS: dict[tuple[LinkState, LinkEvent], LinkState] = {
    (LinkState.DOWN, LinkEvent.PROBE_ANSWERED): LinkState.UP,
    (LinkState.IDLE, LinkEvent.PROBE_ANSWERED): LinkState.UP,
    (LinkState.UP, LinkEvent.PROBE_ANSWERED): LinkState.UP,  # every answer: stays up
    (LinkState.UP, LinkEvent.PROBES_MISSED): LinkState.DOWN,
    (LinkState.UP, LinkEvent.WENT_IDLE): LinkState.IDLE,
    (LinkState.UP, LinkEvent.REMOVED): LinkState.DOWN,
    (LinkState.DOWN, LinkEvent.REMOVED): LinkState.DOWN,
    (LinkState.IDLE, LinkEvent.REMOVED): LinkState.DOWN,
}


@dataclass(slots=True)
class PendingHandshake:
    handshake: InitiatorHandshake
    local_index: int
    first_sent_at: float
    last_sent_at: float
    mac1: bytes = b""  # of the initiation sent: a cookie reply is sealed to it (core/cookie.py)
    with_cookie: bool = False  # the initiation carried a mac2


@dataclass(slots=True)
class LinkStats:
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rtt: float | None = None  # smoothed, seconds
    unanswered: int = 0  # consecutive probes without an answer
    last_rx: float | None = None
    handshakes: int = 0
    rx_lost: int = 0  # its messages that never arrived, as counted for loss reports


@dataclass(slots=True)
class Peer:
    certificate: Certificate
    endpoints: list[Address] = field(default_factory=list)  # most recent first
    current_endpoint: Address | None = None  # where authenticated packets last came from
    sessions: list[Session] = field(default_factory=list)
    pending: PendingHandshake | None = None
    last_initiation_stamp: int = 0  # largest handshake timestamp accepted (anti-replay)
    cookie: bytes | None = None  # its cookie for our address, while it is under load (core/cookie.py)
    cookie_at: float = float("-inf")
    queue: deque[bytes] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED_FRAMES))
    next_probe_at: float = 0.0
    next_attempt_at: float = 0.0  # earliest new handshake attempt (backoff)
    calling_since: float | None = None  # our initiations went unanswered since then
    attempt_backoff: float = 1.0
    probe_seq: int = 0
    greeted: bool = False  # a session_started event was logged
    link: LinkState = LinkState.DOWN  # the direct link (module docstring); changed by link_event
    direct_up: bool = False  # link is UP: a copy for the data path's per-frame checks
    relayed_via: int | None = None  # next hop while the direct link is down
    standing_score: float = 0.0  # core/standing.py: a standing link if below the threshold
    document_version: int = 0  # of the network document it holds, as far as we know (0: unknown)
    active_until: float = float("-inf")  # frames flowed recently: keep an on-demand link until then
    stats: LinkStats = field(default_factory=LinkStats)
    rx_loss: ReceiveLoss = field(default_factory=ReceiveLoss)  # what to report to it (core/loss.py)
    tx_adaptation: SendAdaptation = field(default_factory=SendAdaptation)  # cut super-frames to it?

    @property
    def node_id(self) -> int:
        return self.certificate.node_id

    @property
    def name(self) -> str:
        return self.certificate.name

    def link_event(self, event: LinkEvent) -> bool:
        """``event`` happened to the direct link: take the transition LINK_TRANSITIONS
        gives; True if the state changed. An event the table has no transition for, from
        the current state, is our own mistake and raises ValueError."""
        new = LINK_TRANSITIONS.get((self.link, event))
        if new is None:
            raise ValueError(f"link to {self.name}: no transition from {self.link.value} on {event.value}")
        changed = new is not self.link
        self.link = new
        self.direct_up = new is LinkState.UP
        return changed

    def send_session(self, now: float) -> Session | None:
        for session in self.sessions:
            if session.confirmed and session.usable(now):
                return session
        return None

    def add_session(self, session: Session) -> list[Session]:
        """Insert newest first; returns the sessions pushed out (to unindex)."""
        self.sessions.insert(0, session)
        dropped = self.sessions[MAX_SESSIONS_PER_PEER:]
        del self.sessions[MAX_SESSIONS_PER_PEER:]
        return dropped

    def expire_sessions(self, now: float) -> list[Session]:
        kept = [s for s in self.sessions if s.usable(now)]
        dropped = [s for s in self.sessions if not s.usable(now)]
        self.sessions = kept
        return dropped

    def note_endpoint(self, address: Address) -> bool:
        """Remember an endpoint (most recent first); True if it was new."""
        if self.endpoints and self.endpoints[0] == address:
            return False
        is_new = address not in self.endpoints
        if not is_new:
            self.endpoints.remove(address)
        self.endpoints.insert(0, address)
        del self.endpoints[MAX_ENDPOINTS_PER_MEMBER:]
        return is_new

    def link_up(self, now: float) -> bool:
        """A direct link: a usable session and recent probes to its endpoint answered."""
        return self.direct_up and self.send_session(now) is not None

    def public_endpoints(self) -> tuple[Endpoint, ...]:
        ordered = ([self.current_endpoint] if self.current_endpoint else []) + [
            e for e in self.endpoints if e != self.current_endpoint
        ]
        return tuple(Endpoint(host, port) for host, port in ordered[:MAX_ENDPOINTS_PER_MEMBER])
