"""Loss-adaptive super-frames: cut TCP super-frames into smaller ones while a link loses datagrams.

Theory of operation
-------------------
A TCP super-frame from naas0 travels as *one* sealed message cut into some 46 pieces
(core/fragments.py). Losing any piece loses the message, so a datagram loss ``p``
becomes a message loss of ``1 - (1 - p) ** 46``: 4.5 % at p = 0.1 %, 21 % at 0.5 %,
37 % at 1 %. TCP then loses whole super-frames, and their retransmissions travel as
super-frames too: through NaaS, one TCP stream fell from 1.8 Gbit/s with no loss to
0.23 Gbit/s at 0.5 % and 0.035 at 1 % (docs/performance.md, "Loss"). Sealed one
segment at a time, as a member without offloads sends, the same link carried 0.7-0.9
Gbit/s at 1 %. So the sender chooses, per member, from what the receiver
tells it.

*The receiver* counts, per member, the messages it opened (``LinkStats.rx_packets``)
and those that never arrived: the counters its replay windows jumped over and did not
see later (``Session.lost``). `ReceiveLoss.tick` runs on the node's timer; at most
every REPORT_INTERVAL, once at least MIN_MESSAGES messages arrived since the last
report, it yields ``(opened, lost)`` if something was lost; the node sends that as a
``loss`` control message. A clean link sends nothing.

*The sender* keeps a `SendAdaptation` per member. A report gives the loss of the
messages sent: whole super-frames of some 46 datagrams, or the pieces they are cut
into, of about one datagram per segment. From it the sender estimates the datagram loss
and, with ``superframe_loss``, the share of whole super-frames it would lose. At or
above SPLIT_ABOVE, super-frames to that member are cut for the next SPLIT_HOLD seconds
(core/datapath.py, ``_offload_read``); each such report starts the hold again. When the
hold runs out, super-frames are tried whole again, and the next report decides.
SPLIT_ABOVE sits where the measurements cross: 10 % of super-frames lost (a datagram
loss near 0.23 %), between 0.2 % (1.5 Gbit/s with super-frames) and 0.5 % (0.23).

The pieces are super-frames themselves, of as many segments as keep their own loss
under PIECE_LOSS (``segments_per_piece``): 5 segments at 1 % datagram loss, 17 at 0.3 %,
single segments above 2.5 %. A piece crosses with its checksum unfinished, like a whole
super-frame, and the receiver's kernel (or its software fallback) cuts it. TCP loses a
piece's segments together, which it counts as one loss, so its pace is that of
single segments; the sender seals and sends a piece, not each segment, and computes no
checksum: cutting into single segments, the checksums alone took 40 % of the sending
agent's time (docs/performance.md, "Loss"). A single segment goes as a plain frame
with its checksum finished: a header for the receiver's kernel would not fit in its
datagram.

*Probes into the void.* While its direct link to a member is down (frames go through a
relay) or in doubt (a probe went unanswered), the sender keeps probing that link, once
a second, on the session the frames use (core/node.py, ``_probe``). Those probes are
lost, and the receiver, which sees only the gaps in the counters, reports them with the
rest. They say that the direct link is down, which the sender knows already, and
nothing about the path the frames take: on a lightly used relayed link they were a
third or more of the messages, and cut super-frames to a member reached through a
relay at 0.8 instead of 4-5 Gbit/s. So the sender counts them (``blind_sent``) and
takes them off the losses of the next report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from naas.core.session import Session

REPORT_INTERVAL = 1.0  # seconds between two loss reports to one member, at least
MIN_MESSAGES = 64  # messages opened since the last report before loss is judged
SPLIT_ABOVE = 0.10  # cut super-frames once this share of them would be lost
SPLIT_HOLD = 10.0  # seconds super-frames stay cut after a report that asked for it
PIECE_LOSS = 0.05  # the share of cut pieces that may be lost, at most (segments_per_piece)


def superframe_loss(datagram_loss: float, pieces: int) -> float:
    """The share of messages of ``pieces`` datagrams lost when each is lost with ``datagram_loss``."""
    return 1.0 - (1.0 - min(max(datagram_loss, 0.0), 1.0)) ** pieces


def datagram_loss_of(message_loss: float, pieces: int) -> float:
    """The datagram loss that loses ``message_loss`` of the messages of ``pieces`` datagrams."""
    return 1.0 - math.pow(1.0 - min(max(message_loss, 0.0), 1.0), 1.0 / max(pieces, 1))


def segments_per_piece(datagram_loss: float, pieces: int) -> int:
    """How many segments a piece of a cut super-frame may hold (a segment is about a
    datagram) so that at most PIECE_LOSS of the pieces are lost; fewer than ``pieces``."""
    if datagram_loss >= PIECE_LOSS:
        return 1
    if datagram_loss <= 0.0:
        return max(pieces - 1, 1)
    fit = math.floor(math.log(1.0 - PIECE_LOSS) / math.log(1.0 - datagram_loss))
    return min(max(fit, 1), max(pieces - 1, 1))


class ReceiveLoss:
    """The receiving side: what to report to one member (module docstring)."""

    __slots__ = ("_opened_at_report", "_report_at")

    def __init__(self) -> None:
        self._opened_at_report = 0  # LinkStats.rx_packets when the last count started
        self._report_at = 0.0

    def tick(self, opened_total: int, sessions: Iterable[Session], now: float) -> tuple[int, int] | None:
        """``(opened, lost)`` since the last report when it is time to report some loss.

        ``opened_total`` is the member's cumulative count of opened messages; the
        sessions' unreported losses are taken (``Session.lost_reported`` moves on)."""
        if now < self._report_at:
            return None
        opened = opened_total - self._opened_at_report
        if opened < MIN_MESSAGES:
            return None
        lost = 0
        for session in sessions:
            session_lost = session.lost
            lost += max(session_lost - session.lost_reported, 0)
            session.lost_reported = session_lost
        self._opened_at_report = opened_total
        self._report_at = now + REPORT_INTERVAL
        return (opened, lost) if lost else None


class SendAdaptation:
    """The sending side: whether super-frames to one member are cut, and into pieces of
    how many segments (module docstring)."""

    __slots__ = ("blind_sent", "cut_until", "piece_segments", "splits")

    def __init__(self) -> None:
        self.cut_until = float("-inf")  # super-frames are cut until then
        self.piece_segments = 1  # segments per piece while they are (segments_per_piece)
        self.splits = 0  # reports that started cutting: one `superframes_cut` event each
        self.blind_sent = 0  # probes into the void since the last report (module docstring)

    def cutting(self, now: float) -> bool:
        return now < self.cut_until

    def cut_size(self, now: float) -> int:
        """Segments per piece while super-frames to the member are cut, else 0 (whole)."""
        return self.piece_segments if self.cutting(now) else 0

    def report(self, opened: int, lost: int, pieces: int, now: float) -> bool:
        """Apply a receiver's report, less the probes sent into the void since the last
        one; ``pieces``: the datagrams of a whole super-frame. True if it starts cutting
        (it was not)."""
        lost, self.blind_sent = max(lost - self.blind_sent, 0), 0
        if opened + lost <= 0:
            return False
        was_cutting = self.cutting(now)
        per_message = self.piece_segments if was_cutting else pieces
        datagram_loss = datagram_loss_of(lost / (opened + lost), per_message)
        if superframe_loss(datagram_loss, pieces) < SPLIT_ABOVE:
            return False
        self.cut_until = now + SPLIT_HOLD
        self.piece_segments = segments_per_piece(datagram_loss, pieces)
        if not was_cutting:
            self.splits += 1
        return not was_cutting
