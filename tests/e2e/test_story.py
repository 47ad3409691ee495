"""The user's story end to end with the real commands, in namespaces (layer-3 mode)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import requires_root
from naas.daemon.runner import POLL_LINGER
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
    # the encrypted pings reach ali-db-1 straight from aws-web-1's underlay address
    receiver = story.lab.host("ali-db-1")
    capture = receiver.popen(
        ["tcpdump", "-i", "eth0", "-n", "-l", "-c", "400", "udp", "port", "5640", "and", "inbound"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)
    pinger = story.lab.host("aws-web-1")
    target = story.overlay_ip("ali-db-1")
    result = pinger.run(["ping", "-c", "30", "-i", "0.1", "-s", "1200", target], timeout=30)
    assert result.returncode == 0, result.stdout
    time.sleep(0.3)
    capture.terminate()
    lines, _ = capture.communicate(timeout=10)
    # an encrypted 1200-byte echo request: ICMP 8 + IP 20 + Ethernet 14 + NaaS overhead 41
    echo_size = f"length {1200 + 8 + 20 + 14 + 41}"
    senders = [line.split()[2].rsplit(".", 1)[0] for line in lines.splitlines() if line.endswith(echo_size)]
    assert senders.count(addresses["aws-web-1"]) >= 30, lines
    assert set(senders) == {addresses["aws-web-1"]}, "pings came straight from the sender"


def test_underlay_capture_has_no_plaintext(enrolled_story: Story) -> None:
    story = enrolled_story
    marker = "4e4141532d4d41524b"  # "NAAS-MARK" as a ping pattern
    host = story.lab.host("desktop")
    capture = host.popen(
        ["tcpdump", "-i", "eth0", "-U", "-w", "-", "-c", "200", "udp", "port", "5640"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
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
    inside = host.popen(
        ["tcpdump", "-i", "naas0", "-U", "-w", "-", "-c", "4", "icmp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    host.run(["ping", "-c", "3", "-i", "0.2", "-p", marker, "-s", "200", target], timeout=20)
    inside_data, _ = inside.communicate(timeout=10)
    assert bytes.fromhex(marker) in inside_data


def test_no_invitation_token_shows_in_a_command_line(enrolled_story: Story) -> None:
    """Clients enroll with the URL on standard input: its token is in no argv the story
    ran, and in no process running now (the agents the enrollments started included)."""
    story = enrolled_story
    tokens = [re.search(r"token=([^&]+)", url).group(1) for url in story.invitations.values()]  # type: ignore[union-attr]
    assert len(tokens) == len(story.clients) and all(len(t) >= 43 for t in tokens)
    enrollments = [
        argv for argv in story.commands if Path(argv[0]).name == "naas-enrollment" or "join" in argv
    ]
    assert len(enrollments) >= len(story.clients) and all("-" in argv for argv in enrollments)
    for argv in story.commands:
        assert not any(token in word for token in tokens for word in argv), argv
    agents = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone
        agents += "agent\0--node-dir" in words
        assert not any(token in words for token in tokens), words
    assert agents >= len(story.clients), "the agents were looked at"


def test_reused_invitation_fails_and_writes_nothing(enrolled_story: Story) -> None:
    story = enrolled_story
    url = story.invitations["desktop"]
    state = story.state_dir("desktop")
    before = sorted(str(p) for p in state.rglob("*") if not p.name.startswith("agent."))
    fresh = story.workdir / "hosts" / "reuser"
    reuse = story.run("desktop", enrollment_argv("-", "--state-dir", str(fresh)), timeout=60, input=url)
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
    down = story.naas("ali-db-1", "down", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped"] is True
    link = story.lab.host("ali-db-1").run(["ip", "link", "show", "naas0"])
    assert link.returncode != 0, "naas0 is gone while the agent is down"
    for option, value in (("--metrics", "localhost"), ("--poll-ms", "fast"), ("--poll-ms", "-1")):
        bad = story.naas("ali-db-1", "up", option, value)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert option in bad.stderr
    up = story.naas("ali-db-1", "up", "--json", "--metrics", "127.0.0.1:9640", "--poll-ms", "0")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["started"] is True
    assert story.ping("ali-db-1", story.overlay_ip("desktop"), count=3) is not None
    status = json.loads(story.naas("ali-db-1", "status", "--json").stdout)
    assert status["network"] == NETWORK
    assert status["agent"]["poll_ms"] == 0 and status["agent"]["polls"] == 0, "--poll-ms 0: no polling"

    scrape = story.lab.host("ali-db-1").run(
        [
            sys.executable,
            "-c",
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9640/metrics').read().decode())",
        ]
    )
    assert scrape.returncode == 0, scrape.stderr
    families = {f.name: f for f in text_string_to_metric_families(scrape.stdout)}
    members = families["naas_members"].samples[0].value
    assert members == len(status["peers"]) + 1
    rx = {
        s.labels["peer"]: s.value for s in families["naas_peer_rx_bytes"].samples if s.name.endswith("_total")
    }
    assert rx["desktop"] > 0, "the ping's bytes are counted"


def test_agent_polls_while_frames_flow_and_stops_when_idle(enrolled_story: Story) -> None:
    """By default the agent polls every 2 ms for POLL_LINGER s after a frame, then stops."""
    story = enrolled_story

    def polls() -> int:
        count: int = story.status("desktop")["agent"]["polls"]
        return count

    time.sleep(POLL_LINGER)
    quiet = None
    for _ in range(8):  # a second without polls; naas0 may still send a late IPv6 solicitation
        before = polls()
        time.sleep(1.0)
        if polls() == before:
            quiet = before
            break
    assert quiet is not None, "the agent kept polling with no traffic on naas0"
    before = story.status("desktop")["agent"]
    assert story.ping("aws-web-1", story.overlay_ip("desktop"), count=5) is not None
    assert polls() - quiet >= 50, "five pings over 0.8 s: polls every 2 ms in between"
    after = story.status("desktop")["agent"]
    assert after["warm_ups"] - before["warm_ups"] >= 40, "polls that found nothing warmed the path up"
    assert after["warm_ups_failed"] == 0
    assert after["kernel_warm_ups"] - before["kernel_warm_ups"] >= 40, "... and echoed through loopback"
    for lane in ("express_received", "express_sent"):  # the requests in, the replies out
        assert after[lane] - before[lane] >= 4, f"{lane}: pings on an active link take the express lane"


def test_a_burst_after_a_lull_is_answered_in_full(enrolled_story: Story) -> None:
    """After a lull the agent sends the first frame on the express lane and goes back to
    sleep without reading on (runner.Agent._alone): the frames queued behind it must still
    go, each answered, when the event loop comes back for them."""
    story = enrolled_story
    target = story.overlay_ip("desktop")
    assert story.ping("aws-web-1", target, count=2) is not None  # the link is up and active
    before = story.status("aws-web-1")["agent"]["express_sent"]
    for _ in range(3):
        time.sleep(0.05)  # a lull, then 16 echo requests at once (-l: without waiting for replies)
        result = story.lab.host("aws-web-1").run(
            ["ping", "-n", "-q", "-c", "16", "-l", "16", "-W", "2", target], timeout=15
        )
        assert result.returncode == 0 and " 16 received" in result.stdout, result.stdout
    assert story.status("aws-web-1")["agent"]["express_sent"] > before, "the bursts began on the express lane"


def test_naas_drawing_writes_a_png_of_the_mesh(enrolled_story: Story, tmp_path: Path) -> None:
    story = enrolled_story
    script = Path(sys.executable).with_name("naas-drawing")
    out = tmp_path / "mesh.png"
    result = story.run(
        "desktop", [str(script), "-o", str(out), "--state-dir", str(story.state_dir("desktop"))]
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        image.load()  # decodes every pixel
        assert image.format == "PNG"
        assert 300 <= image.width <= 10_000 and 200 <= image.height <= 10_000, image.size
    default = story.run(
        "desktop",
        ["sh", "-c", f"cd {tmp_path} && {script} --format svg --state-dir {story.state_dir('desktop')}"],
    )
    assert default.returncode == 0, default.stderr
    svg = (tmp_path / f"naas-{NETWORK}.svg").read_text().replace("&#45;", "-")  # dot escapes "-"
    assert "<svg" in svg and "ali-db-1" in svg and "master" in svg
    bad = story.run("desktop", [str(script), "-o", str(tmp_path / "no" / "such" / "dir.png")])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


DHCP_SCRIPT = """#!/bin/sh
# records what the stock DHCP client was told; applies the address on "bound"
cd "@DIR@" || exit 1  # dhclient clears the environment: never write where it was started
env | grep -E '^(ip|new_ip_address|subnet|mask|new_subnet_mask|router|mtu|new_interface_mtu|reason)=' \\
    | sort > "@OUT@.$1${reason:+.$reason}"
case "$1$reason" in bound|BOUND|REBOOT) ip addr replace "${ip:-$new_ip_address}/16" dev naas0 ;; esac
exit 0
"""


@pytest.mark.parametrize("client", ["udhcpc", "dhclient"])
def test_stock_dhcp_client_gets_the_enrolled_address(enrolled_story: Story, client: str) -> None:
    story = enrolled_story
    host = story.lab.host("aws-web-1")
    enrolled = story.overlay_ip("aws-web-1")
    out = story.workdir / f"dhcp-{client}"
    script = story.workdir / f"dhcp-script-{client}.sh"  # dhclient clears the environment
    script.write_text(DHCP_SCRIPT.replace("@OUT@", str(out)).replace("@DIR@", str(story.workdir)))
    script.chmod(0o755)
    assert host.run(["ip", "addr", "flush", "dev", "naas0"]).returncode == 0
    if client == "udhcpc":
        argv = ["udhcpc", "-i", "naas0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", str(script)]
    else:
        lease = story.workdir / "dhclient.leases"
        # dhclient backgrounds itself once bound; its pid file lets us stop it
        argv = [
            "dhclient",
            "-1",
            "-sf",
            str(script),
            "-lf",
            str(lease),
            "-pf",
            str(story.workdir / "dhclient.pid"),
            "naas0",
        ]
    result = host.run(argv, timeout=40)
    pid_file = story.workdir / "dhclient.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    assert result.returncode == 0, result.stderr
    recorded = "".join(p.read_text() for p in story.workdir.glob(f"dhcp-{client}.*"))
    assert f"={enrolled}\n" in recorded, recorded
    assert "mtu=1417" in recorded or "new_interface_mtu=1417" in recorded, recorded
    shown = host.run(["ip", "-4", "-o", "addr", "show", "dev", "naas0"]).stdout
    assert f"inet {enrolled}/16" in shown
    assert story.ping("aws-web-1", story.overlay_ip("desktop")) is not None
