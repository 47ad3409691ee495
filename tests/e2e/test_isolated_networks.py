"""Two networks with the same subnet on the same hosts, isolated (docs/isolated-networks.md).

    onprem 10.100.1.0/24: master, slave, dual     aws 10.100.2.0/24: blue-1, dual-ns
    alibaba 10.100.3.0/24: red-1                   (one router joins the sites)

Two networks, both 172.32.0.0/16: ``blue`` (mesh 5640, enrollment 5641) and ``red``
(mesh 5740, enrollment 5741). master and slave each run two ``naas pop`` processes, one
per network (blue on naas0, red on naas1). blue-1 is in blue only, red-1 in red only, and
both have 172.32.1.50. ``dual`` is in both in one namespace: naas0 = blue 172.32.1.60,
naas1 = red 172.32.1.61. ``dual-ns`` is in both with the same address, 172.32.1.70: blue
in the host's namespace, red in a namespace of its own inside the host (a veth to the
host, which NATs it onto its underlay): the way to reach overlapping networks on a kernel
without VRF.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import requires_root
from naas.core.cookie import mac_key, with_macs
from naas.core.handshake import InitiatorHandshake
from naas.core.wire import HANDSHAKE_TIMESTAMP, PROLOGUE_PREFIX, TYPE_DATA, pack_initiation
from naas.daemon import control
from naas.daemon.state import NodeDir
from naas.lab.netns import Lab, LabHost, Namespace, teardown
from naas.lab.story import DEMO_SITES, enrollment_argv, naas_argv
from naas.model.codec import certificate_to_bytes

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {
    "master": "onprem",
    "slave": "onprem",
    "dual": "onprem",
    "blue-1": "aws",
    "dual-ns": "aws",
    "red-1": "alibaba",
}
POPS = ("master", "slave")
SUBNET = "172.32.0.0/16"
SAME_IP = "172.32.1.50"  # blue-1 in blue, red-1 in red
WHOAMI_PORT = 7000
ETH_P_ALL = 0x0003  # an AF_PACKET socket of this protocol sees frames sent too
RED_NAMESPACE_LINK = ("10.201.0.1/30", "10.201.0.2/30")  # dual-ns: host side, red namespace side


@dataclass(frozen=True)
class Network:
    name: str
    mesh_port: int
    enrollment_port: int
    clients: dict[str, str]  # client -> its fixed overlay address


BLUE = Network("blue", 5640, 5641, {"blue-1": SAME_IP, "dual": "172.32.1.60", "dual-ns": "172.32.1.70"})
RED = Network("red", 5740, 5741, {"red-1": SAME_IP, "dual": "172.32.1.61", "dual-ns": "172.32.1.70"})
NETWORKS = (BLUE, RED)


# --- small scripts run inside the namespaces ----------------------------------------------

# Serves its name to whoever connects: which member answered at an address both have.
WHOAMI = r"""
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(sys.argv[1].encode())
"""

# Connects (from a source address if given) and prints what the server said.
ASK = r"""
import socket, sys
source = (sys.argv[3], 0) if len(sys.argv) > 3 else None
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3, source_address=source) as conn:
    print(conn.recv(64).decode())
"""

# Counts the frames on an interface that hold each marker, until standard input closes.
SNIFF = r"""
import json, os, select, socket, sys, time
markers = sys.argv[2:]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
sock.bind((sys.argv[1], 0))
print("ready", flush=True)
seen = dict.fromkeys(markers, 0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    readable, _, _ = select.select([sock, 0], [], [], 1)
    if 0 in readable and not os.read(0, 1):
        break
    if sock in readable:
        frame = sock.recv(65535)
        for marker in markers:
            seen[marker] += marker.encode() in frame
print(json.dumps(seen), flush=True)
"""

# UDP broadcasts (255.255.255.255) out of one interface, from the member's own address.
BROADCAST = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
for _ in range(int(sys.argv[3])):
    sock.sendto(sys.argv[2].encode(), ("255.255.255.255", 9))
    time.sleep(0.05)
"""


def checked(where: Namespace, argv: list[str], *, input: str | None = None, timeout: float = 30) -> str:
    result = where.run(argv, timeout=timeout, input=input)
    said = (result.stderr or result.stdout).strip()
    assert result.returncode == 0, f"{' '.join(argv)} in {where.name}: exit {result.returncode}: {said}"
    return result.stdout


def first_line(process: subprocess.Popen[str], seconds: float) -> str:
    """The first line ``process`` prints, waited for at most ``seconds``."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], seconds)
    assert readable, f"no answer within {seconds} s from {process.args!r}"
    return process.stdout.readline().strip()


def in_parallel(*jobs: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return [future.result() for future in [pool.submit(job) for job in jobs]]


def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@dataclass
class TwoNetworks:
    lab: Lab
    workdir: Path
    red_namespace: Namespace  # dual-ns's namespace for red
    pops: list[subprocess.Popen[Any]] = field(default_factory=list)

    # -- where things are --

    def state_dir(self, host: str) -> Path:
        return self.workdir / "hosts" / host  # one per host, as /var/lib/naas on a machine

    def config(self, network: Network) -> Path:
        return self.workdir / f"{network.name}.toml"

    def store(self, network: Network) -> str:
        return f"sqlite:///{self.workdir / f'{network.name}-store.db'}"  # both PoPs of a network share it

    @staticmethod
    def interface(host: str, network: Network) -> str:
        """red is naas1 where the host is in blue too (red-1 has only red: naas0)."""
        return "naas1" if network is RED and host != "red-1" else "naas0"

    def where(self, host: str, network: Network) -> Namespace:
        """The namespace ``host``'s membership of ``network`` runs in."""
        if (host, network) == ("dual-ns", RED):
            return self.red_namespace
        return self.lab.host(host)

    def ip(self, host: str, network: Network) -> str:
        return network.clients[host]

    # -- commands --

    def naas(self, host: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = naas_argv(*args, "--state-dir", str(self.state_dir(host)))
        return self.lab.host(host).run(argv, timeout=timeout)

    def node_dir(self, host: str, network: Network) -> NodeDir:
        if host in POPS:
            return NodeDir(self.state_dir(host) / network.name / "pops" / host)
        return NodeDir(self.state_dir(host) / network.name / "node")

    def status(self, host: str, network: Network) -> dict[str, Any]:
        """What `naas status --json --network NAME` prints, asked on the agent's control
        socket (a file: it answers whatever namespace the agent runs in). Without the
        ~1.5 s a `naas` command takes to start here, polls stay cheap."""
        answer = control.request(self.node_dir(host, network).socket_path, "status")
        assert answer.get("ok"), answer
        status: dict[str, Any] = answer["status"]
        return status

    def status_command(self, host: str, network: Network) -> dict[str, Any]:
        """`naas status --json --network NAME` on ``host`` (from its own namespace)."""
        result = self.naas(host, "status", "--json", "--network", network.name)
        assert result.returncode == 0, result.stderr
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def drops(self, host: str, network: Network) -> dict[str, int]:
        return {k: int(v) for k, v in self.status(host, network).get("drops", {}).items()}

    def ping(self, where: Namespace, target: str, *extra: str, attempts: int = 3) -> bool:
        for _ in range(attempts):
            argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", *extra, target]
            if where.run(argv, timeout=15).returncode == 0:
                return True
        return False

    def ask(self, where: Namespace, target: str, source: str | None = None) -> str:
        """Who answers at ``target``:WHOAMI_PORT, seen from ``where``."""
        argv = [sys.executable, "-c", ASK, target, str(WHOAMI_PORT), *([source] if source else [])]
        result = where.run(argv, timeout=10)
        return (
            result.stdout.strip() if result.returncode == 0 else f"(failed: {result.stderr.strip()[-200:]})"
        )


# --- building the lab ------------------------------------------------------------------------


def config_text(lab: Lab, network: Network) -> str:
    lines = [
        "[network]",
        f'name = "{network.name}"',
        f"mesh_port = {network.mesh_port}",
        f"enrollment_port = {network.enrollment_port}",
        f'subnet = "{SUBNET}"',
        'dhcp_range = "172.32.1.10-172.32.1.250"',
    ]
    for pop in POPS:
        lines += ["", "[[pop]]", f'name = "{pop}"', f'address = "{lab.host(pop).address}"']
    for client, ip in network.clients.items():
        lines += ["", "[[client]]", f'name = "{client}"', f'ip = "{ip}"']
    return "\n".join(lines) + "\n"


def red_namespace_of(lab: Lab, host_name: str) -> Namespace:
    """A namespace inside ``host_name`` for its red membership: a veth to the host, which
    masquerades it on its underlay (eth0) and forwards red's mesh port to it. The host
    forwards only between that veth and eth0, never to or from its naas0."""
    host = lab.host(host_name)
    inner = Namespace(lab, f"{host_name}-red", f"{lab.prefix}{host_name}-red")
    outside, inside = RED_NAMESPACE_LINK
    host_ip, inner_ip = f"ip -n {host.namespace}", f"ip -n {inner.namespace}"
    commands = [
        f"ip netns add {inner.namespace}",
        f"{host_ip} link add veth-red type veth peer name eth0 netns {inner.namespace}",
        f"{host_ip} address add {outside} dev veth-red",
        f"{host_ip} link set veth-red up",
        f"{inner_ip} link set lo up",
        f"{inner_ip} address add {inside} dev eth0",
        f"{inner_ip} link set eth0 up",
        f"{inner_ip} route add default via {outside.split('/')[0]}",
        f"ip netns exec {host.namespace} sysctl -q -w net.ipv4.ip_forward=1",
    ]
    for command in commands:
        subprocess.run(command.split(), check=True, capture_output=True, timeout=20)
    address = inside.split("/")[0]
    rules = f"""
table ip naas_red {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    iifname "eth0" udp dport {RED.mesh_port} dnat to {address}; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr {address} oifname "eth0" masquerade; }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    iifname "veth-red" oifname "eth0" accept
    iifname "eth0" oifname "veth-red" accept; }}
}}
"""
    subprocess.run(host.argv(["nft", "-f", "-"]), input=rules, text=True, check=True, timeout=20)
    return inner


def listening(host: LabHost, port: int) -> bool:
    """Does ``host`` accept TCP connections on ``port`` (tried from inside its namespace)?"""
    with host.entered():
        try:
            socket.create_connection((str(host.address), port), timeout=1).close()
        except OSError:
            return False
    return True


def start_network(nets: TwoNetworks, network: Network) -> None:
    """One network, as its operator brings it up: `naas init` on master (its state copied
    to slave), a `naas pop` on each PoP host, `naas invite`, then `naas-enrollment` on
    each client (in parallel)."""
    master = nets.lab.host("master")
    nets.config(network).write_text(config_text(nets.lab, network))
    store = ["--store", nets.store(network), "--state-dir", str(nets.state_dir("master"))]
    checked(master, naas_argv("init", "--config", str(nets.config(network)), *store))
    # stands in for the `tar | ssh` copy `naas init` prints: the slave gets this network's directory
    shutil.copytree(nets.state_dir("master") / network.name, nets.state_dir("slave") / network.name)
    pops = []
    for pop in POPS:
        log = open(nets.workdir / f"pop-{network.name}-{pop}.log", "ab")  # noqa: SIM115
        argv = naas_argv(
            "pop",
            "--config",
            str(nets.config(network)),
            "--name",
            pop,
            "--state-dir",
            str(nets.state_dir(pop)),
            "--store",
            nets.store(network),
            "--interface",
            nets.interface(pop, network),
        )
        pops.append(nets.lab.host(pop).popen(argv, stdout=log, stderr=log))
        log.close()
    nets.pops += pops
    for pop in POPS:
        host = nets.lab.host(pop)
        sock = nets.node_dir(pop, network).socket_path

        def ready(host: LabHost = host, sock: Path = sock) -> bool:
            assert all(p.poll() is None for p in pops), (
                f"a PoP exited: {nets.workdir}/pop-{network.name}-*.log"
            )
            return sock.exists() and listening(host, network.enrollment_port)

        assert eventually(ready, 30), f"PoP {pop} of {network.name} did not start within 30 s"
    out = checked(master, naas_argv("invite", "--config", str(nets.config(network)), "--json", *store))
    urls = {item["client"]: item["url"] for item in json.loads(out)}

    def enroll(client: str) -> None:
        state = ["--state-dir", str(nets.state_dir(client)), "--interface", nets.interface(client, network)]
        where = nets.where(client, network)
        checked(where, enrollment_argv("-", *state), input=urls[client] + "\n", timeout=60)

    in_parallel(*(lambda c=client: enroll(c) for client in network.clients))


def build(lab: Lab, workdir: Path) -> TwoNetworks:
    nets = TwoNetworks(lab, workdir, red_namespace_of(lab, "dual-ns"))
    in_parallel(*(lambda n=network: start_network(nets, n) for network in NETWORKS))
    return nets


@pytest.fixture(scope="module")
def nets() -> Iterator[TwoNetworks]:
    workdir = Path(tempfile.mkdtemp(prefix="naas-e2e-isolated-"))
    lab = Lab(hosts=HOSTS, sites=DEMO_SITES)
    red_namespace = f"{lab.prefix}dual-ns-red"
    try:
        lab.start()
        yield build(lab, workdir)
    finally:
        # the red namespace of dual-ns is ours, not the lab's: its agent and it go first
        teardown([red_namespace], [])
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def whoami(nets: TwoNetworks) -> None:
    """A server on WHOAMI_PORT that says who it is: on blue-1, red-1, and on dual-ns in
    each of its two namespaces."""
    servers = {
        "blue-1": nets.lab.host("blue-1"),
        "red-1": nets.lab.host("red-1"),
        "dual-ns/blue": nets.lab.host("dual-ns"),
        "dual-ns/red": nets.red_namespace,
    }
    for name, where in servers.items():
        argv = [sys.executable, "-c", WHOAMI, name, str(WHOAMI_PORT)]
        process = where.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert first_line(process, 10) == "ready"


# --- the tests -------------------------------------------------------------------------------


def test_each_network_has_its_own_agent_keys_state_socket_and_port(nets: TwoNetworks) -> None:
    # `naas status` on a host in two networks: --network says which (the CLI, in parallel)
    several, red = in_parallel(lambda: nets.naas("dual", "status"), lambda: nets.status_command("dual", RED))
    assert several.returncode == 2 and "several networks (blue, red): use --network" in several.stderr
    blue = nets.status("dual", BLUE)
    assert (blue["network"], red["network"]) == ("blue", "red")
    assert blue["node"]["ip"] == "172.32.1.60/16" and red["node"]["ip"] == "172.32.1.61/16"
    assert (blue["agent"]["interface"], red["agent"]["interface"]) == ("naas0", "naas1")
    assert (blue["agent"]["listen"], red["agent"]["listen"]) == ("0.0.0.0:5640", "0.0.0.0:5740")
    assert blue["agent"]["pid"] != red["agent"]["pid"]
    state = nets.state_dir("dual")
    for network in NETWORKS:
        node = state / network.name / "node"
        assert {"static.key", "signing.key", "certificate.json", "agent.sock", "agent.pid"} <= {
            p.name for p in node.iterdir()
        }
        assert (node / "interface").read_text().strip() == nets.interface("dual", network)
    assert (state / "blue/node/static.key").read_bytes() != (state / "red/node/static.key").read_bytes()
    # one PoP host, two PoPs: one per network, each with its own ports and interface
    blue_pop, red_pop = nets.status("master", BLUE), nets.status("master", RED)
    assert blue_pop["pop"]["name"] == red_pop["pop"]["name"] == "master"
    assert (blue_pop["agent"]["interface"], red_pop["agent"]["interface"]) == ("naas0", "naas1")
    assert (blue_pop["agent"]["listen"], red_pop["agent"]["listen"]) == ("0.0.0.0:5640", "0.0.0.0:5740")
    # dual-ns runs red in a namespace of its own; its state is in the host's one state dir
    inner = nets.status("dual-ns", RED)  # its agent runs in another namespace: the socket is a file
    assert inner["agent"]["interface"] == "naas1" and inner["node"]["ip"] == "172.32.1.70/16"
    assert nets.status("dual-ns", BLUE)["node"]["ip"] == "172.32.1.70/16"


def test_members_of_each_network_ping_each_other(nets: TwoNetworks) -> None:
    """dual names the interface (which network a plain ping takes is whichever interface
    came up first: see the test of policy routing below); dual-ns needs nothing."""
    host = nets.lab.host
    pings = [
        (host("blue-1"), "172.32.1.70", ()),
        (host("dual"), SAME_IP, ("-I", "naas0")),
        (host("dual"), "172.32.1.70", ("-I", "naas0")),
        (host("dual-ns"), SAME_IP, ()),
        (host("red-1"), "172.32.1.70", ()),
        (host("dual"), SAME_IP, ("-I", "naas1")),
        (host("dual"), "172.32.1.70", ("-I", "naas1")),
        (nets.red_namespace, SAME_IP, ()),
    ]
    failed = in_parallel(*(lambda p=p: None if nets.ping(p[0], p[1], *p[2]) else p[:2] for p in pings))
    assert [f for f in failed if f is not None] == []
    for network in NETWORKS:
        peers = {peer["name"]: peer for peer in nets.status("dual", network)["peers"]}
        assert set(peers) == {"master", "slave", *network.clients} - {"dual"}
        assert all(peer["path"] == "direct" for peer in peers.values()), peers


def test_a_broadcast_in_one_network_is_never_seen_in_the_other(nets: TwoNetworks) -> None:
    # sessions first: a broadcast goes to every member with a session
    dual = nets.lab.host("dual")
    assert all(
        in_parallel(
            lambda: nets.ping(dual, SAME_IP, "-I", "naas0"),
            lambda: nets.ping(dual, SAME_IP, "-I", "naas1"),
            lambda: nets.ping(nets.lab.host("blue-1"), "172.32.1.70"),
            lambda: nets.ping(nets.lab.host("red-1"), "172.32.1.70"),
        )
    )
    # who broadcasts into which network; dual into each of its two
    senders = [("blue-1", BLUE), ("red-1", RED), ("dual", BLUE), ("dual", RED)]
    token = secrets.token_hex(6)
    markers = {(sender, network.name): f"{sender}>{network.name}>{token}" for sender, network in senders}
    points = [  # where we listen: (host, namespace, interface, the network of that interface)
        *((pop, nets.lab.host(pop), "naas0", BLUE) for pop in POPS),
        *((pop, nets.lab.host(pop), "naas1", RED) for pop in POPS),
        ("dual", nets.lab.host("dual"), "naas0", BLUE),
        ("dual", nets.lab.host("dual"), "naas1", RED),
        ("dual-ns", nets.lab.host("dual-ns"), "naas0", BLUE),
        ("dual-ns", nets.red_namespace, "naas1", RED),
        ("blue-1", nets.lab.host("blue-1"), "naas0", BLUE),
        ("red-1", nets.lab.host("red-1"), "naas0", RED),
    ]
    sniffers = []
    for host, where, interface, network in points:
        argv = [sys.executable, "-c", SNIFF, interface, *markers.values()]
        process = where.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        sniffers.append((f"{host} {interface}", host, network, process))
    for *_, process in sniffers:
        assert first_line(process, 10) == "ready"
    for sender, network in senders:
        argv = [
            sys.executable,
            "-c",
            BROADCAST,
            nets.interface(sender, network),
            markers[sender, network.name],
            "5",
        ]
        checked(nets.lab.host(sender), argv)
    time.sleep(0.5)
    seen: dict[str, dict[str, int]] = {}
    for label, *_, process in sniffers:
        out, _ = process.communicate(input="", timeout=10)  # closing its stdin ends it
        seen[label] = json.loads(out.strip().splitlines()[-1])
    for label, host, network, _ in sniffers:
        for (sender, sent_into), marker in markers.items():
            if sent_into != network.name:
                assert seen[label][marker] == 0, (
                    f"{label} ({network.name}) saw {sender}'s {sent_into} broadcast"
                )
            elif sender != host:  # a sender sees its own on the way out; everyone else must get it
                assert seen[label][marker] >= 1, f"{label} missed {sender}'s broadcast in {sent_into}: {seen}"


def blue_datagram_to_master(nets: TwoNetworks) -> bytes:
    """A real DATA datagram of blue, sealed by dual's blue agent for the blue PoP on master
    (node 1), taken off dual's underlay while dual pings master's blue address."""
    dual, master = nets.lab.host("dual"), nets.lab.host("master")
    wanted = (str(dual.address), str(master.address), BLUE.mesh_port, BLUE.mesh_port)
    with dual.entered():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        capture.bind(("eth0", 0))
    with capture:
        capture.settimeout(0.5)
        pinger = dual.popen(["ping", "-n", "-q", "-c", "10", "-i", "0.2", "-I", "naas0", "172.32.0.1"])
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                try:
                    frame = capture.recv(65535)
                except TimeoutError:
                    continue
                packet = frame[14:]
                if frame[12:14] != b"\x08\x00" or packet[9] != socket.IPPROTO_UDP:  # IPv4, UDP
                    continue
                header = (packet[0] & 0x0F) * 4
                ports = struct.unpack_from("!HH", packet, header)
                if (socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), *ports) != wanted:
                    continue
                payload = packet[header + 8 :]
                if payload[0] == TYPE_DATA:
                    assert int.from_bytes(payload[4:8], "big") == 1  # for node 1: the PoP master
                    return payload
        finally:
            pinger.kill()
            pinger.wait(timeout=5)
    raise AssertionError("no DATA datagram from dual to master on blue's mesh port within 5 s")


def send_from_dual(nets: TwoNetworks, datagram: bytes, target: str, count: int) -> None:
    """``count`` copies of ``datagram`` from dual's underlay to red's mesh port at ``target``."""
    address = str(nets.lab.host(target).address)
    with nets.lab.host("dual").entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        for _ in range(count):
            sender.sendto(datagram, (address, RED.mesh_port))
            time.sleep(0.02)


def blue_initiation(nets: TwoNetworks, prologue_network: str, responder_static: bytes) -> bytes:
    """A handshake initiation from dual's blue identity (its keys and certificate) to node
    1, for the responder key given, with ``prologue_network``'s name in the Noise prologue."""
    identity = NodeDir(nets.state_dir("dual") / "blue" / "node").load_identity()
    handshake = InitiatorHandshake(
        local_static_private=identity.static_private,
        remote_static_public=responder_static,
        prologue=PROLOGUE_PREFIX + prologue_network.encode(),
    )
    stamp = HANDSHAKE_TIMESTAMP.pack(int(time.time() * 1000))
    message = handshake.create_initiation(os.urandom(32), stamp + certificate_to_bytes(identity.certificate))
    sender_index = int.from_bytes(os.urandom(4), "big")
    datagram = pack_initiation(1, identity.certificate.node_id, sender_index, message)
    return with_macs(datagram, mac_key(responder_static), None)[0]


def wait_for_drops(nets: TwoNetworks, host: str, reason: str, at_least: int) -> None:
    """Until red's agent on ``host`` has dropped ``at_least`` datagrams for ``reason``."""

    def enough() -> bool:
        return nets.drops(host, RED).get(reason, 0) >= at_least

    assert eventually(enough), f"{host} (red): {reason} < {at_least}: {nets.drops(host, RED)}"


def test_a_datagram_sealed_for_blue_is_dropped_by_red_with_a_counter(nets: TwoNetworks) -> None:
    """Node ids repeat across networks (both PoPs on master are node 1), so a blue datagram
    for node 1 sent to red's node 1 gets past the header; what stops it is its session
    index (DATA) or the handshake itself, whose prologue holds the network's name."""
    data = blue_datagram_to_master(nets)
    pop, member = nets.drops("master", RED), nets.drops("red-1", RED)
    send_from_dual(nets, data, "master", 5)  # red's node 1: no session has that receiver index
    send_from_dual(nets, data, "red-1", 5)  # red-1 is not node 1, and dual's port is no member's
    wait_for_drops(nets, "master", "unknown_index", pop.get("unknown_index", 0) + 5)
    wait_for_drops(nets, "red-1", "wrong_destination", member.get("wrong_destination", 0) + 5)

    # initiations from dual's blue identity to red's master, keyed to its real static key
    # (everyone learns it from its certificate): mac1 and the Diffie-Hellman are right
    red_master = nets.node_dir("master", RED).load_identity().certificate.static_public
    blue_master = nets.node_dir("master", BLUE).load_identity().certificate.static_public
    cases = [
        # sealed for blue (blue's name in the prologue): the Noise message does not open
        (blue_initiation(nets, "blue", red_master), "handshake_failed"),
        # the control: with red's name in the prologue it opens, and the blue certificate is refused
        (blue_initiation(nets, "red", red_master), "bad_certificate"),
        # a real initiation for blue's master (its key) sent to red's port: mac1 fails first
        (blue_initiation(nets, "blue", blue_master), "bad_mac"),
    ]
    for datagram, reason in cases:
        before = nets.drops("master", RED).get(reason, 0)
        send_from_dual(nets, datagram, "master", 2)
        wait_for_drops(nets, "master", reason, before + 2)
    # none of it made a session: red's master still knows only red's members
    assert {peer["name"] for peer in nets.status("master", RED)["peers"]} == {"slave", *RED.clients}
    # and `naas status --json` on the PoP host shows the counters
    shown = nets.status_command("master", RED)["drops"]
    assert all(shown.get(reason, 0) >= 2 for reason in ("unknown_index", "handshake_failed", "bad_mac")), (
        shown
    )


def test_one_namespace_reaches_the_same_address_in_both_networks_with_policy_routing(
    nets: TwoNetworks, whoami: None
) -> None:
    """dual, both networks in one namespace: 172.32.1.50 is blue-1 behind naas0 and red-1
    behind naas1. The main table has 172.32.0.0/16 twice and uses the route of whichever
    interface came up first, so the other network's members get no answers from dual: the
    answers leave by the wrong interface. A table per network, chosen by dual's source
    address in it, fixes both directions; dual then picks the network by binding to its
    address there (or to the interface: ping -I naas1)."""
    dual = nets.lab.host("dual")
    blue_1, red_1 = nets.lab.host("blue-1"), nets.lab.host("red-1")
    answered = in_parallel(
        lambda: nets.ping(blue_1, "172.32.1.60", attempts=1),
        lambda: nets.ping(red_1, "172.32.1.61", attempts=1),
    )
    assert sorted(answered) == [False, True], (
        "without rules, one network's answers leave by the other's interface"
    )
    for network, table in ((BLUE, "100"), (RED, "101")):
        ip, interface = nets.ip("dual", network), nets.interface("dual", network)
        checked(dual, ["ip", "route", "add", SUBNET, "dev", interface, "src", ip, "table", table])
        checked(dual, ["ip", "rule", "add", "from", ip, "lookup", table])
    assert all(in_parallel(lambda: nets.ping(blue_1, "172.32.1.60"), lambda: nets.ping(red_1, "172.32.1.61")))
    assert nets.ask(dual, SAME_IP, "172.32.1.60") == "blue-1"
    assert nets.ask(dual, SAME_IP, "172.32.1.61") == "red-1"
    assert nets.ping(dual, SAME_IP, "-I", "naas0") and nets.ping(dual, SAME_IP, "-I", "naas1")


def test_a_namespace_per_network_reaches_both_with_the_same_addresses(
    nets: TwoNetworks, whoami: None
) -> None:
    """dual-ns has 172.32.1.70 in both networks; blue in its own namespace, red in a
    namespace of its own: no rule, no choice of interface or source, any program works."""
    assert nets.ask(nets.lab.host("dual-ns"), SAME_IP) == "blue-1"
    assert nets.ask(nets.red_namespace, SAME_IP) == "red-1"
    assert nets.ask(nets.lab.host("blue-1"), "172.32.1.70") == "dual-ns/blue"
    assert nets.ask(nets.lab.host("red-1"), "172.32.1.70") == "dual-ns/red"
    # behind the host's NAT, red's agent is at the host's address and red's own port
    peers = {peer["name"]: peer for peer in nets.status("red-1", RED)["peers"]}
    assert peers["dual-ns"]["endpoint"] == f"{nets.lab.host('dual-ns').address}:{RED.mesh_port}"


def test_naas_up_brings_each_network_back_on_its_own_interface(nets: TwoNetworks) -> None:
    """The agent keeps the name of its TAP device (node/interface): a plain `naas up` of
    red on dual takes naas1 again, not naas0, which blue's agent holds."""
    blue_pid = nets.status("dual", BLUE)["agent"]["pid"]
    down = nets.naas("dual", "down", "--network", "red")
    assert down.returncode == 0, down.stderr
    # asking for blue's device fails in one line (in the foreground: no agent to spawn)
    busy = nets.naas("dual", "up", "--foreground", "--network", "red", "--interface", "naas0")
    assert busy.returncode == 1, busy.stderr
    assert busy.stderr.strip() == (
        "naas: cannot create TAP 'naas0': Device or resource busy"
        " (another agent holds it: give each network its own with --interface)"
    )
    up = nets.naas("dual", "up", "--network", "red")  # no --interface: the one it ran on
    assert up.returncode == 0, up.stderr
    assert "naas1 is up with 172.32.1.61/16" in up.stdout
    assert nets.status("dual", RED)["agent"]["interface"] == "naas1"
    assert nets.status("dual", BLUE)["agent"]["pid"] == blue_pid, "blue's agent was left alone"
    dual = nets.lab.host("dual")
    assert all(
        in_parallel(
            lambda: nets.ping(dual, SAME_IP, "-I", "naas1"), lambda: nets.ping(dual, SAME_IP, "-I", "naas0")
        )
    )
