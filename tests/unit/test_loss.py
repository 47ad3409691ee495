"""Loss-adaptive super-frames (core/loss.py): what a receiver reports, what a sender decides."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from naas.core.loss import (
    MIN_MESSAGES,
    PIECE_LOSS,
    REPORT_INTERVAL,
    SPLIT_ABOVE,
    SPLIT_HOLD,
    ReceiveLoss,
    SendAdaptation,
    datagram_loss_of,
    segments_per_piece,
    superframe_loss,
)

PIECES = 46  # a 64 KiB super-frame over a 1400-byte overlay


@dataclass
class FakeSession:
    """The two attributes ReceiveLoss reads and moves on."""

    lost: int = 0
    lost_reported: int = 0


@pytest.mark.parametrize(
    ("datagram_loss", "expected"), [(0.0, 0.0), (0.001, 0.045), (0.005, 0.206), (0.01, 0.370), (1.0, 1.0)]
)
def test_superframe_loss(datagram_loss: float, expected: float) -> None:
    assert superframe_loss(datagram_loss, PIECES) == pytest.approx(expected, abs=0.001)


def test_superframe_loss_clamps_nonsense() -> None:
    assert superframe_loss(-0.5, PIECES) == 0.0
    assert superframe_loss(2.0, PIECES) == 1.0


def test_receiver_reports_loss_once_enough_messages_came() -> None:
    loss, old, new = ReceiveLoss(), FakeSession(lost=2), FakeSession(lost=5)
    assert loss.tick(MIN_MESSAGES - 1, [old, new], 10.0) is None  # too few to judge
    assert loss.tick(MIN_MESSAGES + 36, [old, new], 10.0) == (MIN_MESSAGES + 36, 7)
    assert (old.lost_reported, new.lost_reported) == (2, 5)
    new.lost = 9
    assert loss.tick(2 * MIN_MESSAGES + 36, [old, new], 10.0 + REPORT_INTERVAL / 2) is None  # too soon
    assert loss.tick(2 * MIN_MESSAGES + 36, [old, new], 10.0 + REPORT_INTERVAL) == (MIN_MESSAGES, 4)


def test_receiver_reports_nothing_on_a_clean_link_and_starts_over() -> None:
    loss, session = ReceiveLoss(), FakeSession()
    assert loss.tick(1000, [session], 1.0) is None
    session.lost = 1
    assert loss.tick(1000 + MIN_MESSAGES, [session], 1.0 + REPORT_INTERVAL) == (MIN_MESSAGES, 1)


def test_late_messages_never_make_a_negative_report() -> None:
    loss, session = ReceiveLoss(), FakeSession(lost=3)
    assert loss.tick(MIN_MESSAGES, [session], 0.0) == (MIN_MESSAGES, 3)
    session.lost = 1  # two of them came late
    assert loss.tick(2 * MIN_MESSAGES, [session], REPORT_INTERVAL) is None


def test_sender_cuts_when_super_frames_are_lost_and_resumes_after_the_hold() -> None:
    adaptation = SendAdaptation()
    assert not adaptation.report(opened=950, lost=50, pieces=PIECES, now=0.0)  # 5 %: keep them whole
    assert not adaptation.cutting(0.0)
    assert adaptation.report(opened=800, lost=200, pieces=PIECES, now=1.0)  # 20 %: cut
    assert adaptation.cutting(1.0) and adaptation.cutting(1.0 + SPLIT_HOLD - 0.01)
    assert not adaptation.cutting(1.0 + SPLIT_HOLD)
    assert adaptation.splits == 1


@pytest.mark.parametrize(
    ("datagram_loss", "segments"),
    [(0.0, 45), (0.001, 45), (0.003, 17), (0.005, 10), (0.01, 5), (0.02, 2), (0.03, 1), (0.2, 1), (1.0, 1)],
)
def test_pieces_hold_as_many_segments_as_keep_their_loss_under_the_target(
    datagram_loss: float, segments: int
) -> None:
    assert segments_per_piece(datagram_loss, PIECES) == segments
    assert segments == 1 or superframe_loss(datagram_loss, segments) <= PIECE_LOSS
    assert segments == PIECES - 1 or superframe_loss(datagram_loss, segments + 1) > PIECE_LOSS


def test_datagram_loss_of_undoes_superframe_loss() -> None:
    for pieces in (1, 5, 46):
        assert datagram_loss_of(superframe_loss(0.01, pieces), pieces) == pytest.approx(0.01)
    assert datagram_loss_of(-1.0, 46) == 0.0 and datagram_loss_of(2.0, 46) == 1.0


def test_sender_judges_the_datagram_loss_from_the_pieces_it_sends() -> None:
    adaptation = SendAdaptation()
    assert adaptation.cut_size(0.0) == 0
    adaptation.report(opened=630, lost=370, pieces=PIECES, now=0.0)  # 37 % of super-frames: 1 % of datagrams
    assert adaptation.cut_size(0.0) == 5
    # Pieces of 5 datagrams, 4.9 % of them lost: still 1 %, 37 % of super-frames. Extended.
    assert not adaptation.report(opened=951, lost=49, pieces=PIECES, now=5.0)  # not a new cut
    assert adaptation.cut_size(5.0 + SPLIT_HOLD - 0.01) == 5
    # 0.5 % of pieces of 5 is 0.1 % of datagrams, 4.5 % of super-frames: not extended.
    assert superframe_loss(0.001, PIECES) < SPLIT_ABOVE
    adaptation.report(opened=995, lost=5, pieces=PIECES, now=6.0)
    assert adaptation.cut_size(5.0 + SPLIT_HOLD) == 0
    assert adaptation.splits == 1


def test_heavy_loss_cuts_single_segments_and_judges_them_as_datagrams() -> None:
    adaptation = SendAdaptation()
    adaptation.report(
        opened=100, lost=900, pieces=PIECES, now=0.0
    )  # 90 % of super-frames: 4.9 % of datagrams
    assert adaptation.cut_size(0.0) == 1
    adaptation.report(opened=995, lost=5, pieces=PIECES, now=1.0)  # single segments: 0.5 %
    assert adaptation.cut_size(1.0) == 10


def test_probes_sent_into_the_void_are_taken_off_the_next_report() -> None:
    adaptation = SendAdaptation()
    adaptation.blind_sent = 30  # probes to a direct link that is down
    assert not adaptation.report(opened=64, lost=30, pieces=PIECES, now=0.0)  # all 30 were probes
    assert adaptation.blind_sent == 0 and not adaptation.cutting(0.0)
    adaptation.blind_sent = 5
    assert adaptation.report(opened=64, lost=30, pieces=PIECES, now=1.0)  # 25 were frames: 28 %
    assert adaptation.cutting(1.0)


def test_empty_report_changes_nothing() -> None:
    adaptation = SendAdaptation()
    assert not adaptation.report(opened=0, lost=0, pieces=PIECES, now=0.0)
    assert not adaptation.cutting(0.0)
