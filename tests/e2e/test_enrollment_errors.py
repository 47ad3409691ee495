"""Enrollment when things go wrong, and PoPs that restart or go missing.

onprem: master, slave, desktop      aws: aws-web-1, aws-web-2
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import requires_root, running_story
from naas.lab.story import NETWORK, Story, enrollment_argv
from naas.model.codec import b64e
from naas.pop.client import DEFAULT_ATTEMPTS
from naas.pop.limits import TLS_HANDSHAKE_TIMEOUT

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {"master": "onprem", "slave": "onprem", "desktop": "onprem", "aws-web-1": "aws", "aws-web-2": "aws"}


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    with running_story(HOSTS, enroll=()) as story:
        yield story


def _try_enroll(story: Story, client: str, url: str, timeout: float = 90) -> tuple[int, str, Path]:
    state = story.workdir / "attempts" / f"{client}-{time.monotonic_ns()}"
    result = story.run(client, enrollment_argv(url, "--state-dir", str(state)), timeout=timeout)
    return result.returncode, result.stderr.strip(), state


def _nothing_written(state: Path) -> bool:
    return not state.exists() or not any(p.is_file() for p in state.rglob("*"))


def _enroll_requests(story: Story, pop: str) -> int:
    return int(story.status(pop)["pop"]["enroll_requests"])


def test_malformed_url_is_bad_input(story: Story) -> None:
    code, err, state = _try_enroll(story, "desktop", "https://example.invalid/join")
    assert code == 2
    assert err.startswith("naas: invitation URL:") and len(err.splitlines()) == 1
    assert _nothing_written(state)


def test_tampered_token_is_refused(story: Story) -> None:
    url = story.invite("desktop")["desktop"]
    token = re.search(r"token=([^&]+)", url).group(1)  # type: ignore[union-attr]
    flipped = ("A" if token[5] != "A" else "B").join((token[:5], token[6:]))
    code, err, state = _try_enroll(story, "desktop", url.replace(token, flipped))
    assert code == 1
    assert "invitation unknown" in err and len(err.splitlines()) == 1
    assert _nothing_written(state)


def test_wrong_pin_is_caught_before_the_token_is_sent(story: Story) -> None:
    url = story.invite("desktop")["desktop"]
    pins = re.findall(r"sha256:[A-Za-z0-9_-]{43}", url)
    assert len(pins) == 2
    forged = url
    for pin in pins:  # well-formed pins of other keys
        forged = forged.replace(pin, "sha256:" + b64e(hashlib.sha256(pin.encode()).digest()))
    before = _enroll_requests(story, "master") + _enroll_requests(story, "slave")
    code, err, state = _try_enroll(story, "desktop", forged)
    assert code == 1
    assert "pin" in err and len(err.splitlines()) == 1
    assert _nothing_written(state)
    after = _enroll_requests(story, "master") + _enroll_requests(story, "slave")
    assert after == before, "no PoP ever saw the token"
    # the genuine URL still works afterwards: the token was never spent
    code, err, state = _try_enroll(story, "desktop", url)
    assert code == 0, err


def test_expired_invitation_is_refused(story: Story) -> None:
    url = story.invite("aws-web-2", ttl="1s")["aws-web-2"]
    time.sleep(2.1)
    code, err, state = _try_enroll(story, "aws-web-2", url)
    assert code == 1
    assert "expired" in err and len(err.splitlines()) == 1
    assert _nothing_written(state)


def test_invitation_works_once_at_either_pop_and_survives_restarts(story: Story) -> None:
    url = story.invite("aws-web-1")["aws-web-1"]
    story.stop_pop("master")  # the URL names master first: the client falls back to slave
    try:
        code, err, _ = _try_enroll(story, "aws-web-1", url)
        assert code == 0, err
    finally:
        story.start_pop("master")
    # master restarted: it knows the invitation is spent and the member exists
    code, err, state = _try_enroll(story, "aws-web-1", url)
    assert code == 1 and "already used" in err
    assert _nothing_written(state)
    members = {p["name"] for p in story.status("master")["peers"]}
    assert "aws-web-1" in members


def test_unreachable_pops_fail_cleanly(story: Story) -> None:
    url = story.invite("aws-web-2")["aws-web-2"]
    story.stop_pop("master")
    story.stop_pop("slave")
    try:
        started = time.monotonic()
        code, err, state = _try_enroll(story, "aws-web-2", url)
        elapsed = time.monotonic() - started
        assert code == 1
        *retries, final = err.splitlines()
        assert final.startswith("naas: enrollment failed: cannot reach any PoP")
        # one line per retry: 2 PoPs, 5 rounds, nothing after the last try
        assert len(retries) == 2 * DEFAULT_ATTEMPTS - 1, err
        assert all(line.startswith("naas: enrollment: PoP ") for line in retries)
        assert retries[0].endswith("now") and retries[1].endswith("(round 2 of 5)")
        assert re.search(r"token=([^&]+)", url).group(1) not in err  # type: ignore[union-attr]
        assert _nothing_written(state)
        assert elapsed > 2, "it retried with backoff before giving up"
    finally:
        story.start_pop("master")
        story.start_pop("slave")


PROBE = """
import base64, http.client, json, os, socket, ssl, sys, time
what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if what == "idle":  # a TCP connection that never starts TLS: when does the PoP close it?
    sock = socket.create_connection((host, port), timeout=30)
    started = time.monotonic()
    try:
        sock.recv(1)
    except OSError:
        pass
    print(json.dumps(time.monotonic() - started))
else:  # wrong (well-formed, random) tokens: the statuses and Retry-After headers
    answers = []
    for _ in range(int(sys.argv[5])):
        token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        body = json.dumps({"network": sys.argv[4], "token": token, "static_public": "B" * 43,
                           "signing_public": "B" * 43})
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        connection.request("POST", "/v1/enroll", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answers.append([response.status, response.getheader("Retry-After")])
        connection.close()
    print(json.dumps(answers))
"""


def _probe(story: Story, host: str, url: str, *args: str) -> object:
    pop = re.search(r"naas://([0-9.]+):(\d+)/", url)
    assert pop is not None
    result = story.run(host, [sys.executable, "-c", PROBE, args[0], pop[1], pop[2], *args[1:]], timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_wrong_tokens_from_one_host_are_limited_and_idle_connections_closed(story: Story) -> None:
    """Last in this module: the PoPs were restarted by the test before, so their failure
    counts start empty."""
    url = story.invite("aws-web-2")["aws-web-2"]
    answers = _probe(story, "desktop", url, "tokens", NETWORK, "12")
    assert answers == [[403, None]] * 10 + [[429, "3"]] * 2
    # Another host enrolls at the same PoP meanwhile, at the first try.
    code, err, _ = _try_enroll(story, "aws-web-2", url)
    assert code == 0 and err == "", err
    # A connection that never starts TLS is closed after the handshake timeout.
    took = _probe(story, "desktop", url, "idle")
    assert isinstance(took, float) and TLS_HANDSHAKE_TIMEOUT - 0.5 < took < TLS_HANDSHAKE_TIMEOUT + 3
