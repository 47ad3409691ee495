"""Loss-adaptive super-frames (core/loss.py): what a receiver reports, what a sender decides."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from naas.core.loss import (
    MIN_MESSAGES,
    REPORT_INTERVAL,
    SPLIT_ABOVE,
    SPLIT_HOLD,
    ReceiveLoss,
    SendAdaptation,
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


def test_sender_judges_the_datagram_loss_while_cutting() -> None:
    adaptation = SendAdaptation()
    adaptation.report(opened=700, lost=300, pieces=PIECES, now=0.0)
    # cut, the messages are single datagrams: 0.5 % of them would cost 21 % of super-frames
    assert not adaptation.report(opened=995, lost=5, pieces=PIECES, now=5.0)  # extends, not a new cut
    assert adaptation.cutting(5.0 + SPLIT_HOLD - 0.01)
    # 0.1 % would cost 4.5 %: below SPLIT_ABOVE, the hold is not extended
    assert superframe_loss(0.001, PIECES) < SPLIT_ABOVE
    adaptation.report(opened=999, lost=1, pieces=PIECES, now=6.0)
    assert not adaptation.cutting(5.0 + SPLIT_HOLD)
    assert adaptation.splits == 1


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
