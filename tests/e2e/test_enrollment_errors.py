"""Enrollment when things go wrong, and PoPs that restart or go missing.

onprem: master, slave, desktop      aws: aws-web-1, aws-web-2
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import requires_root, running_story

from naas.lab.story import Story, enrollment_argv
from naas.model.codec import b64e

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
        assert "cannot reach" in err and len(err.splitlines()) == 1
        assert _nothing_written(state)
        assert elapsed > 2, "it retried with backoff before giving up"
    finally:
        story.start_pop("master")
        story.start_pop("slave")
