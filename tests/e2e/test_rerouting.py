"""Rerouting on real namespaces: cut desktop<->ali-db-1 on the underlay; a 0.1 s ping
between them resumes through another member, then goes direct again after restore.

    onprem: master, slave, desktop --x-- alibaba: ali-db-1        aws: aws-web-1
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import requires_root, running_story

from naas.lab.story import NETWORK, Story

pytestmark = [pytest.mark.netns, requires_root]


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    with running_story() as story:
        assert all(rtt is not None for rtt in story.ping_matrix().values())
        yield story


def _path(story: Story, host: str, peer: str) -> str:
    return next(p["path"] for p in story.status(host)["peers"] if p["name"] == peer)


def _wait_path(story: Story, host: str, peer: str, predicate: str, limit: float) -> str:
    deadline = time.monotonic() + limit
    path = _path(story, host, peer)
    while time.monotonic() < deadline and not path.startswith(predicate):
        time.sleep(0.25)
        path = _path(story, host, peer)
    return path


def test_cut_link_reroutes_and_recovers(story: Story) -> None:
    target = story.overlay_ip("ali-db-1")
    assert _path(story, "desktop", "ali-db-1") == "direct"
    outage, answered, sent = story.ping_outage(
        "desktop", target, seconds=12, action_at=2, action=lambda: story.lab.block("desktop", "ali-db-1")
    )
    assert outage < 10, (outage, answered, sent)
    assert answered > sent * 0.5
    path = _wait_path(story, "desktop", "ali-db-1", "via ", 5)
    assert path.startswith("via "), path
    assert story.ping("desktop", target, count=3) is not None
    story.lab.unblock("desktop", "ali-db-1")
    assert _wait_path(story, "desktop", "ali-db-1", "direct", 10) == "direct"
    assert _wait_path(story, "ali-db-1", "desktop", "direct", 10) == "direct"
    assert story.status("desktop")["network"] == NETWORK
