"""PoPs are meeting points only: once members know each other, the PoPs can vanish.

    onprem: master, slave, desktop      aws: aws-web-1      alibaba: ali-db-1

1. desktop and aws-web-1 enroll; aws-web-1 is then cut off from master, slave stops.
2. ali-db-1 enrolls through master only; aws-web-1 still learns of it from the others.
3. Both PoPs stop: every pair still pings; a member restarted now rejoins from its cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import permutations

import pytest
from conftest import requires_root, running_story

from naas.lab.story import NETWORK, Story

pytestmark = [pytest.mark.netns, requires_root]

CLIENTS = ("desktop", "aws-web-1", "ali-db-1")


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    with running_story(enroll=("desktop", "aws-web-1")) as story:
        yield story


def _ping_with_retries(story: Story, source: str, target: str, attempts: int = 8) -> float | None:
    ip = story.overlay_ip(target)
    for _ in range(attempts):
        rtt = story.ping(source, ip, count=1, wait=1.5)
        if rtt is not None:
            return rtt
    return None


def test_member_enrolled_through_master_only_is_reachable_by_all(story: Story) -> None:
    story.lab.block("aws-web-1", "master")
    story.stop_pop("slave")
    result = story.enroll("ali-db-1")
    assert result.returncode == 0, result.stderr
    assert _ping_with_retries(story, "aws-web-1", "ali-db-1") is not None
    assert _ping_with_retries(story, "ali-db-1", "aws-web-1") is not None
    peers = {p["name"] for p in story.status("aws-web-1")["peers"]}
    assert "ali-db-1" in peers


def test_every_pair_pings_with_both_pops_gone(story: Story) -> None:
    story.lab.unblock("aws-web-1", "master")
    story.stop_pop("master")
    story.stop_pop("slave")
    for source, target in permutations(CLIENTS, 2):
        assert _ping_with_retries(story, source, target) is not None, (source, target)


def test_member_restarted_with_pops_down_rejoins_from_its_cache(story: Story) -> None:
    assert not story.pop_processes, "both PoPs are down"
    down = story.naas("aws-web-1", "down", "--network", NETWORK)
    assert down.returncode == 0, down.stderr
    up = story.naas("aws-web-1", "up", "--network", NETWORK)
    assert up.returncode == 0, up.stderr
    for target in ("desktop", "ali-db-1"):
        assert _ping_with_retries(story, "aws-web-1", target) is not None, target
        assert _ping_with_retries(story, target, "aws-web-1") is not None, target
