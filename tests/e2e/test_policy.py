"""Stateful security groups (issue 23) on a namespace lab, with stock clients.

    onprem: master, slave (PoPs)      aws: web-1 [web]           alibaba: router
            ops-1 [ops]                    guest (no group)               allowed 10.77.0.0/24
                                           agent started with NAAS_SKIP_EGRESS_FILTER=1:
                                           sends what its own rules deny, so that what
                                           reaches web-1 is decided by web-1 alone

web-1's agent serves metrics on 127.0.0.1:9640 (enrolled with --metrics); guest's agent
inherits NAAS_SKIP_EGRESS_FILTER=1 from its enrollment (what `naas down` and `naas up`
with that variable would give, without two slow restarts).

The policies, applied in this order with `naas apply` on master (the tests depend on it:
run with `-p no:randomly`):

    open ------> deny ------> rules ----------------> rules - ssh -----> rules + ethertype
    (enroll)     test 1       tests 2-5               test 6             tests 7-10
                 default      ssh-from-ops: tcp/22    the live cut       ssh-from-ops back,
                 deny, no     ops -> web              of an established  lab-protocol:
                 rule         ping-web: icmp any->web connection         0x88b5 any -> any
                              mdns-web: udp/5353 any->web

1. default deny: every pair is cut, the control plane is not (status, DHCP renewal);
   the receiver counts what a member that skips its own check sends (status, metrics).
2. tags: group:ops reaches group:web on tcp/22, guest does not.
3. state: replies need no rule (TCP, ICMP echo, UDP), the reverse direction is a new
   flow, an ICMP error about a permitted flow comes back.
4. the receiver decides: guest's frames leave guest and are dropped at web-1.
5. port security: forged ARP and a borrowed MAC/IP are dropped as spoofed_source; a
   member's allowed_addresses are accepted as sources, someone else's are not.
6. a live change cuts an established connection at its next packet.
7. through a relay: the receiver decides, the relay does no policy work.
8. non-IP frames by EtherType, and frames behind an 802.1Q tag.
9. `naas policy trace` and `naas status` explain the decisions.
10. a member that skips its egress check still tracks its allowed flows: it gets their replies.

Every `naas` command costs seconds of interpreter start on a loaded machine, so the
bounded waits poll the agents' control sockets directly: the same answer `naas status
--json` prints (cli/member.py fetch_status); the CLI itself is checked in tests 1 and 9.
Raw frames, UDP and captures use sockets opened inside a host's namespace from this
process (Namespace.entered); long-lived servers and clients are processes started with
the lab's popen and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from raw_frames import arp_reply, capture, carrying, ethernet, icmp_echo, ipv4, raw, socket_in, tcp_syn

from conftest import build_story, requires_root, teardown_story
from naas.daemon import control
from naas.daemon.state import client_node_dir, pop_node_dir
from naas.lab.story import NETWORK, POPS, Story, enrollment_argv, naas_argv

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {
    "master": "onprem",
    "slave": "onprem",
    "ops-1": "onprem",
    "web-1": "aws",
    "guest": "aws",
    "router": "alibaba",
}
MEMBERS = list(HOSTS)
CONFIG: dict[str, Any] = {
    "groups": {"ops-1": ("ops",), "web-1": ("web",)},
    "allowed_addresses": {"router": ("10.77.0.0/24",)},
}
METRICS = "127.0.0.1:9640"  # web-1's metrics port
SKIP_EGRESS = "NAAS_SKIP_EGRESS_FILTER=1"  # guest's agent
ROUTED_SOURCE = "10.77.0.5"  # in router's allowed_addresses
TOOLS = ("ping", "curl", "udhcpc", "nft")
APPLY_LIMIT = 2.0  # s: every member holds a new document this soon after `naas apply` returns

DENY_ALL = """
[policy]
default = "deny"
"""
_SSH = """
[[policy.rule]]
name = "ssh-from-ops"
from = ["group:ops"]
to = ["group:web"]
proto = "tcp"
ports = ["22"]
action = "allow"
"""
_PING_AND_MDNS = """
[[policy.rule]]
name = "ping-web"
from = ["any"]
to = ["group:web"]
proto = "icmp"
action = "allow"

[[policy.rule]]
name = "mdns-web"
from = ["any"]
to = ["group:web"]
proto = "udp"
ports = ["5353"]
action = "allow"
"""
_ETHERTYPE = """
[[policy.rule]]
name = "lab-protocol"
from = ["any"]
to = ["any"]
proto = "ethertype:0x88b5"
action = "allow"
"""
RULES = DENY_ALL + _SSH + _PING_AND_MDNS
WITHOUT_SSH = DENY_ALL + _PING_AND_MDNS
WITH_ETHERTYPE = RULES + _ETHERTYPE

APPLIED: dict[str, str] = {"policy": ""}  # the policy in force (text), "" for the open one

# -- the lab --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    """PoPs up, the four clients enrolled in parallel (guest with its egress check off,
    web-1 with metrics), every member reaching every other directly."""
    missing = [tool for tool in TOOLS if not _which(tool)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    started = time.monotonic()
    lab, story = build_story(hosts=HOSTS)
    try:
        story.write_config(**CONFIG)
        story.init()
        for pop in POPS:
            story.start_pop(pop)
        urls = story.invite()
        with ThreadPoolExecutor(len(story.clients)) as pool:
            futures = {client: pool.submit(_enroll, story, client, urls[client]) for client in story.clients}
            results = {client: future.result() for client, future in futures.items()}
        for client, result in results.items():
            assert result.returncode == 0, f"enrolling {client}: {result.stderr}"
        meshed = _until(lambda: all(_all_direct(story, host) for host in MEMBERS), 30)
        assert meshed is not None, {host: _paths(story, host) for host in MEMBERS}
        addresses = [_ip(story, host) for host in MEMBERS]
        assert len(set(addresses)) == len(MEMBERS), addresses
        log = client_node_dir(story.state_dir("guest"), NETWORK).log_path.read_text()
        assert "NAAS_SKIP_EGRESS_FILTER=1" in log, "guest's agent runs without its egress check"
        print(f"\nlab: built, PoPs up, 4 clients enrolled and meshed in {time.monotonic() - started:.1f} s")
        yield story
    finally:
        teardown_story(lab, story)


def _which(tool: str) -> bool:
    return subprocess.run(["which", tool], capture_output=True).returncode == 0


def _enroll(story: Story, client: str, url: str) -> subprocess.CompletedProcess[str]:
    state = ["--state-dir", str(story.state_dir(client))]
    if client == "guest":
        argv = ["env", SKIP_EGRESS, *enrollment_argv("-", *state)]
    elif client == "web-1":
        argv = enrollment_argv("-", "--metrics", METRICS, *state)
    else:
        argv = enrollment_argv("-", *state)
    return story.run(client, argv, 90, input=url + "\n")


@pytest.fixture(scope="module")
def processes(story: Story) -> Iterator[Processes]:
    started = Processes(story)
    yield started
    started.stop_all()


class Processes:
    """Background processes in the lab's hosts, each stopped by its PID."""

    def __init__(self, story: Story) -> None:
        self.story = story
        self.running: dict[str, subprocess.Popen[Any]] = {}

    def start(self, key: str, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        self.stop(key)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = self.story.lab.host(host).popen(argv, **kwargs)
        self.running[key] = process
        return process

    def stop(self, key: str) -> None:
        process = self.running.pop(key, None)
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=3)

    def stop_all(self) -> None:
        for key in list(self.running):
            self.stop(key)


# -- status, polled at the agents' control sockets ------------------------------------------


def _status(story: Story, host: str) -> dict[str, Any]:
    """What `naas status --json` prints on ``host``, from its agent's control socket."""
    state = story.state_dir(host)
    node = pop_node_dir(state, NETWORK, host) if host in POPS else client_node_dir(state, NETWORK)
    answer = control.request(node.socket_path, "status")
    assert answer.get("ok"), answer
    status: dict[str, Any] = answer["status"]
    return status


def _policy(story: Story, host: str) -> dict[str, Any]:
    policy: dict[str, Any] = _status(story, host)["policy"]
    return policy


def _denied_in(story: Story, host: str, rule: str = "default") -> int:
    return int(_policy(story, host)["denied_in"].get(rule, 0))


def _denied_out(story: Story, host: str, rule: str = "default") -> int:
    return int(_policy(story, host)["denied_out"].get(rule, 0))


def _hits(story: Story, host: str, rule: str) -> int:
    return int(_policy(story, host)["hits"].get(rule, 0))


def _spoofed(story: Story, host: str) -> int:
    return int(_status(story, host)["drops"].get("spoofed_source", 0))


def _peer(story: Story, host: str, name: str) -> dict[str, Any]:
    return next(p for p in _status(story, host)["peers"] if p["name"] == name)


def _paths(story: Story, host: str) -> dict[str, str]:
    return {p["name"]: p["path"] for p in _status(story, host)["peers"]}


def _all_direct(story: Story, host: str) -> bool:
    paths = _paths(story, host)
    return len(paths) == len(MEMBERS) - 1 and all(path == "direct" for path in paths.values())


def _until(predicate: Callable[[], bool], limit: float, step: float = 0.05) -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``limit``."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started >= limit:
            return None
        time.sleep(step)


def _ip(story: Story, host: str) -> str:
    return str(_status(story, host)["node"]["ip"]).split("/")[0]


def _mac(story: Story, host: str) -> bytes:
    return bytes.fromhex(_status(story, host)["node"]["mac"].replace(":", ""))


# -- applying a policy ----------------------------------------------------------------------


def _apply(story: Story, policy: str, label: str) -> dict[str, float]:
    """`naas apply` of naas.toml with ``policy``; asserts every member holds the new
    document within APPLY_LIMIT s of the command returning. Returns the timings."""
    if APPLIED["policy"] == policy:
        return {}
    story.write_config(**CONFIG, policy=policy)
    started = time.time()
    result = story.naas(
        "master", "apply", "--config", str(story.config_path), "--store", story.store_url, timeout=60
    )
    returned = time.time()
    assert result.returncode == 0, result.stderr
    found = re.search(r"network document version (\d+)", result.stdout)
    assert found, result.stdout
    version = int(found.group(1))
    held: dict[str, float] = {}

    def everyone_holds_it() -> bool:
        for host in MEMBERS:
            if host not in held:
                document = _status(story, host)["document"]
                if document["version"] >= version:
                    held[host] = document["applied_at"]
        return len(held) == len(MEMBERS)

    _until(everyone_holds_it, APPLY_LIMIT + 3)  # longer than the limit, to report how late
    missing = sorted(set(MEMBERS) - set(held))
    last = max(held.values(), default=returned)
    print(
        f"\n{label}: `naas apply` took {returned - started:.2f} s; every member held document"
        f" version {version} {last - returned:+.2f} s after it returned ({last - started:.2f} s after it"
        f" started)"
    )
    assert not missing, f"{missing} did not take document version {version} within the wait"
    assert last - returned <= APPLY_LIMIT, f"the last member took the document {last - returned:.2f} s late"
    APPLIED["policy"] = policy
    return {"started": started, "returned": returned, "last": last}


# -- stock clients --------------------------------------------------------------------------


def _ping_argv(target: str, count: int, interval: float = 0.2, wait: float = 1.0) -> list[str]:
    return ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), target]


def _received(ping_output: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output)
    assert found, ping_output
    return int(found.group(1)), int(found.group(2))


def _ping(story: Story, source: str, target: str, count: int = 3) -> tuple[int, int]:
    """(sent, received) of a ping from ``source`` to overlay address ``target``."""
    done = story.lab.host(source).run(_ping_argv(target, count), timeout=count * 0.2 + 10)
    return _received(done.stdout)


def _curl_argv(url: str, max_time: float) -> list[str]:
    return ["curl", "-sS", "-o", "-", "-w", "\nhttp=%{http_code}", "--max-time", str(max_time), url]


def _curl(story: Story, source: str, url: str, max_time: float = 3) -> subprocess.CompletedProcess[str]:
    return story.lab.host(source).run(_curl_argv(url, max_time), timeout=max_time + 10)


def _in_parallel(story: Story, jobs: dict[Any, tuple[str, list[str]]], timeout: float) -> dict[Any, Any]:
    """Run (host, argv) jobs at the same time; their CompletedProcess by key."""
    processes = {
        key: story.lab.host(host).popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, (host, argv) in jobs.items()
    }
    results = {}
    deadline = time.monotonic() + timeout
    try:
        for key, process in processes.items():
            out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=3)
    return results


WEB_BODY = "naas policy e2e: hello from web-1\n"


def _start_web_server(story: Story, processes: Processes) -> str:
    """`python3 -m http.server 22` on web-1's overlay address; returns its URL."""
    processes.stop("lines-server")
    www = story.workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "hello.txt").write_text(WEB_BODY)
    web = _ip(story, "web-1")
    argv = [sys.executable, "-m", "http.server", "22", "--bind", web, "--directory", str(www)]
    processes.start("http", "web-1", argv)
    assert _until(lambda: _listening(story, "web-1", web, 22), 10) is not None, "http.server on web-1:22"
    return f"http://{web}:22/hello.txt"


def _listening(story: Story, host: str, address: str, port: int) -> bool:
    with socket_in(story, host, socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


# -- 1. default deny ------------------------------------------------------------------------

PAIRS = [
    ("ops-1", "web-1"),
    ("web-1", "master"),
    ("router", "ops-1"),
    ("slave", "guest"),
    ("master", "router"),
]


def test_default_deny_cuts_every_pair_but_not_the_control_plane(story: Story) -> None:
    ips = {host: _ip(story, host) for host in MEMBERS}
    opened = _in_parallel(story, {pair: (pair[0], _ping_argv(ips[pair[1]], 1)) for pair in PAIRS}, 15)
    assert all(_received(done.stdout)[1] == 1 for done in opened.values()), "the open network pings"

    _apply(story, DENY_ALL, "default deny")
    jobs: dict[Any, tuple[str, list[str]]] = {}
    for source, target in PAIRS:
        jobs["ping", source, target] = (source, _ping_argv(ips[target], 2))
        # nothing listens on :80: a SYN that arrives is refused at once (curl exit 7), a
        # dropped one times out (exit 28)
        jobs["tcp", source, target] = (source, _curl_argv(f"http://{ips[target]}:80/", 2))
    # the `naas status --json` command itself, meanwhile
    jobs["status"] = (
        "ops-1",
        naas_argv("status", "--json", "--network", NETWORK, "--state-dir", str(story.state_dir("ops-1"))),
    )
    results = _in_parallel(story, jobs, 30)
    answered = {key: _received(done.stdout) for key, done in results.items() if key[0] == "ping"}
    assert all(got == 0 for _, got in answered.values()), answered
    connected = {key: done.returncode for key, done in results.items() if key[0] == "tcp"}
    assert all(code == 28 for code in connected.values()), f"curl exit codes (28: timed out): {connected}"

    assert results["status"].returncode == 0, results["status"].stderr
    status = json.loads(results["status"].stdout)
    assert status["document"]["version"] == _status(story, "ops-1")["document"]["version"]
    assert status["policy"]["default"] == "deny" and status["policy"]["enforcing"] is True
    assert status["policy"]["rules"] == 0

    _dhcp_renewal_still_gets_the_address(story, "ops-1", ips["ops-1"])

    # the receiver's check: guest's agent sends what the policy denies, web-1 drops it
    web = ips["web-1"]
    before_in, before_out = _denied_in(story, "web-1"), _denied_out(story, "guest")
    sent, got = _ping(story, "guest", web, count=3)
    assert got == 0
    rise = _denied_in(story, "web-1") - before_in
    assert rise >= sent, f"web-1 denied_in.default rose by {rise} for {sent} echo requests"
    assert _denied_out(story, "guest") == before_out == 0, "guest's agent does not check its own frames"
    metrics = story.lab.host("web-1").run(["curl", "-sS", "--max-time", "3", f"http://{METRICS}/metrics"])
    assert metrics.returncode == 0, metrics.stderr
    counted = _metric(metrics.stdout, "naas_policy_denied_total", rule="default", direction="in")
    assert counted is not None and counted >= before_in + sent, metrics.stdout
    print(
        f"default deny: web-1 denied_in.default {before_in} -> {before_in + rise} for {sent} pings;"
        f" naas_policy_denied_total{{rule=default,direction=in}} = {counted:g}"
    )


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _dhcp_renewal_still_gets_the_address(story: Story, host: str, address: str) -> None:
    """The lab runs no DHCP client: the agent sets naas0's address by netlink and answers
    DHCP on naas0 itself. busybox udhcpc (script /bin/true: it changes nothing) gets the
    lease, then renews it on SIGUSR1 (its unicast RENEW goes to the server identifier, the
    host's own address, so it falls back to a broadcast renew, which the agent answers)."""
    argv = ["udhcpc", "-f", "-i", "naas0", "-t", "3", "-T", "1", "-s", "/bin/true"]
    process = story.lab.host(host).popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lease = f"lease of {address} obtained"
    try:
        started = time.monotonic()
        output = _read_until(process, lease, 8)
        assert lease in output, output
        leased = time.monotonic() - started
        process.send_signal(signal.SIGUSR1)
        renewed = _read_until(process, lease, 8)
        assert lease in renewed and "renew" in renewed, renewed
        print(
            f"default deny: udhcpc on {host}'s naas0 got {address} in {leased:.2f} s, renewed it in"
            f" {time.monotonic() - started - leased:.2f} s"
        )
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    addresses = story.lab.host(host).run(["ip", "-4", "-o", "addr", "show", "dev", "naas0"]).stdout
    assert f"inet {address}/" in addresses, addresses


def _read_until(process: subprocess.Popen[bytes], wanted: str, seconds: float) -> str:
    """What ``process`` prints until a line holds ``wanted`` (or ``seconds`` pass)."""
    assert process.stdout is not None
    text = ""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + seconds
        while wanted not in text and (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    return text


# -- 2. tags --------------------------------------------------------------------------------


def test_tags_let_ops_reach_web_on_22_and_nobody_else(story: Story, processes: Processes) -> None:
    _apply(story, RULES, "rules")
    url = _start_web_server(story, processes)
    hits = _hits(story, "web-1", "ssh-from-ops")
    fetched = _curl(story, "ops-1", url)
    assert fetched.returncode == 0 and fetched.stdout.endswith("http=200"), (fetched.stdout, fetched.stderr)
    assert WEB_BODY in fetched.stdout
    assert _hits(story, "web-1", "ssh-from-ops") > hits, "web-1 counted the flow under its rule"

    denied = _denied_in(story, "web-1")
    refused = _curl(story, "guest", url, max_time=3)
    assert refused.returncode == 28, (
        f"guest's curl: exit {refused.returncode} (28: timed out) {refused.stderr}"
    )
    rise = _denied_in(story, "web-1") - denied
    assert rise >= 2, f"web-1 denied_in.default rose by {rise}: a SYN and its retransmission at least"
    print(f"tags: ops-1 fetched web-1:22; guest's curl timed out, web-1 denied {rise} of its SYNs")


# -- 3. state -------------------------------------------------------------------------------


def test_replies_need_no_rule_and_the_reverse_is_a_new_flow(story: Story, processes: Processes) -> None:
    _apply(story, RULES, "rules")
    web, guest = _ip(story, "web-1"), _ip(story, "guest")
    url = f"http://{web}:22/hello.txt"
    if "http" not in processes.running:
        url = _start_web_server(story, processes)
    # TCP: no rule lets web-1 send to ops-1; the replies pass as part of ops-1's connection
    web_out, ops_in = _denied_out(story, "web-1"), _denied_in(story, "ops-1")
    fetched = _curl(story, "ops-1", url)
    assert fetched.returncode == 0 and WEB_BODY in fetched.stdout, fetched.stderr
    assert (_denied_out(story, "web-1"), _denied_in(story, "ops-1")) == (web_out, ops_in)

    # ICMP echo: router (any) -> web-1 by rule, the replies by state
    assert _ping(story, "router", web, count=3) == (3, 3), "router pings web-1 (ping-web)"
    # guest's requests are accepted and answered by web-1 too (guest itself: test 10)
    hits, web_out = _hits(story, "web-1", "ping-web"), _denied_out(story, "web-1")
    _ping(story, "guest", web, count=2)
    assert _hits(story, "web-1", "ping-web") > hits
    assert _denied_out(story, "web-1") == web_out, "web-1's echo replies left through its table"
    # the other way is a new flow, which no rule allows: web-1's own check stops it
    web_out = _denied_out(story, "web-1")
    sent, got = _ping(story, "web-1", guest, count=3)
    assert got == 0, "web-1 -> guest is not allowed"
    assert _denied_out(story, "web-1") - web_out >= sent

    # UDP: a datagram to udp/5353 (mdns-web) and the answer
    with (
        socket_in(story, "web-1", socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket_in(story, "router", socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind((web, 5353))
        server.settimeout(3)
        client.settimeout(3)
        client.connect((web, 5353))
        client.send(b"question from router")
        data, peer = server.recvfrom(100)
        assert data == b"question from router"
        server.sendto(b"answer from web-1", peer)
        assert client.recv(100) == b"answer from web-1", "the reply came back without a rule"
    # an ICMP error about a permitted flow: a new datagram to the allowed port, nobody listens
    with socket_in(story, "router", socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        client.connect((web, 5353))
        client.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            client.recv(100)  # the port unreachable came back through both firewalls
    print(
        "state: TCP, ICMP echo and UDP replies passed with no rule; web-1 -> guest ping denied;"
        " the port unreachable for a permitted UDP flow came back"
    )


# -- 4. the receiver decides ----------------------------------------------------------------


def test_the_receiver_drops_what_the_sender_skips(story: Story) -> None:
    _apply(story, RULES, "rules")
    web = _ip(story, "web-1")
    tx = _peer(story, "guest", "web-1")["tx_packets"]
    guest_out, web_in = _denied_out(story, "guest"), _denied_in(story, "web-1")
    count = 5
    with (
        socket_in(story, "web-1", socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket_in(story, "guest", socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind((web, 9999))  # no rule for udp/9999
        for number in range(count):
            client.sendto(b"denied %d" % number, (web, 9999))
        assert _until(lambda: _denied_in(story, "web-1") - web_in >= count, 3) is not None
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.recvfrom(100)
    left = _peer(story, "guest", "web-1")["tx_packets"] - tx
    assert left >= count, f"guest sent {left} packets to web-1"
    assert _denied_out(story, "guest") == guest_out == 0
    print(
        f"receiver: guest sent {left} packets to web-1 (denied_out stays 0), web-1 dropped"
        f" {_denied_in(story, 'web-1') - web_in} on arrival"
    )


# -- 5. port security -----------------------------------------------------------------------


def test_port_security_drops_forged_sources(story: Story) -> None:
    _apply(story, RULES, "rules")
    ip = {host: _ip(story, host) for host in ("ops-1", "web-1", "guest")}
    mac = {host: _mac(story, host) for host in ("ops-1", "web-1", "guest", "router")}
    ops_mac = _status(story, "ops-1")["node"]["mac"]
    assert _ping(story, "ops-1", ip["web-1"], count=1) == (1, 1)  # web-1 has ops-1 in its ARP cache
    spoofed = _spoofed(story, "web-1")
    forged_arp = ethernet(
        mac["web-1"], mac["guest"], 0x0806, arp_reply(mac["guest"], ip["ops-1"], mac["web-1"], ip["web-1"])
    )
    forged_ip = ethernet(
        mac["web-1"],
        mac["ops-1"],
        0x0800,
        ipv4(ip["ops-1"], ip["web-1"], 1, icmp_echo(b"MARK-forged-ops-1")),
    )
    pinging = story.lab.host("ops-1").popen(
        _ping_argv(ip["web-1"], 20, interval=0.1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with raw(story, "guest") as guest, raw(story, "web-1") as sniffer:
            for _ in range(10):
                guest.send(forged_arp)
                guest.send(forged_ip)
                time.sleep(0.1)
            seen = capture(sniffer, 0.3)
        output, _ = pinging.communicate(timeout=15)
    finally:
        if pinging.poll() is None:
            os.kill(pinging.pid, signal.SIGTERM)
            pinging.wait(timeout=5)
    assert _received(output) == (20, 20), f"ops-1 -> web-1 lost pings during the forgery: {output}"
    neighbour = story.lab.host("web-1").run(["ip", "neigh", "show", ip["ops-1"], "dev", "naas0"]).stdout
    assert f"lladdr {ops_mac}" in neighbour, f"web-1's ARP entry for ops-1: {neighbour!r}"
    assert not carrying(seen, b"MARK-forged-ops-1")
    assert not [f for f in seen if f[12:14] == b"\x08\x06" and f[6:12] == mac["guest"]], "no forged ARP"
    rise = _spoofed(story, "web-1") - spoofed
    assert rise >= 20, f"web-1 spoofed_source rose by {rise} for 20 forged frames"

    # router may send from its allowed_addresses; guest may not
    with raw(story, "web-1") as sniffer, raw(story, "router") as router, raw(story, "guest") as guest:
        spoofed = _spoofed(story, "web-1")
        marker = b"MARK-routed-source"
        router.send(
            ethernet(
                mac["web-1"], mac["router"], 0x0800, ipv4(ROUTED_SOURCE, ip["web-1"], 1, icmp_echo(marker))
            )
        )
        assert carrying(capture(sniffer, 3, until=marker), marker), "router's 10.77.0.5 reaches web-1"
        assert _spoofed(story, "web-1") == spoofed
        marker = b"MARK-borrowed-source"
        guest.send(
            ethernet(
                mac["web-1"], mac["guest"], 0x0800, ipv4(ROUTED_SOURCE, ip["web-1"], 1, icmp_echo(marker))
            )
        )
        assert _until(lambda: _spoofed(story, "web-1") == spoofed + 1, 3) is not None
        assert not carrying(capture(sniffer, 0.3), marker)
    print(
        f"port security: 20 forged frames dropped (spoofed_source +{rise}), 20/20 pings from ops-1"
        f" answered, ARP entry kept; {ROUTED_SOURCE} accepted from router only"
    )


# -- 6. a live change -----------------------------------------------------------------------

LINES_SERVER = """
import os, socket, sys
address, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((address, port))
server.listen(1)
open(out + ".ready", "w").close()
connection, _ = server.accept()
count = 0
while data := connection.recv(4096):
    count += data.count(b"\\n")
    with open(out + ".tmp", "w") as file:
        file.write(str(count))
    os.replace(out + ".tmp", out)
"""
LINES_CLIENT = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
number = 0
while True:
    number += 1
    connection.sendall(b"line %d\\n" % number)
    time.sleep(0.1)
"""


def test_a_live_change_cuts_an_established_connection(story: Story, processes: Processes) -> None:
    _apply(story, RULES, "rules")
    web = _ip(story, "web-1")
    processes.stop("http")
    counter = story.workdir / "lines.count"
    ready = story.workdir / "lines.count.ready"
    counter.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    processes.start("lines-server", "web-1", [sys.executable, "-c", LINES_SERVER, web, "22", str(counter)])
    assert _until(ready.exists, 10) is not None, "the line server listens on web-1:22"
    processes.start("lines-client", "ops-1", [sys.executable, "-c", LINES_CLIENT, web, "22"])
    assert _until(lambda: _count(counter) >= 5, 10) is not None, "lines flow from ops-1 to web-1"

    samples: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append((time.time(), _count(counter)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        times = _apply(story, WITHOUT_SSH, "rules - ssh-from-ops")
        refused = _curl(story, "ops-1", f"http://{web}:22/", max_time=2)
        assert refused.returncode == 28, f"a new connection: curl exit {refused.returncode} (28: timed out)"
        time.sleep(max(0.0, times["last"] + 2.5 - time.time()))
    finally:
        sampling.set()
        sampler.join(timeout=2)
        processes.stop("lines-client")
        processes.stop("lines-server")
    changes = [at for (at, count), (_, before) in zip(samples[1:], samples, strict=False) if count != before]
    assert changes, "the count never moved while sampled"
    stopped = max(changes)
    final = samples[-1][1]
    print(
        f"live: the established connection's last line arrived at {stopped - times['last']:+.2f} s from"
        f" the last member taking the document, {stopped - times['returned']:+.2f} s from `naas apply`"
        f" returning ({final} lines in all)"
    )
    assert stopped - times["returned"] <= 2.0 and stopped - times["last"] <= 2.0
    assert time.time() - stopped >= 1.0 and samples[-1][0] - stopped >= 1.0, "the count stayed put"


def _count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


# -- 7. through a relay ---------------------------------------------------------------------


def test_the_receiver_decides_behind_a_relay(story: Story, processes: Processes) -> None:
    _apply(story, WITH_ETHERTYPE, "rules + lab-protocol")
    url = _start_web_server(story, processes)
    lab = story.lab
    try:
        lab.block("ops-1", "web-1")
        lab.block("guest", "web-1")

        def relayed() -> bool:
            return all(_peer(story, host, "web-1")["path"].startswith("via ") for host in ("ops-1", "guest"))

        took = _until(relayed, 20, step=0.2)
        assert took is not None, {host: _paths(story, host) for host in ("ops-1", "guest")}
        paths = {f"{host} -> web-1": _peer(story, host, "web-1")["path"] for host in ("ops-1", "guest")}
        paths.update({f"web-1 -> {host}": _peer(story, "web-1", host)["path"] for host in ("ops-1", "guest")})
        others = ["master", "slave", "router", "guest"]  # any of them may relay (guest for web-1's replies)
        before = {host: (_policy(story, host), _status(story, host)["relayed"]["packets"]) for host in others}
        hits = _hits(story, "web-1", "ssh-from-ops")
        fetched = _curl(story, "ops-1", url, max_time=5)
        assert fetched.returncode == 0 and WEB_BODY in fetched.stdout, fetched.stderr
        assert _hits(story, "web-1", "ssh-from-ops") > hits
        denied = _denied_in(story, "web-1")
        refused = _curl(story, "guest", url, max_time=3)
        assert refused.returncode == 28, f"guest's curl through the relay: exit {refused.returncode}"
        rise = _denied_in(story, "web-1") - denied
        assert rise >= 2, f"web-1 denied_in.default rose by {rise}"
        after = {host: (_policy(story, host), _status(story, host)["relayed"]["packets"]) for host in others}
        forwarded = {host: after[host][1] - before[host][1] for host in others}
        assert sum(forwarded.values()) > 0, "some member relayed the traffic"
        named = {path.removeprefix("via ") for path in paths.values() if path.startswith("via ")}
        assert named <= set(others), paths
        for host in others:
            assert after[host][0] == before[host][0], (
                f"{host}'s policy counters moved: {before[host]} {after}"
            )
        print(
            f"relay: relayed after {took:.1f} s ({paths}); packets forwarded {forwarded}, relays' policy"
            f" counters unchanged; web-1 denied {rise} of guest's SYNs"
        )
    finally:
        lab.unblock("ops-1", "web-1")
        lab.unblock("guest", "web-1")


# -- 8. non-IP and tagged frames ------------------------------------------------------------


def test_ethertypes_and_vlan_tags(story: Story) -> None:
    _apply(story, WITH_ETHERTYPE, "rules + lab-protocol")
    ip = {host: _ip(story, host) for host in ("ops-1", "web-1", "guest")}
    mac = {host: _mac(story, host) for host in ("ops-1", "web-1", "guest")}
    denied = _denied_in(story, "web-1")
    with raw(story, "web-1") as sniffer, raw(story, "guest") as guest, raw(story, "ops-1") as ops:
        capture(sniffer, 0.1)
        guest.send(ethernet(mac["web-1"], mac["guest"], 0x88B5, b"MARK-88b5"))
        guest.send(ethernet(mac["web-1"], mac["guest"], 0x88B6, b"MARK-88b6"))
        guest.send(ethernet(mac["web-1"], mac["guest"], 0x88B5, b"MARK-tagged-88b5", vlan=42))
        syn = tcp_syn(ip["guest"], ip["web-1"], 40000, 22, b"MARK-tagged-guest-syn")
        guest.send(ethernet(mac["web-1"], mac["guest"], 0x0800, ipv4(ip["guest"], ip["web-1"], 6, syn), 42))
        syn = tcp_syn(ip["ops-1"], ip["web-1"], 40001, 22, b"MARK-tagged-ops-syn")
        ops.send(ethernet(mac["web-1"], mac["ops-1"], 0x0800, ipv4(ip["ops-1"], ip["web-1"], 6, syn), 42))
        seen = capture(sniffer, 1.5)
    arrived = {
        marker: bool(carrying(seen, marker.encode()))
        for marker in (
            "MARK-88b5",
            "MARK-88b6",
            "MARK-tagged-88b5",
            "MARK-tagged-guest-syn",
            "MARK-tagged-ops-syn",
        )
    }
    expected = {
        "MARK-88b5": True,  # lab-protocol
        "MARK-88b6": False,  # no rule: default deny
        "MARK-tagged-88b5": True,  # matched on what the tag carries
        "MARK-tagged-guest-syn": False,  # tcp/22 from guest: no rule
        "MARK-tagged-ops-syn": True,  # tcp/22 from ops-1: ssh-from-ops, through the tag
    }
    assert arrived == expected
    rise = _denied_in(story, "web-1") - denied
    assert rise >= 2, f"web-1 denied_in.default rose by {rise} for 0x88b6 and the tagged SYN"
    print(f"ethertypes: arrived {arrived}; web-1 denied_in.default +{rise}")


# -- 9. explaining ---------------------------------------------------------------------------


def test_trace_and_status_explain_the_decisions(story: Story) -> None:
    _apply(story, WITH_ETHERTYPE, "rules + lab-protocol")
    admin = ["--config", str(story.config_path), "--store", story.store_url]
    state = "--state-dir"
    jobs = {
        "guest": (
            "master",
            naas_argv(
                "policy",
                "trace",
                "guest",
                "web-1",
                "tcp",
                "22",
                *admin,
                state,
                str(story.state_dir("master")),
            ),
        ),
        "ops-1": (
            "master",
            naas_argv(
                "policy",
                "trace",
                "ops-1",
                "web-1",
                "tcp",
                "22",
                *admin,
                state,
                str(story.state_dir("master")),
            ),
        ),
        "status": ("web-1", naas_argv("status", "--network", NETWORK, state, str(story.state_dir("web-1")))),
    }
    done = _in_parallel(story, jobs, 60)
    for key, result in done.items():
        assert result.returncode == 0, (key, result.stderr)
    guest = done["guest"].stdout.strip().splitlines()
    assert guest[0] == "flow: guest (groups: none) -> web-1 (groups: web), tcp/22", guest
    assert any(
        "'ssh-from-ops' (allow): no match, from [group:ops] does not include guest" in line for line in guest
    ), guest
    assert guest[-1] == "no rule matches -> default DENY", guest
    ops = done["ops-1"].stdout.strip().splitlines()
    assert ops[-1] == "rule 1 'ssh-from-ops' (allow): matches -> ALLOW", ops
    text = done["status"].stdout
    denied = _denied_in(story, "web-1")
    assert "policy: default deny, 4 rules" in text, text
    found = re.search(r"denied on arrival by rule: default=(\d+)", text)
    assert found and 0 < int(found.group(1)) <= denied, text
    print("trace guest:\n  " + "\n  ".join(guest) + "\ntrace ops-1:\n  " + "\n  ".join(ops))
    print("web-1 status:\n  " + "\n  ".join(line for line in text.splitlines() if "rule" in line))


# -- 10. the egress check skipped ---------------------------------------------------------------


def test_a_member_skipping_its_egress_check_still_gets_its_replies(story: Story) -> None:
    """ping-web allows guest -> web-1: the replies are part of that flow (docs/policy.md,
    State), and the variable is documented to change what guest sends, not what it accepts."""
    _apply(story, WITH_ETHERTYPE, "rules + lab-protocol")
    hits, guest_in = _hits(story, "web-1", "ping-web"), _denied_in(story, "guest")
    sent, got = _ping(story, "guest", _ip(story, "web-1"), count=2)
    evidence = (
        f"{got}/{sent} replies; web-1 hits.ping-web +{_hits(story, 'web-1', 'ping-web') - hits},"
        f" guest denied_in.default +{_denied_in(story, 'guest') - guest_in}"
    )
    print(f"skipped egress: {evidence}")
    assert got == sent, evidence
