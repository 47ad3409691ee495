"""Fixtures for the end-to-end tests: a lab running the user's story.

onprem 10.100.1.0/24: master, slave, desktop      aws 10.100.2.0/24: aws-web-1
alibaba 10.100.3.0/24: ali-db-1                   (one router joins the sites)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from naas.lab.netns import Lab
from naas.lab.story import DEMO_SITES, Story

SMALL_HOSTS = {
    "master": "onprem",
    "slave": "onprem",
    "desktop": "onprem",
    "aws-web-1": "aws",
    "ali-db-1": "alibaba",
}


def _can_build_labs() -> bool:
    return os.geteuid() == 0 and Path("/dev/net/tun").exists() and shutil.which("ip") is not None


pytestmark = pytest.mark.netns

requires_root = pytest.mark.skipif(not _can_build_labs(), reason="needs root, ip and /dev/net/tun")


def build_story(layer3: bool = True, hosts: dict[str, str] | None = None) -> tuple[Lab, Story]:
    workdir = Path(tempfile.mkdtemp(prefix="naas-e2e-"))
    lab = Lab(hosts=hosts or SMALL_HOSTS, sites=DEMO_SITES)
    lab.start()
    story = Story(lab, workdir, layer3=layer3)
    return lab, story


def teardown_story(lab: Lab, story: Story) -> None:
    try:
        story.close()
    finally:
        lab.close()
        shutil.rmtree(story.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_story(
    hosts: dict[str, str] | None = None,
    *,
    layer3: bool = True,
    enroll: tuple[str, ...] | None = None,
    **config: Any,
) -> Iterator[Story]:
    """A story with its PoPs up and ``enroll`` clients enrolled (None: all of them);
    ``config``: options of its naas.toml (lab/story.py config_text)."""
    if not _can_build_labs():
        pytest.skip("needs root, ip and /dev/net/tun")
    lab, story = build_story(layer3=layer3, hosts=hosts)
    try:
        story.write_config(**config)
        story.init()
        for pop in ("master", "slave"):
            story.start_pop(pop)
        story.invite()
        for client in story.clients if enroll is None else enroll:
            result = story.enroll(client)
            assert result.returncode == 0, result.stderr
        yield story
    finally:
        teardown_story(lab, story)


@pytest.fixture(scope="module")
def enrolled_story() -> Iterator[Story]:
    """Layer-3 story: PoPs up, every client enrolled."""
    with running_story() as story:
        yield story
