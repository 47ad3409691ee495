"""Sliding anti-replay window.

counters:   ... | top-2047 ............................ top | top+1 ...
                |<------------- WINDOW (2048) ------------->|
  too old: rejected | inside: accepted once, then rejected  | ahead: accepted, slides
"""

from __future__ import annotations

import random

import pytest

from naas.core.replay import REJECT_AFTER_MESSAGES, WINDOW, ReplayWindow


class _ModelWindow:
    """The specification, spelled out with a set: slow and obviously right."""

    def __init__(self) -> None:
        self.top = -1
        self.seen: set[int] = set()

    def accept(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        if counter <= self.top - WINDOW or counter in self.seen:
            return False
        self.seen.add(counter)
        self.top = max(self.top, counter)
        return True


def test_window_size_constant() -> None:
    assert WINDOW == 2048
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13


def test_in_order_all_accepted() -> None:
    window = ReplayWindow()
    assert window.top == -1
    assert all(window.accept(counter) for counter in range(3 * WINDOW + 5))
    assert window.top == 3 * WINDOW + 4


def test_duplicates_rejected() -> None:
    window = ReplayWindow()
    for counter in range(100):
        assert window.accept(counter)
        assert not window.accept(counter)  # immediately replayed
    assert not any(window.accept(counter) for counter in range(100))  # replayed later


def test_first_counter_need_not_be_zero() -> None:
    window = ReplayWindow()
    assert window.accept(5)
    assert window.accept(0)
    assert window.accept(4)
    assert not window.accept(5)
    assert not window.accept(0)


def test_too_old_rejected_at_exact_edge() -> None:
    window = ReplayWindow()
    top = 10_000
    assert window.accept(top)
    assert not window.accept(top - WINDOW)  # just outside
    assert window.accept(top - WINDOW + 1)  # oldest counter inside: never seen
    assert not window.accept(top - WINDOW + 1)
    assert not window.accept(0)


def test_gap_inside_window_is_filled_once() -> None:
    window = ReplayWindow()
    assert window.accept(0)
    assert window.accept(1000)  # 1..999 skipped
    assert all(window.accept(counter) for counter in range(1, 1000))
    assert not any(window.accept(counter) for counter in range(0, 1001))


def test_slide_wrapping_around_the_ring() -> None:
    window = ReplayWindow()
    assert all(window.accept(counter) for counter in range(WINDOW))  # every slot used
    assert window.accept(WINDOW + 2)  # reuses the slots of 0, 1 and 2
    assert window.accept(WINDOW)  # its slot held 0: must read as unseen
    assert window.accept(WINDOW + 1)
    assert not window.accept(WINDOW + 2)
    assert not window.accept(2)  # now too old
    assert not window.accept(3)  # inside, and seen before the slide
    assert not window.accept(WINDOW - 1)


@pytest.mark.parametrize("jump", [WINDOW - 1, WINDOW, WINDOW + 1, 10**6, 2**40])
def test_big_jump_forgets_the_past(jump: int) -> None:
    window = ReplayWindow()
    assert all(window.accept(counter) for counter in range(50))
    top = 49 + jump
    assert window.accept(top)
    # 0..49 were all seen: rejected whether still inside the window or now too old.
    assert not any(window.accept(counter) for counter in range(50))
    # Every counter of the new window that was not sent yet is accepted exactly once.
    inside = range(max(50, top - WINDOW + 1), top)
    assert all(window.accept(counter) for counter in inside)
    assert not any(window.accept(counter) for counter in inside)
    assert not window.accept(top)


def test_counter_limit() -> None:
    window = ReplayWindow()
    assert window.accept(REJECT_AFTER_MESSAGES - 1)
    assert not window.accept(REJECT_AFTER_MESSAGES)
    assert not window.accept(2**64 - 1)
    assert window.top == REJECT_AFTER_MESSAGES - 1
    assert window.accept(REJECT_AFTER_MESSAGES - 2)


def test_seeded_reorder_within_window_accepted_once_each() -> None:
    rng = random.Random(20240611)
    counters = list(range(20_000))
    # Reorder by sorting on a jittered key: no packet moves more than ~WINDOW/2 places.
    arrival = sorted(counters, key=lambda c: c + rng.uniform(0, WINDOW / 2))
    assert arrival != counters
    window = ReplayWindow()
    assert all(window.accept(counter) for counter in arrival)
    assert not any(window.accept(counter) for counter in arrival[-WINDOW:])


def test_seeded_reorder_with_duplicates() -> None:
    rng = random.Random(7)
    sent = list(range(5_000))
    arrival = sent + rng.sample(sent, 2_000)  # 2000 duplicates
    arrival.sort(key=lambda c: c + rng.uniform(0, WINDOW / 4))
    window = ReplayWindow()
    accepted = [counter for counter in arrival if window.accept(counter)]
    assert sorted(accepted) == sent  # every counter exactly once


@pytest.mark.parametrize("seed", range(5))
def test_matches_model_on_random_traffic(seed: int) -> None:
    """Random mix of in-order runs, reordering, replays, jumps and stale packets."""
    rng = random.Random(seed)
    window, model = ReplayWindow(), _ModelWindow()
    next_counter = 0
    for _ in range(20_000):
        roll = rng.random()
        if roll < 0.5:
            counter = next_counter
            next_counter += 1
        elif roll < 0.8:
            counter = max(0, next_counter - rng.randrange(1, WINDOW + 64))  # late or replayed
        elif roll < 0.97:
            counter = next_counter + rng.randrange(1, 64)  # early
            next_counter = counter + 1
        else:
            counter = next_counter + rng.randrange(WINDOW - 8, 3 * WINDOW)  # big jump
            next_counter = counter + 1
        assert window.accept(counter) == model.accept(counter), counter
    assert window.top == model.top


def test_counters_jumped_over_are_skipped_until_they_come_late() -> None:
    window = ReplayWindow()
    for counter in (0, 1, 2, 6):  # 3, 4 and 5 jumped over
        assert window.accept(counter)
    assert (window.skipped, window.late) == (3, 0)
    assert window.accept(4)  # reordered: it came after all
    assert not window.accept(4)  # a duplicate counts nothing
    assert window.accept(7)  # in order again: nothing skipped
    assert (window.skipped, window.late) == (3, 1)
    assert window.accept(7 + WINDOW)  # jumps WINDOW - 1 counters
    assert not window.accept(5)  # now too old: still lost
    assert (window.skipped, window.late) == (3 + WINDOW - 1, 1)
