"""The user's story end to end with the real commands, in namespaces (layer-3 mode)."""

from __future__ import annotations

import json
import subprocess
import time
from ipaddress import IPv4Address

import pytest
from conftest import requires_root

from naas.lab.story import NETWORK, Story, enrollment_argv

pytestmark = [pytest.mark.netns, requires_root]


def test_every_member_pings_every_other(enrolled_story: Story) -> None:
    matrix = enrolled_story.ping_matrix()
    assert all(rtt is not None for rtt in matrix.values()), [p for p, r in matrix.items() if r is None]
    assert len(matrix) == 5 * 4


def test_addresses_come_from_the_dhcp_range(enrolled_story: Story) -> None:
    for client in enrolled_story.clients:
        ip = IPv4Address(enrolled_story.overlay_ip(client))
        assert IPv4Address("172.32.1.10") <= ip <= IPv4Address("172.32.1.250")
        shown = enrolled_story.lab.host(client).run(["ip", "-4", "-o", "addr", "show", "dev", "naas0"])
        assert f"inet {ip}/16" in shown.stdout


def test_clients_talk_point_to_point(enrolled_story: Story) -> None:
    story = enrolled_story
    story.ping_matrix()  # make sure every session exists
    addresses = {name: str(host.address) for name, host in story.lab.hosts.items()}
    for client in story.clients:
        for peer in story.status(client)["peers"]:
            assert peer["path"] == "direct", (client, peer)
            assert peer["endpoint"] == f"{addresses[peer['name']]}:5640", (client, peer)
            assert peer["rtt_ms"] is not None
    # a client<->client ping adds no traffic at the PoPs beyond their own probes
    before = {pop: _pop_bytes(story, pop) for pop in ("master", "slave")}
    target = story.overlay_ip("ali-db-1")
    assert story.ping("aws-web-1", target, count=20, wait=2) is not None
    after = {pop: _pop_bytes(story, pop) for pop in ("master", "slave")}
    for pop in before:
        # 20 pings of 84 bytes would add > 3 KB per direction if relayed; probes add ~1 KB
        assert after[pop] - before[pop] < 2500, (pop, before[pop], after[pop])


def _pop_bytes(story: Story, pop: str) -> int:
    return sum(p["rx_bytes"] + p["tx_bytes"] for p in story.status(pop)["peers"])


def test_underlay_capture_has_no_plaintext(enrolled_story: Story) -> None:
    story = enrolled_story
    marker = "4e4141532d4d41524b"  # "NAAS-MARK" as a ping pattern
    host = story.lab.host("desktop")
    capture = host.popen(
        ["tcpdump", "-i", "eth0", "-U", "-w", "-", "-c", "200", "udp", "port", "5640"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    target = story.overlay_ip("aws-web-1")
    result = host.run(["ping", "-c", "5", "-i", "0.2", "-p", marker, "-s", "200", target], timeout=20)
    assert result.returncode == 0, result.stdout
    time.sleep(0.5)
    capture.terminate()
    data, _ = capture.communicate(timeout=10)
    assert len(data) > 1000, "the capture saw the encrypted pings"
    assert bytes.fromhex(marker) not in data
    # and the same marker is visible inside naas0 (so the test would catch plaintext)
    inside = host.popen(["tcpdump", "-i", "naas0", "-U", "-w", "-", "-c", "4", "icmp"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    host.run(["ping", "-c", "3", "-i", "0.2", "-p", marker, "-s", "200", target], timeout=20)
    inside_data, _ = inside.communicate(timeout=10)
    assert bytes.fromhex(marker) in inside_data


def test_reused_invitation_fails_and_writes_nothing(enrolled_story: Story) -> None:
    story = enrolled_story
    url = story.invitations["desktop"]
    state = story.state_dir("desktop")
    before = sorted(str(p) for p in state.rglob("*") if not p.name.startswith("agent."))
    fresh = story.workdir / "hosts" / "reuser"
    reuse = story.run("desktop", enrollment_argv(url, "--state-dir", str(fresh)), timeout=60)
    assert reuse.returncode == 1
    assert "already used" in reuse.stderr
    assert len(reuse.stderr.strip().splitlines()) == 1
    assert not fresh.exists() or not any(fresh.rglob("*.key"))
    after = sorted(str(p) for p in state.rglob("*") if not p.name.startswith("agent."))
    assert before == after


def test_status_reports_drops_of_garbage_and_survives(enrolled_story: Story) -> None:
    story = enrolled_story
    target = story.lab.host("desktop").address
    sender = (
        "import os,socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for n in range(300): s.sendto(os.urandom(n % 90), (sys.argv[1], 5640))\n"
        "s.sendto(bytes([3,8,0,0])+bytes(60), (sys.argv[1], 5640))\n"
    )
    story.run("aws-web-1", ["python3", "-c", sender, str(target)])
    time.sleep(0.5)
    drops = story.status("desktop")["drops"]
    assert sum(drops.values()) >= 290, drops
    assert drops.get("too_short", 0) > 0
    assert story.ping("aws-web-1", story.overlay_ip("desktop")) is not None


def test_down_and_up(enrolled_story: Story) -> None:
    story = enrolled_story
    down = story.naas("ali-db-1", "down")
    assert down.returncode == 0, down.stderr
    link = story.lab.host("ali-db-1").run(["ip", "link", "show", "naas0"])
    assert link.returncode != 0, "naas0 is gone while the agent is down"
    up = story.naas("ali-db-1", "up")
    assert up.returncode == 0, up.stderr
    assert story.ping("ali-db-1", story.overlay_ip("desktop"), count=3) is not None
    status = json.loads(story.naas("ali-db-1", "status", "--json").stdout)
    assert status["network"] == NETWORK
