"""Rerouting on real namespaces: cut desktop<->ali-db-1 on the underlay; a 0.1 s ping
between them resumes through another member, then goes direct again after restore.

    onprem: master, slave, desktop --x-- alibaba: ali-db-1        aws: aws-web-1
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import requires_root, running_story
from naas.core.cookie import mac_key, with_macs
from naas.core.handshake import InitiatorHandshake
from naas.core.wire import HANDSHAKE_TIMESTAMP, PROLOGUE_PREFIX, pack_initiation
from naas.daemon.state import client_node_dir
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


STRANGER_SENDER = """
import socket, sys, time
host, port, path, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
blob = open(path, "rb").read()
size = int.from_bytes(blob[:4], "big")
datagrams = [blob[4 + i : 4 + i + size] for i in range(0, len(blob) - 4, size)]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end and sent < 2_000_000:
    for datagram in datagrams:
        sock.sendto(datagram, (host, port))
    sent += len(datagrams)
print(sent)
"""


def test_a_handshake_flood_from_a_stranger_asks_cookies_and_keeps_the_mesh(story: Story) -> None:
    """The router namespace (no member of the mesh) sends well-formed initiations to
    desktop's mesh port as fast as one Python loop can (core/cookie.py): they land on
    desktop's handshake socket (daemon/steering.py), desktop comes under load, answers
    cookies, drops the rest on its rate limits or lets the kernel drop them, and keeps
    its links.

        router (stranger) ==initiations==> desktop:5640
    """
    cert = client_node_dir(story.state_dir("desktop"), NETWORK).load_identity().certificate
    datagrams = []
    for index in range(32):
        handshake = InitiatorHandshake(
            local_static_private=bytes([index + 1]) * 32,
            remote_static_public=cert.static_public,
            prologue=PROLOGUE_PREFIX + NETWORK.encode(),
        )
        payload = HANDSHAKE_TIMESTAMP.pack(int(time.time() * 1000) + index) + b"{}" + bytes(400)
        message = handshake.create_initiation(bytes([index + 77]) * 32, payload)
        datagram = pack_initiation(cert.node_id, 4242, index + 1, message)
        datagrams.append(with_macs(datagram, mac_key(cert.static_public), None)[0])
    blob = story.workdir / "initiations.bin"
    blob.write_bytes(len(datagrams[0]).to_bytes(4, "big") + b"".join(datagrams))
    before = story.status("desktop")
    sender = story.lab.router.popen(
        ["python3", "-c", STRANGER_SENDER, str(story.lab.host("desktop").address), "5640", str(blob), "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        during = story.status("desktop")
        answered = story.ping("aws-web-1", story.overlay_ip("desktop"), count=5, wait=1.0)
        out, _ = sender.communicate(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    sent = int(out.strip())
    after = story.status("desktop")
    assert sent > 1000, sent
    assert during["agent"]["handshakes"]["under_load"] is True
    assert after["agent"]["handshakes"]["cookies_sent"] > before["agent"]["handshakes"]["cookies_sent"]
    drops = {reason: count - before["drops"].get(reason, 0) for reason, count in after["drops"].items()}
    assert drops.get("rate_limited", 0) > 0 and drops.get("cookie_required", 0) > 0, (sent, drops)
    # what the agent did not read, the kernel dropped at the handshake socket's own queue
    assert after["agent"]["handshakes"]["own_socket"] is True
    assert after["agent"]["handshakes"]["pauses"] > before["agent"]["handshakes"]["pauses"]
    spent = after["agent"]["handshakes"]["admitted"] - before["agent"]["handshakes"]["admitted"]
    assert spent < 200, f"{spent} Diffie-Hellman for {sent} initiations"
    assert answered is not None, "a ping crossed the mesh during the flood"
    assert [peer["name"] for peer in after["peers"] if peer["path"] != "direct"] == []
