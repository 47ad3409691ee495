"""Handshake flood protection, the pure part (core/cookie.py): MACs, load, cookies, buckets."""

from __future__ import annotations

import pytest

from helpers import SeededRandom
from naas.core.cookie import (
    ARRIVALS_BURST,
    COOKIE_SECRET_LIFETIME,
    HANDSHAKES_BURST,
    MAX_SOURCES,
    UNDER_LOAD_HOLD,
    UNDER_LOAD_INITIATIONS,
    CookieResponder,
    Verdict,
    mac_key,
    open_cookie_reply,
    with_macs,
)
from naas.core.crypto import x25519_public
from naas.core.wire import MAC_LEN, BadPacket, DropReason, pack_initiation

RESPONDER_STATIC = bytes(range(1, 33))
RESPONDER_PUBLIC = x25519_public(RESPONDER_STATIC)
ALICE = ("192.0.2.1", 5640)
MALLORY = ("198.51.100.7", 5640)
NOISE = bytes(range(200)) * 2  # the MACs do not look inside the Noise message


def initiation(
    index: int = 7, cookie: bytes | None = None, key: bytes = RESPONDER_PUBLIC
) -> tuple[bytes, bytes]:
    return with_macs(pack_initiation(3, 9, index, NOISE), mac_key(key), cookie)


def responder(now: float = 100.0) -> CookieResponder:
    return CookieResponder(RESPONDER_PUBLIC, SeededRandom(5), now)


def loaded(now: float = 100.0) -> CookieResponder:
    guard = responder(now)
    guard.overloaded(now)
    return guard


def test_at_rest_an_initiation_with_a_good_mac1_goes_through() -> None:
    guard = responder()
    datagram, _ = initiation()
    assert guard.check(datagram, ALICE, 100.0) is Verdict.ACCEPT


@pytest.mark.parametrize("where", [0, 12, 40, -2 * MAC_LEN, -2 * MAC_LEN + 3])
def test_any_changed_byte_breaks_mac1(where: int) -> None:
    datagram, _ = initiation()
    broken = bytearray(datagram)
    broken[where] ^= 0x40
    with pytest.raises(BadPacket) as caught:
        responder().check(bytes(broken), ALICE, 100.0)
    assert caught.value.reason is DropReason.BAD_MAC


def test_the_hop_limit_is_not_covered_relays_rewrite_it() -> None:
    datagram, _ = initiation()
    relayed = datagram[:1] + bytes((datagram[1] - 3,)) + datagram[2:]
    assert responder().check(relayed, ALICE, 100.0) is Verdict.ACCEPT


def test_mac1_for_another_member_is_refused() -> None:
    datagram, _ = initiation(key=x25519_public(bytes(32 * [9])))
    with pytest.raises(BadPacket) as caught:
        responder().check(datagram, ALICE, 100.0)
    assert caught.value.reason is DropReason.BAD_MAC


def test_many_initiations_in_a_second_put_the_responder_under_load_for_a_while() -> None:
    guard = responder()
    datagram, _ = initiation()
    for i in range(UNDER_LOAD_INITIATIONS):
        guard.check(datagram, (f"10.9.0.{i % 250}", 1), 100.0 + i / 1000)
    assert not guard.under_load(100.1)
    assert guard.check(datagram, ALICE, 100.1) is Verdict.SEND_COOKIE  # one more: under load at once
    assert guard.under_load(100.1)
    assert guard.under_load(100.1 + UNDER_LOAD_HOLD - 0.01)
    assert not guard.under_load(100.1 + UNDER_LOAD_HOLD + 0.01)


def test_under_load_a_cookie_is_asked_then_accepted() -> None:
    guard = loaded()
    first, mac1 = initiation()
    assert guard.check(first, ALICE, 100.0) is Verdict.SEND_COOKIE
    body = guard.cookie_reply_body(first, ALICE, 100.0)
    cookie = open_cookie_reply(RESPONDER_PUBLIC, body, mac1)
    assert len(cookie) == MAC_LEN
    again, _ = initiation(index=8, cookie=cookie)
    assert guard.check(again, ALICE, 100.1) is Verdict.ACCEPT
    assert guard.cookies_sent == 1


def test_a_cookie_reply_opens_only_for_the_initiation_it_answers() -> None:
    guard = loaded()
    first, _ = initiation()
    body = guard.cookie_reply_body(first, ALICE, 100.0)
    _, other_mac1 = initiation(index=99)
    with pytest.raises(BadPacket) as caught:
        open_cookie_reply(RESPONDER_PUBLIC, body, other_mac1)
    assert caught.value.reason is DropReason.BAD_COOKIE_REPLY


def test_a_cookie_is_bound_to_the_source_address() -> None:
    guard = loaded()
    first, mac1 = initiation()
    cookie = open_cookie_reply(RESPONDER_PUBLIC, guard.cookie_reply_body(first, MALLORY, 100.0), mac1)
    again, _ = initiation(index=8, cookie=cookie)
    assert guard.check(again, MALLORY, 100.0) is Verdict.ACCEPT
    assert guard.check(again, ALICE, 100.0) is Verdict.SEND_COOKIE  # Mallory's cookie, Alice's address
    assert guard.check(again, (MALLORY[0], 6000), 100.0) is Verdict.SEND_COOKIE  # another port


def test_cookies_expire_with_the_secret() -> None:
    guard = loaded()
    first, mac1 = initiation()
    cookie = open_cookie_reply(RESPONDER_PUBLIC, guard.cookie_reply_body(first, ALICE, 100.0), mac1)
    later = 100.0 + COOKIE_SECRET_LIFETIME + 1
    guard.overloaded(later)
    again, _ = initiation(index=8, cookie=cookie)
    assert guard.check(again, ALICE, later) is Verdict.SEND_COOKIE


def test_a_proven_host_gets_a_few_handshakes_a_second_then_rate_limited() -> None:
    guard = loaded()
    first, mac1 = initiation()
    cookie = open_cookie_reply(RESPONDER_PUBLIC, guard.cookie_reply_body(first, MALLORY, 100.0), mac1)
    proven, _ = initiation(index=8, cookie=cookie)
    verdicts = []
    for _ in range(20):
        try:
            verdicts.append(guard.check(proven, MALLORY, 100.0))
        except BadPacket as exc:
            verdicts.append(exc.reason)
    assert verdicts.count(Verdict.ACCEPT) == int(HANDSHAKES_BURST)
    assert verdicts.count(DropReason.RATE_LIMITED) == 20 - int(HANDSHAKES_BURST)
    assert guard.check(proven, MALLORY, 101.0) is Verdict.ACCEPT  # the bucket refills
    # another host is not affected by Mallory's bucket
    first_alice, mac1_alice = initiation(index=11)
    body = guard.cookie_reply_body(first_alice, ALICE, 101.0)
    alice, _ = initiation(index=12, cookie=open_cookie_reply(RESPONDER_PUBLIC, body, mac1_alice))
    assert guard.check(alice, ALICE, 101.0) is Verdict.ACCEPT


def test_arrivals_of_one_host_are_limited_before_any_hash() -> None:
    guard = loaded()
    assert guard.arrivals_allowed(MALLORY[0], 100, 100.0) == int(ARRIVALS_BURST)
    assert guard.arrivals_allowed(MALLORY[0], 100, 100.0) == 0
    assert guard.arrivals_allowed(ALICE[0], 3, 100.0) == 3
    # no token left: even a good initiation is dropped before its MACs are judged on load
    datagram, _ = initiation()
    with pytest.raises(BadPacket) as caught:
        guard.check(datagram, MALLORY, 100.0)
    assert caught.value.reason is DropReason.RATE_LIMITED


def test_the_table_of_hosts_is_bounded() -> None:
    guard = loaded()
    for i in range(MAX_SOURCES + 500):
        guard.arrivals_allowed(f"h{i}", 1, 100.0)
    assert guard.sources_tracked == MAX_SOURCES
