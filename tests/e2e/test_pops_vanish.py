"""PoPs are meeting points only: once members know each other, the PoPs can vanish.

    onprem: master, slave, desktop      aws: aws-web-1      alibaba: ali-db-1

1. desktop and aws-web-1 enroll; aws-web-1 is then cut off from master, slave stops.
2. ali-db-1 enrolls through master only; aws-web-1 still learns of it from the others.
3. Both PoPs stop: every pair still pings; a member restarted now rejoins from its cache.
4. That is where `naas demo --keep` leaves its lab: the commands it prints work as given
   (a shell on desktop sees its membership; the PoPs start again; master invites from
   the store both PoPs share).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from itertools import permutations

import pytest

from conftest import requires_root, running_story
from naas.cli.demo import kept_lab_message
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
    result = story.enroll("ali-db-1", via="file")  # --url-file, a 0600 file
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


def _in_shell(command: str, inner: str | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` as a user pastes it into a root shell; with ``inner``, the shell it opens
    runs ``inner`` and exits instead of waiting for input."""
    line = command if inner is None else f"{command} -c {shlex.quote(inner)}"
    return subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_the_kept_lab_commands_work_as_printed(story: Story) -> None:
    assert not story.pop_processes, "both PoPs are down, as at the end of the demo"
    message = kept_lab_message(story)
    assert "PoPs master and slave are not running" in message
    commands = [line.strip() for line in message.splitlines() if line.strip().startswith("ip netns exec ")]
    starts = [c for c in commands if " pop --config " in c]
    shells = [c for c in commands if c.endswith(" bash")]
    assert len(starts) == 2 and len(shells) == 2, message
    desktop, master = shells
    status = _in_shell(desktop, "naas status --json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["node"]["name"] == "desktop"
    assert json.loads(status.stdout)["network"] == NETWORK
    for command, pop in zip(starts, ("master", "slave"), strict=True):
        started = _in_shell(command)  # backgrounds the PoP; the lab's teardown stops it
        assert started.returncode == 0, started.stderr
        assert story.wait_pop(pop), f"{pop} did not start from the printed command"
    invite = _in_shell(master, "naas invite --config " + shlex.quote(str(story.config_path)) + " --json")
    assert invite.returncode == 0, invite.stderr
    assert {i["client"] for i in json.loads(invite.stdout)} == set(story.clients)
    assert not (story.state_dir("master") / NETWORK / "pop.db").exists(), "no second store"
    pop_status = _in_shell(master, "naas status --json")
    assert pop_status.returncode == 0, pop_status.stderr
    assert json.loads(pop_status.stdout)["pop"]["name"] == "master"
