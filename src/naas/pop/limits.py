"""The enrollment service's limits (docs/operations.md "Enrollment limits"), pure.

Theory of operation. pop/server.py asks two objects before it does any work for a
connection or a request: the ``ConnectionTable`` (how many connections each source, an
IPv4 address or an IPv6 /64 as ``source_of`` names it, holds open, and how many are
open in all) when a connection is accepted, and the ``FailureLimiter`` (a token bucket
of failed attempts per source) when a request's headers are in. Both are given the
time; neither does I/O, so the tests drive them with a fake clock. Every limit is a
constant of the block below, bundled as ``EnrollmentLimits`` so tests can shorten them;
``Refusal`` names each reason a request or a connection is refused, counted by the
service.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

# -- enrollment limits (docs/operations.md "Enrollment limits") -----------------------------
# Sizes: what one request may hold.
MAX_REQUEST_BYTES = 16 * 1024  # request body; larger: 413
MAX_HEADER_LINE = 4096  # bytes of the request line and of each header field; aiohttp: 400
MAX_HEADERS = 32  # header fields per request
# Time: every phase of a connection has a deadline (seconds).
TLS_HANDSHAKE_TIMEOUT = 5.0  # accept -> TLS handshake done
HEADER_TIMEOUT = 5.0  # TLS handshake done -> the first request's headers complete
BODY_TIMEOUT = 5.0  # headers complete -> body complete; else 408 and close
KEEPALIVE_TIMEOUT = 5.0  # an answer handed over -> the next request's headers complete
CONNECTION_LIFETIME = 120.0  # TLS handshake done -> cut, whatever happens (the store may wait 30 s)
TLS_SHUTDOWN_TIMEOUT = 2.0  # a closing connection waits this long for the peer's close_notify
SHUTDOWN_GRACE = 5.0  # a stopping PoP lets enrollments in progress finish this long
ACCEPT_RETRY_DELAY = 1.0  # accept() failed (out of descriptors): pause accepting this long
# Connections: with the common limit of 1,024 descriptors, one host cannot take them all.
MAX_CONNECTIONS_PER_SOURCE = 16  # open connections per IPv4 address / IPv6 /64
MAX_CONNECTIONS = 512  # open connections in all; the agent and the store need descriptors too
LISTEN_BACKLOG = 128
# Failed attempts (400, 403, 408, 413): a token bucket per source.
FAILURE_BURST = 10  # failures a source may make in a row ...
FAILURE_REFILL_SECONDS = 3.0  # ... then one more per this many seconds; meanwhile 429
MAX_TRACKED_SOURCES = 4096  # sources remembered; the least recently failed forgotten first


@dataclass(frozen=True, slots=True)
class EnrollmentLimits:
    """The limits above as one value (tests shorten the timeouts)."""

    tls_handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    connection_lifetime: float = CONNECTION_LIFETIME
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE
    max_connections: int = MAX_CONNECTIONS
    failure_burst: int = FAILURE_BURST
    failure_refill_seconds: float = FAILURE_REFILL_SECONDS
    max_tracked_sources: int = MAX_TRACKED_SOURCES


class Refusal(Enum):
    """Why a request or a connection was refused; each has a counter (``refusals``)."""

    BAD_REQUEST = "bad_request"  # 400
    INVITATION_UNKNOWN = "invitation_unknown"  # 403
    INVITATION_USED = "invitation_used"  # 403
    INVITATION_EXPIRED = "invitation_expired"  # 403
    RENEWAL_REFUSED = "renewal_refused"  # 403: a renewal whose certificate or signature does not hold
    BODY_TIMEOUT = "body_timeout"  # 408
    TOO_LARGE = "too_large"  # 413
    RATE_LIMITED = "rate_limited"  # 429
    TOO_MANY_FROM_SOURCE = "too_many_connections_from_source"  # closed at accept
    TOO_MANY_CONNECTIONS = "too_many_connections"  # closed at accept
    ACCEPT_FAILED = "accept_failed"  # accept() itself failed (out of descriptors)
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"  # failed or too slow
    HEADER_TIMEOUT = "header_timeout"  # cut
    IDLE_TIMEOUT = "idle_timeout"  # cut
    LIFETIME = "connection_lifetime"  # cut


# -- the limits' pure logic -----------------------------------------------------------------


def source_of(host: str | None) -> str:
    """The key a peer is limited under: its IPv4 address, or its IPv6 /64."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class FailureLimiter:
    """Failed attempts per source as token buckets (pure: ``now`` is passed in).

    A source starts with ``burst`` credits; each failure spends one, and credit comes
    back at one per ``refill_seconds`` up to ``burst``. With less than one credit the
    source must wait ``retry_after(source, now)`` seconds. Only failures are recorded:
    a source that never fails has no entry. A source whose bucket is full again is
    forgotten, and past ``max_sources`` entries the least recently failed is forgotten
    first (it then starts again with a full bucket), so memory stays bounded.
    """

    def __init__(self, burst: int, refill_seconds: float, max_sources: int) -> None:
        if burst < 1 or refill_seconds <= 0 or max_sources < 1:
            raise ValueError("failure limiter: burst, refill and table size must be positive")
        self._burst = burst
        self._refill = refill_seconds
        self._max = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # (credit, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, source: str, now: float) -> float:
        """0.0 if ``source`` may try now, else the seconds until it may."""
        credit = self._credit(source, now)
        return 0.0 if credit >= 1.0 else (1.0 - credit) * self._refill

    def failed(self, source: str, now: float) -> None:
        """``source`` made a failed attempt at ``now``."""
        self._buckets[source] = (max(0.0, self._credit(source, now) - 1.0), now)
        self._buckets.move_to_end(source)
        while self._buckets:
            oldest = next(iter(self._buckets))
            if len(self._buckets) <= self._max and self._credit(oldest, now) < self._burst:
                break
            del self._buckets[oldest]

    def _credit(self, source: str, now: float) -> float:
        entry = self._buckets.get(source)
        if entry is None:
            return float(self._burst)
        credit, at = entry
        return min(float(self._burst), credit + max(0.0, now - at) / self._refill)


class ConnectionTable:
    """Open connections per source and in all (pure): may one more open?"""

    def __init__(self, per_source: int, total: int) -> None:
        if per_source < 1 or total < 1:
            raise ValueError("connection table: limits must be positive")
        self._per_source = per_source
        self._total = total
        self._open: dict[str, int] = {}
        self.total = 0

    def open_from(self, source: str) -> int:
        return self._open.get(source, 0)

    def admit(self, source: str) -> Refusal | None:
        """Count one more connection from ``source``, or say why it is refused."""
        if self._open.get(source, 0) >= self._per_source:
            return Refusal.TOO_MANY_FROM_SOURCE
        if self.total >= self._total:
            return Refusal.TOO_MANY_CONNECTIONS
        self._open[source] = self._open.get(source, 0) + 1
        self.total += 1
        return None

    def release(self, source: str) -> None:
        """A connection ``admit`` counted has closed."""
        left = self._open.get(source, 0) - 1
        if left < 0:
            raise ValueError(f"connection table: no open connection from {source}")
        if left:
            self._open[source] = left
        else:
            del self._open[source]
        self.total -= 1
