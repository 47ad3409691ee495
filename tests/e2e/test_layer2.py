"""Without `subnet`, NaaS is a pure layer-2 switch.

    desktop (onprem) ==naas0== aws-web-1 (aws)
       |
       br0: naas0 + veth -> "vm" namespace (192.168.50.100, its own MAC)

No addresses are set, nothing is answered locally; hosts pick their own addresses and
a namespace bridged behind a member is reachable with its own MAC, and another member
cannot take that MAC over while the namespace talks (port security, docs/policy.md).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
from raw_frames import ethernet, raw

from conftest import requires_root, running_story
from naas.lab.story import Story

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {"master": "onprem", "slave": "onprem", "desktop": "onprem", "aws-web-1": "aws"}


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    with running_story(HOSTS, layer3=False) as story:
        yield story


def sh(story: Story, host: str, *commands: str) -> None:
    for command in commands:
        result = story.lab.host(host).run(command.split(), timeout=10)
        assert result.returncode == 0, (command, result.stderr)


def test_no_addresses_are_configured(story: Story) -> None:
    for host in story.lab.hosts:
        shown = story.lab.host(host).run(["ip", "-4", "-o", "addr", "show", "dev", "naas0"])
        assert shown.returncode == 0 and shown.stdout.strip() == "", (host, shown.stdout)
        assert story.status(host)["node"]["ip"] is None


def test_user_chosen_addresses_talk(story: Story) -> None:
    sh(story, "desktop", "ip addr add 192.168.50.1/24 dev naas0")
    sh(story, "aws-web-1", "ip addr add 192.168.50.2/24 dev naas0")
    assert story.ping("desktop", "192.168.50.2", count=3) is not None
    assert story.ping("aws-web-1", "192.168.50.1", count=3) is not None


def test_namespace_bridged_behind_a_member_is_reachable(story: Story) -> None:
    vm = f"naas-vm-{secrets.token_hex(3)}"
    desktop = story.lab.host("desktop").namespace
    subprocess.run(["ip", "netns", "add", vm], check=True)
    try:
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "vmport",
                "netns",
                desktop,
                "type",
                "veth",
                "peer",
                "name",
                "vm0",
                "netns",
                vm,
            ],
            check=True,
        )
        sh(
            story,
            "desktop",
            "ip link add br0 type bridge",
            "ip link set naas0 master br0",
            "ip link set vmport master br0",
            "ip link set vmport up",
            "ip link set br0 up",
        )
        vm_run = ["ip", "netns", "exec", vm]
        subprocess.run([*vm_run, "ip", "addr", "add", "192.168.50.100/24", "dev", "vm0"], check=True)
        subprocess.run([*vm_run, "ip", "link", "set", "vm0", "mtu", "1400", "up"], check=True)
        if story.lab.host("aws-web-1").run(["ip", "-4", "-o", "addr", "show", "dev", "naas0"]).stdout == "":
            sh(story, "aws-web-1", "ip addr add 192.168.50.2/24 dev naas0")
        assert story.ping("aws-web-1", "192.168.50.100", count=3, wait=3) is not None
        vm_mac = subprocess.run(
            [*vm_run, "cat", "/sys/class/net/vm0/address"], capture_output=True, text=True, check=True
        ).stdout.strip()
        neighbours = story.lab.host("aws-web-1").run(["ip", "neigh", "show", "192.168.50.100"]).stdout
        assert vm_mac in neighbours, "the VM answered with its own MAC"
        assert story.status("aws-web-1")["learned_macs"] >= 1
        _another_member_cannot_take_the_vms_mac(story, vm_mac)
    finally:
        subprocess.run(["ip", "netns", "pids", vm], capture_output=True)
        subprocess.run(["ip", "netns", "delete", vm], capture_output=True)


def _another_member_cannot_take_the_vms_mac(story: Story, vm_mac: str) -> None:
    """master (a member too) sends frames with the VM's MAC as their source while
    aws-web-1 pings the VM: the MAC does not move to master (it was heard behind desktop
    less than 2 s before: core/switch.py), the frames are dropped as spoofed_source, and
    not one ping is lost."""
    web = story.lab.host("aws-web-1")
    web_mac = bytes.fromhex(web.run(["cat", "/sys/class/net/naas0/address"]).stdout.strip().replace(":", ""))
    claimed = bytes.fromhex(vm_mac.replace(":", ""))
    before = story.status("aws-web-1")["drops"].get("spoofed_source", 0)
    pinging = web.popen(
        ["ping", "-n", "-q", "-c", "30", "-i", "0.1", "-W", "1", "192.168.50.100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with raw(story, "master") as master:
            for _ in range(20):
                master.send(ethernet(web_mac, claimed, 0x88B5, b"this MAC is mine now"))
                time.sleep(0.1)
        out, _ = pinging.communicate(timeout=30)
    finally:
        if pinging.poll() is None:
            pinging.kill()
            pinging.wait(timeout=5)
    assert " 0% packet loss" in out, out
    spoofed = story.status("aws-web-1")["drops"].get("spoofed_source", 0) - before
    assert spoofed == 20, f"{spoofed} of master's 20 frames counted as spoofed_source"
