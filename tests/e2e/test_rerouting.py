"""Rerouting on real namespaces: cut desktop<->ali-db-1 on the underlay; a 0.1 s ping
between them resumes through another member, then goes direct again after restore.

    onprem: master, slave, desktop --x-- alibaba: ali-db-1        aws: aws-web-1
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

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
    _the_drawing_shows_the_detour(story)
    story.lab.unblock("desktop", "ali-db-1")
    assert _wait_path(story, "desktop", "ali-db-1", "direct", 10) == "direct"
    assert _wait_path(story, "ali-db-1", "desktop", "direct", 10) == "direct"
    assert story.status("desktop")["network"] == NETWORK


def _the_drawing_shows_the_detour(story: Story) -> None:
    """While the link is cut, `naas graph --json` and the DOT from `naas draw` agree:
    ali-db-1 is reached through a relay, and the cut link is gone from the picture."""

    def graph() -> dict[str, Any]:
        out = story._checked("graph", story.naas("desktop", "graph", "--json", "--network", NETWORK))
        result: dict[str, Any] = json.loads(out)
        return result

    snapshot = graph()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        n["name"] == "ali-db-1" and n["reach"] != "relayed" for n in snapshot["nodes"]
    ):
        time.sleep(0.25)
        snapshot = graph()
    nodes = {node["name"]: node for node in snapshot["nodes"]}
    assert nodes["ali-db-1"]["reach"] == "relayed", nodes["ali-db-1"]
    relay = nodes["ali-db-1"]["via"]
    ids = {name: node["node_id"] for name, node in nodes.items()}
    pairs = {(link["a"], link["b"]) for link in snapshot["links"]}
    assert tuple(sorted((ids["desktop"], ids["ali-db-1"]))) not in pairs, "the cut link is not drawn"
    assert tuple(sorted((ids["desktop"], ids[relay]))) in pairs, "the link to the relay is"
    dot = story._checked(
        "draw", story.naas("desktop", "draw", "--format", "dot", "-o", "-", "--network", NETWORK)
    )
    ali = next(line for line in dot.splitlines() if f"n{ids['ali-db-1']} [" in line)
    assert "via " in ali and "#9ecae1" in ali, ali  # the relayed colour (views/dot.py)
