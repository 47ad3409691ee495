"""Handshake flood protection: MACs on initiations, cookies under load, per-source limits.

Theory of operation. A Noise initiation costs its responder two X25519 operations and,
when the Noise part holds, an Ed25519 check of the certificate inside: a few hundred
microseconds of Python. Anyone who knows a member's public key can make initiations
that get that far, and a few thousand a second used to take a member off the mesh. The
defence follows WireGuard's (whitepaper section 5.4.4); the code is ours:

1. **mac1.** Every INITIATION ends with two 16-byte MACs. ``mac1`` is a keyed BLAKE2s of
   the datagram (all but the hop limit, which relays rewrite) under a key derived from
   the *responder's* static public key. It is checked before anything else: random or
   mangled datagrams cost one hash, never a Diffie-Hellman.
2. **Load.** The responder counts the initiations that arrive. More than
   ``UNDER_LOAD_INITIATIONS`` in one second (or more than its per-batch budget, see
   core/datapath.py) puts it *under load* for ``UNDER_LOAD_HOLD`` seconds.
3. **Cookies, only under load.** Under load an initiation must also carry a valid
   ``mac2``: a MAC under a *cookie*, which is a MAC of the initiator's source address
   (host and port) under a secret the responder changes every two minutes. Without
   one, the responder spends no Diffie-Hellman: it answers with a COOKIE_REPLY, the
   cookie sealed (AES-256-GCM, random nonce) under a key derived from its own public key,
   with the initiation's mac1 as additional data, so only the initiator that sent that
   initiation can use the reply. The initiator stores the cookie (for
   ``COOKIE_LIFETIME``) and sends the initiation again at once, with mac2. A valid mac2
   proves the source address is the sender's own: it received the reply there.
4. **Per-source limits, only under load.** Every initiation from a host takes a token
   from that host's ``arrivals`` bucket (``ARRIVALS_PER_SOURCE`` a second) before any
   hash, even mac1's; one with a valid mac2 also takes one from its ``handshakes`` bucket
   (``HANDSHAKES_PER_SOURCE`` a second) before the Diffie-Hellman. An empty bucket drops
   the initiation (``rate_limited``). The arrivals bucket lets the data path drop a
   whole UDP GRO run of a flooding host with one look (``runs_received``). Buckets are
   kept for at most ``MAX_SOURCES`` hosts; the oldest is forgotten first (a forgotten
   bucket comes back full, which only forgives).

Established sessions never see any of this: DATA and FRAGMENT datagrams are opened by
their receiver index, and the data path handles them before any handshake of the same
batch. A flooding host thus costs its target one or two hashes per datagram, or nothing
per datagram of a dropped run, instead of a Diffie-Hellman.

The trade-off of keying buckets by host: a host that can forge another host's source
address can use up that host's arrivals bucket while the responder is under load, and
delay that host's *new* handshakes (not its sessions) for as long as it floods.

Pure: the clock (``now``) and the random bytes (cookie secret, nonces) are passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from naas.core import crypto
from naas.core.wire import COOKIE_NONCE_LEN, MAC_LEN, BadPacket, DropReason

# -- protocol constants -----------------------------------------------------------------------
_MAC1_LABEL = b"mac1----"
_COOKIE_LABEL = b"cookie--"
COOKIE_SECRET_LIFETIME = 120.0  # the responder's cookie secret changes this often
COOKIE_LIFETIME = COOKIE_SECRET_LIFETIME - 5.0  # an initiator uses a cookie at most this long
UNDER_LOAD_INITIATIONS = 64  # initiations in one second that mean "under load"
UNDER_LOAD_HOLD = 1.0  # seconds a responder stays under load after the last sign of it

# -- implementation limits ------------------------------------------------------------------
ARRIVALS_PER_SOURCE = 40.0  # initiations a second one host may send while we are under load
ARRIVALS_BURST = 40.0
HANDSHAKES_PER_SOURCE = 10.0  # ... of which this many, with a valid mac2, get a Diffie-Hellman
HANDSHAKES_BURST = 5.0
MAX_SOURCES = 4096  # hosts with buckets; the oldest is forgotten first

_ZERO_MAC = bytes(MAC_LEN)


class Verdict(enum.Enum):
    """What the responder does with an initiation."""

    ACCEPT = "accept"  # go on with the handshake
    SEND_COOKIE = "send_cookie"  # drop it, answer with a COOKIE_REPLY


def mac_key(static_public: bytes) -> bytes:
    """The key of mac1 for initiations to the member whose static key this is."""
    return crypto.sha256(_MAC1_LABEL + static_public)


def cookie_key(static_public: bytes) -> bytes:
    """The key a COOKIE_REPLY from that member is sealed under."""
    return crypto.sha256(_COOKIE_LABEL + static_public)


def _covered(datagram: bytes, end: int) -> bytes:
    """What a MAC covers: the datagram up to ``end``, without the hop limit (byte 1)."""
    return datagram[:1] + datagram[2:end]


def compute_mac1(key: bytes, datagram: bytes) -> bytes:
    """mac1 of an initiation whose last 32 bytes are (mac1, mac2) still to be filled."""
    return crypto.mac16(key, _covered(datagram, len(datagram) - 2 * MAC_LEN))


def compute_mac2(cookie: bytes, datagram: bytes) -> bytes:
    """mac2 of an initiation whose mac1 is filled in: covers mac1 too."""
    return crypto.mac16(cookie, _covered(datagram, len(datagram) - MAC_LEN))


def with_macs(datagram: bytes, key: bytes, cookie: bytes | None) -> tuple[bytes, bytes]:
    """An initiation (from ``wire.pack_initiation``, MACs zero) with its MACs filled in:
    mac1 under ``key`` (``mac_key`` of the responder), mac2 under ``cookie`` if we hold
    one from that responder. Returns (datagram, mac1)."""
    body = datagram[: len(datagram) - 2 * MAC_LEN]
    mac1 = compute_mac1(key, datagram)
    if cookie is None:
        return body + mac1 + _ZERO_MAC, mac1
    return body + mac1 + compute_mac2(cookie, body + mac1 + _ZERO_MAC), mac1


def address_bytes(address: tuple[str, int]) -> bytes:
    host, port = address
    return f"{host}|{port}".encode()


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst``."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at

    def take(self, rate: float, burst: float, now: float, count: int = 1) -> int:
        """Take up to ``count`` tokens; returns how many were there."""
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        taken = min(count, int(self.tokens))
        self.tokens -= taken
        return taken


class _Buckets:
    """One token bucket per host, at most MAX_SOURCES of them."""

    __slots__ = ("_burst", "_by_host", "_rate")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._by_host: dict[str, _Bucket] = {}

    def take(self, host: str, now: float) -> bool:
        return self.take_many(host, 1, now) == 1

    def take_many(self, host: str, count: int, now: float) -> int:
        bucket = self._by_host.get(host)
        if bucket is None:
            if len(self._by_host) >= MAX_SOURCES:
                del self._by_host[next(iter(self._by_host))]  # the oldest
            bucket = self._by_host[host] = _Bucket(self._burst, now)
        return bucket.take(self._rate, self._burst, now, count)

    def __len__(self) -> int:
        return len(self._by_host)


class CookieResponder:
    """The responder's side: checks the MACs of initiations, decides on load, makes
    cookie replies, and keeps the per-source buckets."""

    def __init__(self, static_public: bytes, random_bytes: Callable[[int], bytes], now: float) -> None:
        self._mac1_key = mac_key(static_public)
        self._reply_key = crypto.CookieCipher(cookie_key(static_public))
        self._random = random_bytes
        self._secret = random_bytes(32)
        self._secret_at = now
        self._window_start = now
        self._window_count = 0
        self._loaded_until = float("-inf")
        self._arrivals = _Buckets(ARRIVALS_PER_SOURCE, ARRIVALS_BURST)
        self._handshakes = _Buckets(HANDSHAKES_PER_SOURCE, HANDSHAKES_BURST)
        self.cookies_sent = 0
        self.handshakes_admitted = 0  # initiations that got their Diffie-Hellman (counted by the data path)

    def under_load(self, now: float) -> bool:
        return now < self._loaded_until

    def overloaded(self, now: float) -> None:
        """More initiations came than the data path will handle now: be under load."""
        self._loaded_until = max(self._loaded_until, now + UNDER_LOAD_HOLD)

    def arrivals_allowed(self, host: str, count: int, now: float) -> int:
        """Under load, ``count`` initiations from ``host`` arrived together: how many of
        them its arrivals bucket lets through (the first ones)."""
        self._count_arrival(now, count)
        return self._arrivals.take_many(host, count, now)

    def check(
        self, datagram: bytes, address: tuple[str, int], now: float, *, counted: bool = False
    ) -> Verdict:
        """Decide on one initiation (the whole datagram, MACs last). Raises BadPacket
        (``bad_mac``, ``rate_limited``) for one to drop silently. ``counted``: its
        arrivals token was already taken (a run looked at as a whole)."""
        under_load = self.under_load(now)
        if not counted:
            self._count_arrival(now)
            if under_load and not self._arrivals.take(address[0], now):
                raise BadPacket(DropReason.RATE_LIMITED, "arrivals")
        mac1_at = len(datagram) - 2 * MAC_LEN
        mac1 = datagram[mac1_at : mac1_at + MAC_LEN]
        if not crypto.mac16_equal(compute_mac1(self._mac1_key, datagram), mac1):
            raise BadPacket(DropReason.BAD_MAC)
        if not (under_load or self.under_load(now)):
            return Verdict.ACCEPT
        mac2 = datagram[mac1_at + MAC_LEN :]
        if mac2 == _ZERO_MAC or not crypto.mac16_equal(
            compute_mac2(self._cookie(address, now), datagram), mac2
        ):
            return Verdict.SEND_COOKIE
        if not self._handshakes.take(address[0], now):
            raise BadPacket(DropReason.RATE_LIMITED, "handshakes")
        return Verdict.ACCEPT

    def cookie_reply_body(self, datagram: bytes, address: tuple[str, int], now: float) -> bytes:
        """nonce | sealed cookie, for a COOKIE_REPLY to the initiation ``datagram``."""
        mac1_at = len(datagram) - 2 * MAC_LEN
        nonce = self._random(COOKIE_NONCE_LEN)
        mac1 = datagram[mac1_at : mac1_at + MAC_LEN]
        sealed = self._reply_key.seal(nonce, self._cookie(address, now), mac1)
        self.cookies_sent += 1
        return nonce + sealed

    def _cookie(self, address: tuple[str, int], now: float) -> bytes:
        if now - self._secret_at >= COOKIE_SECRET_LIFETIME:
            self._secret = self._random(32)
            self._secret_at = now
        return crypto.mac16(self._secret, address_bytes(address))

    def _count_arrival(self, now: float, count: int = 1) -> None:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_count = 0
        self._window_count += count
        if self._window_count > UNDER_LOAD_INITIATIONS:
            self.overloaded(now)

    @property
    def sources_tracked(self) -> int:
        return len(self._arrivals)


def open_cookie_reply(responder_static_public: bytes, body: bytes, mac1: bytes) -> bytes:
    """The cookie in a COOKIE_REPLY's body (nonce | sealed cookie) from the member whose
    static key is given, for our initiation whose mac1 this was. Raises BadPacket."""
    nonce, sealed = body[:COOKIE_NONCE_LEN], body[COOKIE_NONCE_LEN:]
    try:
        return crypto.CookieCipher(cookie_key(responder_static_public)).open(nonce, sealed, mac1)
    except crypto.AuthenticationError:
        raise BadPacket(DropReason.BAD_COOKIE_REPLY, "does not open") from None
