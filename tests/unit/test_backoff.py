"""Retrying a chore that fails (daemon/backoff.py), and the agent's member cache that
cannot be written (daemon/runner.py ``_save_members``).

A full disk once made the agent spin at 100 % of a core and write 39,114 warnings in 10 s:
a failed save left the cache's deadline in the past, so the timer fired again at once.
Here the real save fails for real reasons (a path through a file, a full disk, no file
descriptors) under a simulated clock, and the tries and log lines are counted.

    simulated time   0    5   15   35   75  ...     (the fault goes at 60 s)
    save tried       x    x    x    x   ok
    warning line     1                              (then at most one a minute)
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import Authority
from naas.daemon import state
from naas.daemon.backoff import Backoff, FailureReport
from naas.daemon.runner import CACHE_SAVE_INTERVAL, MAX_CACHE_SAVE_RETRY, Agent
from naas.daemon.state import NodeDir
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord

NOW = 1000.0
MAX_CALLBACKS = 10_000  # a spinning timer is cut off here (the bug made ~4,000 a second)

# -- the schedule -----------------------------------------------------------------------------


def test_a_chore_is_due_at_once_then_every_interval_while_it_works() -> None:
    backoff = Backoff(5.0)
    assert backoff.due(NOW)
    assert backoff.succeeded(NOW) == 0
    assert not backoff.due(NOW + 4.9) and backoff.due(NOW + 5.0)
    assert backoff.next_at == NOW + 5.0


def test_failures_double_the_wait_up_to_the_maximum() -> None:
    backoff = Backoff(5.0, max_interval=60.0)
    now, waits = NOW, []
    for _ in range(8):
        backoff.failed(now)
        waits.append(backoff.next_at - now)
        now = backoff.next_at
    assert waits == [5, 10, 20, 40, 60, 60, 60, 60]
    assert backoff.failures == 8


def test_the_first_failure_is_reported_then_at_most_one_line_a_minute_with_a_count() -> None:
    backoff = Backoff(5.0, max_interval=60.0, report_every=60.0)
    reports: dict[float, FailureReport | None] = {}
    for at in (0, 5, 15, 35, 75, 135, 195):  # each try when the previous back-off ended
        assert backoff.due(NOW + at)
        reports[at] = backoff.failed(NOW + at)
    assert reports[0] == FailureReport(failures=1, period=None, retry_in=5)
    assert [at for at, report in reports.items() if report is not None] == [0, 75, 135, 195]
    assert reports[75] == FailureReport(failures=4, period=75, retry_in=60)
    assert reports[135] == FailureReport(failures=1, period=60, retry_in=60)


def test_a_success_ends_the_back_off_and_says_how_many_tries_failed() -> None:
    backoff = Backoff(5.0)
    for at in (0, 5, 15):
        backoff.failed(NOW + at)
    assert backoff.succeeded(NOW + 35) == 3
    assert backoff.next_at == NOW + 40  # the normal pace again
    assert backoff.failed(NOW + 40) is None  # a line went out less than a minute ago
    assert backoff.next_at == NOW + 45  # the doubling starts over
    assert backoff.succeeded(NOW + 45) == 1


def test_a_flapping_chore_still_logs_at_most_once_a_minute() -> None:
    backoff = Backoff(5.0, report_every=60.0)
    lines = 0
    for step in range(120):  # ten minutes of fail, succeed, fail, ...
        now = NOW + 5 * step
        if step % 2:
            backoff.succeeded(now)
        else:
            lines += backoff.failed(now) is not None
    assert lines == 10


def test_reports_read_as_a_log_line_ends() -> None:
    assert FailureReport(1, None, 5.0).describe() == "next try in 5 s"
    assert FailureReport(4, 75.0, 60.0).describe() == "4 failures in the last 75 s, next try in 60 s"
    assert FailureReport(1, 60.0, 60.0).describe() == "1 failure in the last 60 s, next try in 60 s"


@pytest.mark.parametrize(("interval", "maximum"), [(0.0, 60.0), (-1.0, 60.0), (61.0, 60.0)])
def test_a_schedule_that_cannot_work_is_refused(interval: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        Backoff(interval, max_interval=maximum)


# -- the agent's member cache, on a simulated clock ---------------------------------------------


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class SimulatedLoop:
    """The event loop's clock and timers, with time that moves only in `run`."""

    def __init__(self) -> None:
        self.now = NOW
        self.timers: list[Timer] = []
        self.callbacks = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self.timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now + delay, callback)

    def run(self, until: float) -> None:
        """Fire the timers due up to ``until`` in order; at most MAX_CALLBACKS in all."""
        while self.timers and self.callbacks < MAX_CALLBACKS:
            timer = heapq.heappop(self.timers)
            if timer.cancelled:
                continue
            if timer.when > until:
                heapq.heappush(self.timers, timer)
                break
            self.now = max(self.now, timer.when)
            self.callbacks += 1
            timer.callback()
        self.now = max(self.now, until)


class Core:
    """A NodeCore at rest: a timer a second (keepalives, probes), nothing to send."""

    def __init__(self, records: list[MemberRecord]) -> None:
        self.records = records
        self.deadline = NOW + 1.0

    def timer_fired(self, now: float) -> None:
        self.deadline = now + 1.0

    def next_deadline(self) -> float:
        return self.deadline

    def member_records(self) -> list[MemberRecord]:
        return self.records

    def take_datagrams(self) -> list[Any]:
        return []

    take_runs = take_frames = take_events = take_datagrams


class Faulty:
    """The ``os`` module as the state module sees it, with one call failing."""

    def __init__(self, call: str, error: int) -> None:
        self.call, self.error = call, error

    def __getattr__(self, name: str) -> Any:
        if name == self.call:
            return self._fail
        return getattr(os, name)

    def _fail(self, *_: Any) -> Any:
        raise OSError(self.error, os.strerror(self.error))


def through_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """The state directory lies under a regular file: the kernel says ENOTDIR."""
    (tmp_path / "state").write_text("not a directory\n")

    def heal() -> None:
        (tmp_path / "state").unlink()
        (tmp_path / "state").mkdir()

    return heal


def disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    monkeypatch.setattr(state, "os", Faulty("fsync", errno.ENOSPC))
    return lambda: monkeypatch.setattr(state, "os", os)


def out_of_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    monkeypatch.setattr(state, "os", Faulty("open", errno.EMFILE))
    return lambda: monkeypatch.setattr(state, "os", os)


FAULTS = [through_a_file, disk_full, out_of_descriptors]


@pytest.fixture
def records() -> list[MemberRecord]:
    authority = Authority()
    me, peer = authority.identity("alpha", 1, "10.77.0.1/16"), authority.identity("bravo", 2, "10.77.0.2/16")
    return [MemberRecord(me.certificate), MemberRecord(peer.certificate, (Endpoint("192.0.2.2", 5640),))]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.__name__)
def test_a_member_cache_that_cannot_be_written_is_retried_slowly_and_logged_rarely(
    fault: Callable[[Path, pytest.MonkeyPatch], Callable[[], None]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    records: list[MemberRecord],
) -> None:
    node_dir = NodeDir(tmp_path / "state" / "node")
    tries: list[float] = []
    real_write_file = state.write_file

    def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
        tries.append(loop.now)
        real_write_file(path, data, mode)

    monkeypatch.setattr(state, "write_file", write_file)
    heal = fault(tmp_path, monkeypatch)
    agent = Agent(node_dir)
    loop = SimulatedLoop()
    agent._loop = loop  # type: ignore[assignment]
    agent.core = Core(records)  # type: ignore[assignment]
    agent._tap = agent._udp = object()  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="naas.agent")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    agent._members_dirty = True  # a member was learned: the cache is to be written
    agent._arm_timer(loop.now)
    loop.run(NOW + 10.0)
    assert [at - NOW for at in tries] == [0, CACHE_SAVE_INTERVAL]  # not ~40,000
    assert len(warnings()) == 1, warnings()
    assert warnings()[0].startswith("cannot save member cache: ")
    assert warnings()[0].endswith(f"(next try in {CACHE_SAVE_INTERVAL:.0f} s)")
    assert loop.callbacks <= 20  # the core's timer once a second, and the two tries

    loop.run(NOW + 60.0)  # tries at 15 and 35 s; the next is due at 75 s
    assert [at - NOW for at in tries] == [0, 5, 15, 35]
    assert len(warnings()) == 1
    assert not node_dir.path.exists() or not (node_dir.path / "members.json").exists()
    assert agent._members_dirty

    heal()  # the disk has room again
    loop.run(NOW + 200.0)
    assert [at - NOW for at in tries] == [0, 5, 15, 35, 75]  # saved once, then nothing to do
    assert len(warnings()) == 1
    assert "member cache saved again after 4 failed tries" in caplog.messages
    assert [m.certificate.name for m in node_dir.load_members()] == ["bravo"]
    assert not agent._members_dirty
    assert sorted(p.name for p in node_dir.path.iterdir()) == ["members.json"]  # no temporary file
    assert loop.callbacks <= 220


def test_the_back_off_caps_at_a_minute_and_logs_once_a_minute(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    records: list[MemberRecord],
) -> None:
    monkeypatch.setattr(state, "os", Faulty("fsync", errno.ENOSPC))
    agent = Agent(NodeDir(tmp_path / "node"))
    loop = SimulatedLoop()
    agent._loop = loop  # type: ignore[assignment]
    agent.core = Core(records)  # type: ignore[assignment]
    agent._tap = agent._udp = object()  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="naas.agent")
    agent._members_dirty = True
    agent._arm_timer(loop.now)
    hour = 3600.0
    loop.run(NOW + hour)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # tries at 0, 5, 15, 35, 75, then every MAX_CACHE_SAVE_RETRY: about one line a minute
    assert math.ceil(hour / MAX_CACHE_SAVE_RETRY) - 1 <= len(warnings) <= hour / MAX_CACHE_SAVE_RETRY + 1
    assert "(4 failures in the last 75 s, next try in 60 s)" in warnings[1]
    assert "[Errno 28]" in warnings[0]
    assert loop.callbacks <= hour + 100
    # at exit, the last try is logged whatever the minute says
    agent._save_members(force=True)
    assert caplog.records[-1].getMessage().endswith("(at exit)")
