"""The fast data path end to end: bulk TCP across naas0 with offloads on and off.

    alpha (onprem) --naas0--> beta (aws), through the lab's underlay router

A sender in alpha streams deterministic pseudo-random bytes over TCP to beta's overlay
address; a receiver in beta hashes what arrives. Each case restarts the two agents with
or without ``--no-offload`` and checks:

- the SHA-256 and byte count that arrive are the ones sent (500 MB with both sides
  offloading, the production path; 500 MB into a member without offloads, whose agent
  segments super-frames and finishes checksums in software);
- the receiving namespace's TCP saw no checksum errors (``nstat`` TcpInCsumErrors);
- on a receiver without offloads every frame written into naas0 fits the MTU (tcpdump
  with ``greater``), while on one with offloads super-frames do appear (so the check can
  tell the difference);
- the agents report which offloads they use, and counted no bad offload headers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from e2e.conftest import requires_root, running_story
from naas.lab.story import Story

HOSTS = {"master": "onprem", "slave": "onprem", "alpha": "onprem", "beta": "aws"}
PORT = 5201
MB = 1_000_000
TRANSFER_TIMEOUT = 180.0

RECEIVER = r"""
import hashlib, json, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(60)
print("listening", flush=True)
connection, _ = server.accept()
connection.settimeout(60)
digest, total = hashlib.sha256(), 0
while True:
    chunk = connection.recv(1 << 20)
    if not chunk:
        break
    digest.update(chunk)
    total += len(chunk)
print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)
"""

SENDER = r"""
import hashlib, json, random, socket, sys
host, port, megabytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(20261122)
digest, total = hashlib.sha256(), 0
with socket.create_connection((host, port), timeout=60) as connection:
    for _ in range(megabytes):
        chunk = rng.randbytes(1_000_000)
        connection.sendall(chunk)
        digest.update(chunk)
        total += len(chunk)
print(json.dumps({"bytes": total, "sha256": digest.hexdigest()}), flush=True)
"""


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    with running_story(HOSTS, enroll=("alpha", "beta")) as story:
        yield story


def restart_agent(story: Story, host: str, offload: bool) -> None:
    story._checked(f"naas down on {host}", story.naas(host, "down"))
    args = ["up"] if offload else ["up", "--no-offload"]
    story._checked(f"naas up on {host}", story.naas(host, *args))


def wait_direct(story: Story, source: str, target: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        peers = {peer["name"]: peer for peer in story.status(source)["peers"]}
        if peers.get(target, {}).get("reach") == "direct":
            return
        time.sleep(0.2)
    raise AssertionError(f"{source} has no direct link to {target} after {timeout} s")


def tcp_checksum_errors(story: Story, host: str) -> int:
    # -a: absolute counters, not the change since a history file; -s: and write no history
    # file either (it would be left behind as /tmp/.nstat.u<uid>, whatever TMPDIR says)
    argv = ["nstat", "--ignore", "--noupdate", "--zeros", "--json", "TcpInCsumErrors"]
    out = story._checked("nstat", story.run(host, argv))
    counters = json.loads(out)["kernel"]
    return int(counters.get("TcpInCsumErrors", 0))


def transfer(story: Story, megabytes: int, frame_limit: int) -> tuple[dict[str, object], ...]:
    """Send ``megabytes`` alpha -> beta; returns (sent, received, oversized frame capture)."""
    target = story.overlay_ip("beta")
    beta, alpha = story.lab.host("beta"), story.lab.host("alpha")
    receiver = beta.popen(
        [sys.executable, "-c", RECEIVER, target, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    # frames longer than the limit written into beta's naas0 (capture stops at the first 5)
    capture = beta.popen(
        ["tcpdump", "-i", "naas0", "-nn", "-p", "-c", "5", "-q", "greater", str(frame_limit + 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "listening"
        time.sleep(1.0)  # tcpdump attaches
        sent_out = alpha.run(
            [sys.executable, "-c", SENDER, target, str(PORT), str(megabytes)], timeout=TRANSFER_TIMEOUT
        )
        assert sent_out.returncode == 0, sent_out.stderr
        received_line = receiver.stdout.readline()
        receiver.wait(timeout=30)
    finally:
        for process in (receiver, capture):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
    assert capture.stdout is not None
    oversized = [line for line in capture.stdout.read().splitlines() if line.strip()]
    return json.loads(sent_out.stdout), json.loads(received_line), {"oversized": oversized}


CASES = [
    # (alpha offloads, beta offloads, megabytes)
    pytest.param(True, True, 500, id="offloads-both"),
    pytest.param(True, False, 500, id="receiver-without-offloads"),
    pytest.param(False, True, 100, id="sender-without-offloads"),
]


@requires_root
@pytest.mark.parametrize(("alpha_offload", "beta_offload", "megabytes"), CASES)
def test_bulk_transfer_arrives_intact(
    story: Story, alpha_offload: bool, beta_offload: bool, megabytes: int
) -> None:
    restart_agent(story, "alpha", alpha_offload)
    restart_agent(story, "beta", beta_offload)
    wait_direct(story, "alpha", "beta")
    status = story.status("beta")
    mtu = int(story._checked("mtu", story.run("beta", ["cat", "/sys/class/net/naas0/mtu"])).strip())
    assert (status["agent"]["offloads"] != "none") is beta_offload
    errors_before = tcp_checksum_errors(story, "beta")

    sent, received, capture = transfer(story, megabytes, frame_limit=mtu + 14)

    assert sent == {"bytes": megabytes * MB, "sha256": sent["sha256"]}
    assert received == sent, "the bytes that arrived differ from the bytes sent"
    assert tcp_checksum_errors(story, "beta") == errors_before
    if beta_offload:
        if alpha_offload:
            assert capture["oversized"], "expected TCP super-frames written into an offloading naas0"
    else:
        assert capture["oversized"] == [], "a frame larger than the MTU reached naas0 without offloads"
    for host in ("alpha", "beta"):
        drops = story.status(host)["drops"]
        assert drops.get("bad_offload", 0) == 0
        assert drops.get("decrypt_failed", 0) == 0


LOSSY_TABLE = "naas_test_loss"
MESH_PORT = 5640  # as naas.lab.story writes the config


@requires_root
def test_lossy_underlay_cuts_super_frames_and_the_bytes_still_arrive(story: Story) -> None:
    """2 % of the datagrams reaching beta are dropped, one by one: alpha's eth0 segments
    its GSO runs (gso_max_segs 1), and an nftables rule at beta's eth0 drops at random.
    Beta reports the loss, alpha cuts its super-frames into smaller ones (of two segments
    at 2 %), and the transfer completes intact, with no checksum error in beta's kernel
    (sealed whole, 2 % of datagrams would lose ~60 % of super-frames)."""
    restart_agent(story, "alpha", True)
    restart_agent(story, "beta", True)
    wait_direct(story, "alpha", "beta")
    alpha, beta = story.lab.host("alpha"), story.lab.host("beta")
    drop = (
        f"add table netdev {LOSSY_TABLE}\n"
        f"add chain netdev {LOSSY_TABLE} in {{ type filter hook ingress device eth0 priority 0 ; }}\n"
        f"add rule netdev {LOSSY_TABLE} in udp dport {MESH_PORT} numgen random mod 100 < 2 drop\n"
    )
    story._checked("gso_max_segs", alpha.run(["ip", "link", "set", "dev", "eth0", "gso_max_segs", "1"]))
    errors_before = tcp_checksum_errors(story, "beta")
    try:
        story._checked("nft loss", beta.run(["nft", "-f", "-"], input=drop))
        sent, received, _ = transfer(story, 50, frame_limit=65535)
        to_beta = {peer["name"]: peer for peer in story.status("alpha")["peers"]}["beta"]
        from_alpha = {peer["name"]: peer for peer in story.status("beta")["peers"]}["alpha"]
    finally:
        beta.run(["nft", "delete", "table", "netdev", LOSSY_TABLE])
        alpha.run(["ip", "link", "set", "dev", "eth0", "gso_max_segs", "65535"])
    assert received == sent, "the bytes that arrived differ from the bytes sent"
    assert from_alpha["rx_lost"] > 0, "beta counted no lost messages"
    assert to_beta["superframes_cut"] is True, "alpha still seals whole super-frames into a lossy link"
    assert tcp_checksum_errors(story, "beta") == errors_before
    assert story.status("beta")["drops"].get("decrypt_failed", 0) == 0
