"""When to try a failing chore again, and when to say so in the log. Pure: the caller
passes the time in.

The agent rewrites its member cache (members.json) every few seconds while membership
changes. When the disk is full, read-only or out of descriptors, trying again at once
only spins: a retry waits ``interval`` after the first failure and twice as long after
each next one, up to ``max_interval``. The log gets the first failure at once, then at
most one line per ``report_every`` seconds, with the number of failures since the last
line:

    time     0    5   15   35   75  135  195     (interval 5, max_interval 60, report_every 60)
    try      x    x    x    x    x    x   ok
    line     1                   4    1   "saved again after 6 failures"

A success brings the next try back to ``interval`` after it (the normal pace), and
forgets the doubling; the lines stay at most one a ``report_every``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailureReport:
    """What a log line about a failure says."""

    failures: int  # failures since the last line, this one included
    period: float | None  # seconds since the last line; None: the first line
    retry_in: float  # seconds until the next try

    def describe(self) -> str:
        """E.g. ``4 failures in the last 75 s, next try in 60 s``."""
        retry = f"next try in {self.retry_in:.0f} s"
        if self.period is None:
            return retry
        plural = "" if self.failures == 1 else "s"
        return f"{self.failures} failure{plural} in the last {self.period:.0f} s, {retry}"


class Backoff:
    """The schedule of one chore that may fail (see the module docstring)."""

    __slots__ = (
        "_delay",
        "_reported_at",
        "_unreported",
        "failures",
        "interval",
        "max_interval",
        "next_at",
        "report_every",
    )

    def __init__(self, interval: float, max_interval: float = 60.0, report_every: float = 60.0) -> None:
        if not 0 < interval <= max_interval:
            raise ValueError(f"interval {interval} and max_interval {max_interval}")
        self.interval = interval
        self.max_interval = max_interval
        self.report_every = report_every
        self.next_at = float("-inf")  # the chore is due at once
        self.failures = 0  # in a row, since the last success
        self._delay = interval
        self._unreported = 0  # failures since the last line
        self._reported_at: float | None = None

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def succeeded(self, now: float) -> int:
        """The chore worked: next due ``interval`` from now. Returns the failures in a row
        it ended (0: there were none), for a line saying it works again."""
        ended, self.failures = self.failures, 0
        self._delay = self.interval
        self.next_at = now + self.interval
        return ended

    def failed(self, now: float) -> FailureReport | None:
        """The chore failed: next due after the back-off. Returns what to log, or None
        when a line went out less than ``report_every`` ago."""
        self.failures += 1
        self._unreported += 1
        retry_in = self._delay
        self.next_at = now + retry_in
        self._delay = min(2 * self._delay, self.max_interval)
        last = self._reported_at
        if last is not None and now - last < self.report_every:
            return None
        report = FailureReport(self._unreported, None if last is None else now - last, retry_in)
        self._reported_at, self._unreported = now, 0
        return report
