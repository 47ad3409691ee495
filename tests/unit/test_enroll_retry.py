"""Retried enrollments: the answer to a committed redemption is lost, and the client
retries, saying so on one line each time; the token is in no message.

    client --POST--> master: COMMIT, then 500 (as if it died) or the client hangs up
    client --POST--> master/slave: same token, same keys: the same certificate, 200
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_enrollment_http import Lab, _closed_port, _keys, open_lab, request

from naas.model.certificate import Certificate
from naas.model.codec import b64e
from naas.model.ids import Endpoint
from naas.pop.client import EnrollmentError, enroll
from naas.pop.invitations import ENROLL_PATH, Invitation, token_hash
from naas.pop.limits import Refusal


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with open_lab(tmp_path) as opened:
        yield opened


def _crash_after_commit(lab: Lab, monkeypatch: pytest.MonkeyPatch, times: int = 1) -> list[Certificate]:
    """Make master's store commit a redemption and then fail, ``times`` times."""
    committed: list[Certificate] = []
    redeem = lab.master.store.redeem

    def redeem_then_crash(*args: Any, **kwargs: Any) -> Certificate:
        cert = redeem(*args, **kwargs)
        if len(committed) < times:
            committed.append(cert)
            raise RuntimeError("PoP died after COMMIT")
        return cert

    monkeypatch.setattr(lab.master.store, "redeem", redeem_then_crash)
    return committed


def test_an_answer_lost_after_commit_is_retried_and_gets_the_same_certificate(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    committed = _crash_after_commit(lab, monkeypatch)
    token = lab.invite("web")
    lines: list[str] = []
    sleeps: list[float] = []
    result = enroll(lab.invitation(token), *_keys(), sleep=sleeps.append, notify=lines.append)
    assert [result.certificate] == committed == [lab.store.member("web")]
    assert lines == [
        f"enrollment: PoP {lab.master.endpoint}: HTTP 500 internal error; retrying in 0.5 s (round 2 of 5)"
    ]
    assert sleeps == [0.5]
    assert (lab.master.service.enrolled, lab.master.service.enrolled_again) == (0, 1)
    assert lab.master.enrolled == [result.certificate]
    assert "enrolled again" in caplog.text and token not in caplog.text


def test_a_client_that_hung_up_before_the_answer_gets_its_certificate_on_retry(lab: Lab) -> None:
    token = lab.invite("web")
    static_public, signing_public = _keys()
    body = json.dumps(
        {
            "network": "acme",
            "token": token,
            "static_public": b64e(static_public),
            "signing_public": b64e(signing_public),
        }
    ).encode()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", lab.master.port), timeout=5)) as sock:
        head = f"POST {ENROLL_PATH} HTTP/1.1\r\nHost: pop\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
    deadline = time.monotonic() + 10
    while lab.master.service.enrolled == 0:  # the PoP goes on, commits and answers no one
        assert time.monotonic() < deadline, "the redemption was never committed"
        time.sleep(0.02)
    assert lab.store.invitations()[0].used_at is not None
    for pop in (lab.master, lab.slave):
        again = enroll(lab.invitation(token, pop), static_public, signing_public, attempts=1)
        assert again.certificate == lab.store.member("web")
    assert lab.master.service.enrolled_again == lab.slave.service.enrolled_again == 1
    with pytest.raises(EnrollmentError, match="invitation already used"):
        enroll(lab.invitation(token), static_public, _keys()[1], attempts=1)


def test_each_retry_is_one_line_naming_the_pop_what_failed_and_what_next(lab: Lab) -> None:
    token = lab.invite("web")
    dead = Endpoint("127.0.0.1", _closed_port())
    pops = ((dead, lab.master.tls.pin), (Endpoint("127.0.0.1", _closed_port()), lab.slave.tls.pin))
    lines: list[str] = []
    sleeps: list[float] = []
    with pytest.raises(EnrollmentError) as info:
        enroll(
            Invitation("acme", token, pops), *_keys(), attempts=3, sleep=sleeps.append, notify=lines.append
        )
    assert len(lines) == 5 and sleeps == [0.5, 1.0]  # no line, no wait after the last try
    assert lines[0] == f"enrollment: PoP {dead}: Connection refused; trying PoP {pops[1][0]} now"
    assert lines[1] == f"enrollment: PoP {pops[1][0]}: Connection refused; retrying in 0.5 s (round 2 of 3)"
    assert lines[3].endswith("retrying in 1.0 s (round 3 of 3)")
    assert str(info.value).startswith("cannot reach any PoP (127.0.0.1:")
    assert all(token not in line for line in [*lines, str(info.value)])


def test_the_default_notice_goes_to_stderr(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    dead = Invitation(
        "acme", lab.invite("web"), ((Endpoint("127.0.0.1", _closed_port()), lab.master.tls.pin),)
    )
    with pytest.raises(EnrollmentError):
        enroll(dead, *_keys(), attempts=2, sleep=lambda _: None)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("naas: enrollment: PoP 127.0.0.1:") and len(err.splitlines()) == 1


def _stops_at_once(lab: Lab, token: str, words: str) -> None:
    lines: list[str] = []
    requests_before = lab.master.service.enroll_requests
    with pytest.raises(EnrollmentError, match=words) as info:
        enroll(lab.invitation(token), *_keys(), notify=lines.append, sleep=lambda _: pytest.fail("slept"))
    assert lines == [] and len(str(info.value).splitlines()) == 1
    assert lab.master.service.enroll_requests == requests_before + 1
    assert token not in str(info.value)


def test_an_expired_invitation_stops_at_once_with_one_line(lab: Lab) -> None:
    token = lab.invite("web")
    lab.clock[0] += 8 * 86_400
    _stops_at_once(lab, token, "invitation expired")


def test_a_used_invitation_stops_at_once_with_one_line(lab: Lab) -> None:
    token = lab.invite("web")
    enroll(lab.invitation(token), *_keys())
    _stops_at_once(lab, token, "invitation already used")


def test_a_pop_echoing_the_token_does_not_get_it_printed(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    token = lab.invite("web")

    def echo(*_args: Any, **_kwargs: Any) -> Certificate:
        raise RuntimeError(token)  # an internal error whose text holds the token...

    monkeypatch.setattr(lab.master.store, "redeem", echo)
    monkeypatch.setattr("naas.pop.server._error", _echoing_error(token))
    lines: list[str] = []
    with pytest.raises(EnrollmentError) as info:
        enroll(lab.invitation(token), *_keys(), attempts=2, sleep=lambda _: None, notify=lines.append)
    assert lines and all(token not in line and "<token>" in line for line in lines)
    assert token not in str(info.value)
    assert lab.master.service.refusals[Refusal.BAD_REQUEST] == 0


def _echoing_error(token: str) -> Callable[..., Any]:
    """...that a careless PoP would send back: the client must still not print it."""
    from aiohttp import web

    def error(status: int, message: str, *, close: bool = False) -> web.Response:
        return web.json_response({"error": f"{message}: {token}"}, status=status)

    return error


def test_the_token_is_in_no_log_line_and_no_message_whatever_happens(
    lab: Lab, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    token = lab.invite("web")
    static_public, signing_public = _keys()
    good = {"network": "acme", "token": token, "static_public": b64e(static_public), "signing_public": "x"}
    messages: list[str] = []
    for body in (
        json.dumps(good).encode(),  # 400: a bad key beside a good token
        json.dumps({**good, "network": "other"}).encode(),  # 400: another network
        json.dumps(good).encode() + b" " * 20_000,  # 413
    ):
        messages.append(str(request(lab.master, "POST", ENROLL_PATH, body)))
    assert lab.store.invitations()[0].used_at is None
    result = enroll(lab.invitation(token), static_public, signing_public)  # 200
    enroll(lab.invitation(token), static_public, signing_public)  # 200 again
    for pop in (lab.master, lab.slave):  # 403 at both
        with pytest.raises(EnrollmentError) as info:
            enroll(lab.invitation(token, pop), *_keys(), attempts=1)
        messages.append(str(info.value))
    dead = Invitation("acme", token, ((Endpoint("127.0.0.1", _closed_port()), lab.master.tls.pin),))
    with pytest.raises(EnrollmentError) as info:
        enroll(dead, *_keys(), attempts=2, sleep=lambda _: None)
    messages.append(str(info.value))
    captured = capsys.readouterr()
    text = "\n".join([caplog.text, captured.out, captured.err, repr(result), *messages])
    assert "enrolled name=web" in text and "enrolled again" in text and "invitation already used" in text
    assert token not in text and token_hash(token) not in text
