"""Certificates that live one minute: members and PoPs renew them, the mesh outlives them.

    onprem: master, slave, desktop      aws: aws-web-1        certificate_lifetime = "1m"

desktop renews on demand (`naas renew`) and then by itself at two thirds of the
lifetime; the PoPs renew their own; pings still cross the mesh after every first
certificate has expired. aws-web-1 is stopped right after it joins: when it starts again
its certificate has expired, and it says so in one line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import _can_build_labs, build_story, requires_root, teardown_story
from naas.lab.story import NETWORK, Story

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {"master": "onprem", "slave": "onprem", "desktop": "onprem", "aws-web-1": "aws"}
LIFETIME = 60


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    if not _can_build_labs():
        pytest.skip("needs root, ip and /dev/net/tun")
    lab, story = build_story(hosts=HOSTS)
    try:
        story.write_config()
        text = story.config_path.read_text()
        story.config_path.write_text(
            text.replace("enrollment_port = 5641\n", 'enrollment_port = 5641\ncertificate_lifetime = "1m"\n')
        )
        story.init()
        for pop in ("master", "slave"):
            story.start_pop(pop)
        story.invite()
        for client in story.clients:
            result = story.enroll(client)
            assert result.returncode == 0, result.stderr
        yield story
    finally:
        teardown_story(lab, story)


def _certificate(story: Story, host: str) -> dict:
    return story.status(host)["agent"]["certificate"]


def test_members_and_pops_renew_and_the_mesh_outlives_the_first_certificates(story: Story) -> None:
    assert story.naas("aws-web-1", "down", "--network", NETWORK).returncode == 0
    stopped_at = time.time()
    first = _certificate(story, "desktop")
    assert first["not_after"] - time.time() <= LIFETIME

    forced = story.naas("desktop", "renew", "--network", NETWORK)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("certificate renewed: valid until")
    after_forced = _certificate(story, "desktop")
    assert after_forced["not_after"] > first["not_after"] and after_forced["renewals"] == 1

    deadline = time.monotonic() + LIFETIME
    while time.monotonic() < deadline and _certificate(story, "desktop")["renewals"] < 2:
        time.sleep(1)
    assert _certificate(story, "desktop")["renewals"] >= 2, "desktop renewed by itself at 2/3"
    while time.time() < first["not_after"] + 2:  # every first certificate has expired by now
        time.sleep(1)
    for pop in ("master", "slave"):
        assert _certificate(story, pop)["renewals"] >= 1, f"{pop} renewed its own certificate"
    assert story.ping("desktop", story.overlay_ip("master"), count=3) is not None
    assert story.ping("master", story.overlay_ip("desktop"), count=3) is not None

    while time.time() < stopped_at + LIFETIME + 2:
        time.sleep(1)
    started = story.naas("aws-web-1", "up", "--network", NETWORK)
    assert started.returncode != 0
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "expired" in lines[0] and "new invitation" in lines[0], started.stderr
