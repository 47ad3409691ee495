"""Failed enrollment attempts are limited per source address (429 + Retry-After).

The pure parts (FailureLimiter, ConnectionTable, source_of) with a fake clock first,
then the real service over HTTPS on 127.0.0.1 with a fake monotonic clock:

    127.0.0.2 --wrong tokens--> master: 403 x FAILURE_BURST, then 429 (store untouched)
    127.0.0.1 --good token----> master: 200, whatever 127.0.0.2 did
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_enrollment_http import Lab, _keys, open_lab, request

from naas.model.codec import b64e
from naas.pop.client import MAX_RETRY_AFTER, EnrollmentError, enroll
from naas.pop.invitations import make_token
from naas.pop.limits import (
    BODY_TIMEOUT,
    CONNECTION_LIFETIME,
    FAILURE_BURST,
    FAILURE_REFILL_SECONDS,
    HEADER_TIMEOUT,
    KEEPALIVE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE,
    TLS_HANDSHAKE_TIMEOUT,
    ConnectionTable,
    EnrollmentLimits,
    FailureLimiter,
    Refusal,
    source_of,
)

# -- pure -----------------------------------------------------------------------------------


def test_a_source_gets_a_burst_then_one_attempt_per_refill() -> None:
    limiter = FailureLimiter(burst=3, refill_seconds=2.0, max_sources=10)
    for n in range(3):
        assert limiter.retry_after("a", 100.0) == 0.0, n
        limiter.failed("a", 100.0)
    assert limiter.retry_after("a", 100.0) == pytest.approx(2.0)
    assert limiter.retry_after("a", 101.5) == pytest.approx(0.5)
    assert limiter.retry_after("b", 100.0) == 0.0, "other sources are not affected"
    assert limiter.retry_after("a", 102.0) == 0.0
    limiter.failed("a", 102.0)
    assert limiter.retry_after("a", 102.0) == pytest.approx(2.0), "one credit came back, one spent"
    assert limiter.retry_after("a", 108.0) == 0.0
    for _ in range(3):
        limiter.failed("a", 108.0)  # 3 credits at 108: all spent again
    assert limiter.retry_after("a", 108.0) > 0


def test_a_source_whose_bucket_refilled_is_forgotten() -> None:
    limiter = FailureLimiter(burst=2, refill_seconds=1.0, max_sources=100)
    limiter.failed("a", 0.0)
    limiter.failed("b", 0.5)
    assert len(limiter) == 2
    limiter.failed("c", 1.2)  # a is full again (1 + 1.2 credits, capped at 2): dropped
    assert len(limiter) == 2 and limiter.retry_after("a", 1.2) == 0.0
    limiter.failed("d", 10.0)
    assert len(limiter) == 1


def test_the_table_of_sources_is_capped() -> None:
    limiter = FailureLimiter(burst=1, refill_seconds=1000.0, max_sources=64)
    for n in range(10_000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}", float(n) / 1000)
    assert len(limiter) == 64
    assert limiter.retry_after("10.0.39.15", 10.0) > 0, "the most recent are remembered"
    assert limiter.retry_after("10.0.0.0", 10.0) == 0.0, "the oldest were forgotten"


def test_failures_never_push_a_bucket_below_empty() -> None:
    limiter = FailureLimiter(burst=2, refill_seconds=1.0, max_sources=10)
    for _ in range(50):  # concurrent requests that all passed the check before failing
        limiter.failed("a", 0.0)
    assert limiter.retry_after("a", 0.0) == pytest.approx(1.0)


def test_connection_table_counts_per_source_and_in_all() -> None:
    table = ConnectionTable(per_source=2, total=3)
    assert [table.admit("a"), table.admit("a"), table.admit("a")] == [
        None,
        None,
        Refusal.TOO_MANY_FROM_SOURCE,
    ]
    assert table.admit("b") is None
    assert table.admit("c") is Refusal.TOO_MANY_CONNECTIONS
    table.release("a")
    assert (table.open_from("a"), table.total) == (1, 2)
    assert table.admit("c") is None
    for source in ("a", "b", "c"):
        table.release(source)
    assert table.total == 0 and table.open_from("a") == 0
    with pytest.raises(ValueError):
        table.release("a")


def test_sources_are_addresses_and_ipv6_64s() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of(None) == "unknown"


def test_limits_are_a_few_seconds_and_fit_in_1024_descriptors() -> None:
    for seconds in (TLS_HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT):
        assert 1 <= seconds <= 10
    assert 30 < CONNECTION_LIFETIME <= 300  # above the store's 30 s busy timeout
    assert MAX_CONNECTIONS_PER_SOURCE * 10 <= MAX_CONNECTIONS <= 1024 // 2
    assert FAILURE_REFILL_SECONDS < MAX_RETRY_AFTER, "a limited client waits and succeeds"
    assert EnrollmentLimits().failure_burst == FAILURE_BURST


# -- over HTTPS -----------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def limited(tmp_path: Path, clock: FakeMonotonic) -> Iterator[Lab]:
    limits = EnrollmentLimits(failure_burst=3, failure_refill_seconds=4.0)
    with open_lab(tmp_path, limits=limits, monotonic=clock) as lab:
        yield lab


def _wrong_token_body(n: int) -> bytes:
    static_public, signing_public = _keys()
    body = {
        "network": "acme",
        "token": make_token(bytes([200 + n]) * 32),
        "static_public": b64e(static_public),
        "signing_public": b64e(signing_public),
    }
    return json.dumps(body).encode()


def test_wrong_tokens_are_limited_per_source_with_429_and_retry_after(
    limited: Lab, clock: FakeMonotonic, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    redeem = limited.master.store.redeem

    def counting_redeem(token_hash: str, *args: object, **kwargs: object) -> object:
        lookups.append(token_hash)
        return redeem(token_hash, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(limited.master.store, "redeem", counting_redeem)
    statuses = []
    for n in range(3):
        status, _, answer = request(limited.master, "POST", "/v1/enroll", _wrong_token_body(n), "127.0.0.2")
        statuses.append((status, answer["error"]))
    assert statuses == [(403, "invitation unknown")] * 3
    for _ in range(5):
        status, headers, answer = request(
            limited.master, "POST", "/v1/enroll", _wrong_token_body(9), "127.0.0.2"
        )
        assert status == 429 and headers["Retry-After"] == "4"
        assert answer == {"error": "too many failed attempts from this address"}
    assert len(lookups) == 3, "past the limit the token is not even looked up"
    service = limited.master.service
    assert service.refusals[Refusal.RATE_LIMITED] == 5
    assert service.refusals[Refusal.INVITATION_UNKNOWN] == 3
    assert service.status()["refusals"] == {"invitation_unknown": 3, "rate_limited": 5}
    # Another address enrolls meanwhile; the other PoP keeps its own count.
    assert enroll(limited.invitation(limited.invite("web")), *_keys()).certificate.name == "web"
    assert request(limited.slave, "POST", "/v1/enroll", _wrong_token_body(1), "127.0.0.2")[0] == 403
    # Credit comes back with time: one more attempt per refill.
    clock.now += 3.0
    status, headers, _ = request(limited.master, "POST", "/v1/enroll", _wrong_token_body(9), "127.0.0.2")
    assert (status, headers["Retry-After"]) == (429, "1")
    clock.now += 1.0
    assert request(limited.master, "POST", "/v1/enroll", b"[", "127.0.0.2")[0] == 400  # bad bodies count
    assert request(limited.master, "POST", "/v1/enroll", b"[", "127.0.0.2")[0] == 429
    assert request(limited.master, "GET", "/v1/health", b"", "127.0.0.2")[0] == 200


def test_successes_spend_nothing(limited: Lab) -> None:
    for n, client in enumerate(("web", "db")):
        assert request(limited.master, "POST", "/v1/enroll", _wrong_token_body(n))[0] == 403
        enroll(limited.invitation(limited.invite(client, n + 1)), *_keys())
    assert len(limited.master.service.failures) == 1
    assert request(limited.master, "POST", "/v1/enroll", _wrong_token_body(7))[0] == 403  # the 3rd
    assert limited.master.service.enrolled == 2


def test_a_limited_client_says_so_waits_retry_after_and_enrolls(
    limited: Lab, clock: FakeMonotonic, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for n in range(3):  # someone at our address (NAT) tried wrong tokens
        request(limited.master, "POST", "/v1/enroll", _wrong_token_body(n))
    token = limited.invite("web")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    result = enroll(limited.invitation(token), *_keys(), sleep=sleep, backoff=0.01)
    assert result.certificate.name == "web"
    assert sleeps == [4.0], "Retry-After, not the 0.01 s backoff"
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"naas: enrollment: PoP {limited.master.endpoint}: HTTP 429 too many failed attempts "
        "from this address; retrying in 4.0 s (round 2 of 5)"
    )
    assert token not in caplog.text and token not in line


def test_a_huge_retry_after_is_bounded_and_attempts_end(tmp_path: Path, clock: FakeMonotonic) -> None:
    hourly = EnrollmentLimits(failure_burst=1, failure_refill_seconds=3600.0)  # a PoP asking for an hour
    with open_lab(tmp_path, limits=hourly, monotonic=clock) as lab:
        request(lab.master, "POST", "/v1/enroll", _wrong_token_body(0))
        sleeps: list[float] = []
        lines: list[str] = []
        with pytest.raises(EnrollmentError, match=r"cannot reach any PoP \(.*HTTP 429") as info:
            enroll(
                lab.invitation(lab.invite("web")),
                *_keys(),
                attempts=3,
                sleep=sleeps.append,
                notify=lines.append,
            )
    assert sleeps == [MAX_RETRY_AFTER, MAX_RETRY_AFTER]
    assert len(lines) == 2 and all("retrying in 30.0 s" in line for line in lines)
    assert len(str(info.value).splitlines()) == 1
