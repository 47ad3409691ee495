"""The "Handshake flood" figure of bench/run (system naas-flood, issue 21).

Theory of operation
-------------------
bench/run measures it in each round after naas-nopoll, on the default agents of its
naas story (alpha and beta members, beta the one attacked). At the first round
`FloodFigure` makes host mallory: a namespace on beta's site with a veth to the site
bridge, and no membership. It is made with `ip` rather than as a lab host because
naas.lab.story invites and enrolls every non-PoP host of its lab; it is named like the
lab's namespaces (so the lab's stale-namespace cleanup would find it after a crash),
its processes are started with the lab's popen (so the lab's close kills any a failure
left running) and `FloodFigure.close` deletes it.

For each variant (full rate: bench/flood as fast as it can; 5000/s), two measurements:
the flood aimed at a closed UDP port of beta (the reference: the same traffic on the
wire and the same CPU taken from the machine, which beta's kernel answers with ICMP),
then at beta's mesh port. One measurement:

1. wait until alpha reaches beta directly, and for the iperf3 server to be idle;
2. read beta's state (`beta_state`): `naas status --json` (drop counters, the flood
   protection's counters, how it reaches each peer), the kernel's UDP counters and its
   mesh socket's memory in beta's namespace, CPU ticks;
3. start bench/flood in mallory and wait for its "sending" line, then FLOOD_SETTLE s;
4. FLOOD_PINGS pings alpha -> beta over naas0 at PING_INTERVAL (loss from ping's own
   summary), then a 1-stream iperf3 for DURATION s (a run that fails counts 0 Gbit/s);
5. beta's state again, while the flood still runs; stop the flood by PID (SIGTERM: it
   prints its report), and beta's state once more;
6. the differences: beta's drops and handshake counters, peer_down lines in its agent
   log, kernel UDP counters; the CPU cores used by beta's agent, the flood, softirq and
   the machine.

`flood_figures` takes, per variant, the medians over the rounds and the throughput
ratio (mesh-port Gbit/s over closed-port Gbit/s, round by round, then the median);
`flood_table` writes the Markdown section. Target: ping loss <= 1 % and ratio >= 50 %.
"""

from __future__ import annotations

import json
import math
import re
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from measure import (
    PING_INTERVAL,
    TICK,
    UP_LIMIT,
    A,
    B,
    BenchError,
    agent,
    daemon_ticks,
    fmt,
    iperf,
    local,
    machine_busy_ticks,
    percentile,
    sh,
    start_iperf_server,
    stop_process,
    wait_for_server_done,
    wait_reach,
)

from naas.daemon.state import client_node_dir
from naas.lab.netns import Lab, LabHost, Namespace
from naas.lab.story import NETWORK, Story

FLOOD = Path(__file__).resolve().parent / "flood"
STRANGER, STRANGER_HOST, STRANGER_PORT = "mallory", 200, "vhmallory"  # the flood's host: .200 of beta's site
FLOOD_VARIANTS: dict[str, int | None] = {"full rate": None, "5000/s": 5000}  # bench/flood --rate
FLOOD_PINGS = 500  # at PING_INTERVAL, during each flood
FLOOD_SETTLE = 1.0  # seconds between the flood's first datagram and the pings
FLOOD_CLOSED_PORT = 5639  # the reference flood's target: a UDP port of beta nothing listens on
FLOOD_DROPS = ("rate_limited", "cookie_required", "bad_mac", "handshake_busy")
HANDSHAKE_COUNTERS = ("admitted", "cookies_sent")  # beta's `naas status`: agent.handshakes
UDP_COUNTERS = ("InDatagrams", "NoPorts", "RcvbufErrors", "InErrors")  # beta's, from /proc/net/snmp
FLOOD_TARGETS = {"ping_loss_percent": 1.0, "throughput_ratio": 0.5}


@dataclass
class Stranger:
    """Host mallory: a namespace with a veth to beta's site bridge and no membership."""

    namespace: Namespace
    address: IPv4Address

    @classmethod
    def create(cls, lab: Lab) -> Stranger:
        site = lab.host(B).site
        address = site.subnet.network_address + STRANGER_HOST
        namespace = Namespace(lab, STRANGER, lab.prefix + STRANGER)  # its popen is tracked by the lab
        stranger = cls(namespace, address)
        local(["ip", "netns", "add", namespace.namespace])
        try:
            router = lab.router.namespace
            veth = f"eth0 netns {namespace.namespace} type veth peer name {STRANGER_PORT} netns {router}"
            local(["ip", "link", "add", *veth.split()])
            local(["ip", "-n", router, "link", "set", STRANGER_PORT, "master", site.bridge, "up"])
            script = (
                "link set lo up\n"
                f"address add {address}/{site.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {site.gateway.ip}\n"
            )
            done = subprocess.run(
                ["ip", "-n", namespace.namespace, "-batch", "-"],
                input=script,
                capture_output=True,
                text=True,
                timeout=20,
            )
            if done.returncode != 0:
                raise BenchError(f"{STRANGER}: ip -batch failed: {done.stderr.strip()}")
        except BaseException:
            stranger.close()
            raise
        return stranger

    def close(self) -> None:
        """Delete the namespace (and with it the veth); its processes are stopped by then."""
        subprocess.run(["ip", "netns", "delete", self.namespace.namespace], capture_output=True, timeout=20)


class FloodFigure:
    """The figure's rounds, on a lab whose naas story runs (see the module docstring)."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.stranger: Stranger | None = None  # made by the first round

    def measure_round(
        self, naas_story: Callable[[], Story], entry: dict[str, Any], rnd: int, duration: int
    ) -> bool:
        """One round into ``entry["rounds"]``: for each variant, the flood at a closed port
        then at beta's mesh port. False if a measurement failed (its error is recorded)."""
        print(f"naas-flood: round {rnd}", flush=True)
        measured: dict[str, Any] = {"round": rnd}
        server = None
        try:
            story = naas_story()
            if self.stranger is None:
                self.stranger = Stranger.create(self.lab)
            mesh_port = int(agent(story, B)["listen"].rpartition(":")[2])
            ports = {"closed": closed_port(self.lab), "mesh": mesh_port}
            server = start_iperf_server(self.lab, self.workdir)
            for variant, rate in FLOOD_VARIANTS.items():
                measured[variant] = {}
                for aim, port in ports.items():
                    label = f"{'full' if rate is None else rate}-{aim}-{rnd}"
                    one = measured[variant][aim] = self.measure(story, port, mesh_port, rate, label, duration)
                    print(
                        f"  {variant} at the {aim} port ({one['flood'].get('rate')}/s): ping loss"
                        f" {one['ping']['loss_percent']} %, RTT {one['ping']['median_ms']} ms,"
                        f" 1 stream {one['tcp1']['gbps']} Gbit/s, beta drops {one['beta_drops']}",
                        flush=True,
                    )
        except Exception as error:
            measured["error"] = f"{type(error).__name__}: {error}"
            print(f"naas-flood: round {rnd} FAILED: {measured['error']}", flush=True)
        finally:
            if server is not None:
                stop_process(server)
        entry.setdefault("rounds", []).append(measured)
        return "error" not in measured

    def measure(
        self, story: Story, port: int, mesh_port: int, rate: int | None, label: str, duration: int
    ) -> dict[str, Any]:
        """Ping loss and 1-stream throughput alpha -> beta while mallory floods beta's `port`
        (its mesh port or a closed one), and what changed in beta meanwhile."""
        target = story.overlay_ip(B)
        wait_reach(story, target, "direct", None, UP_LIMIT)
        wait_for_server_done(self.lab)
        agent_log = client_node_dir(story.state_dir(B), NETWORK).log_path
        log_at = agent_log.stat().st_size if agent_log.exists() else 0
        before = beta_state(story, mesh_port)
        seconds = math.ceil(FLOOD_SETTLE + FLOOD_PINGS * PING_INTERVAL) + duration + 60  # an upper bound
        flood = self.start_flood(story, port, rate, seconds, self.workdir / f"flood-{label}.log")
        flood_started = time.monotonic()
        measured: dict[str, Any] = {}
        try:
            time.sleep(FLOOD_SETTLE)
            measured["ping"] = ping_loss(self.lab.host(A), target)
            measured["tcp1"] = single_stream_or_zero(self.lab.host(A), target, duration)
            during = beta_state(story, mesh_port, flood.pid)
        finally:
            measured["flood"] = stop_flood(flood)
        after = beta_state(story, mesh_port)
        logged = agent_log.read_bytes()[log_at:].decode(errors="replace") if agent_log.exists() else ""
        measured["beta_peer_down_events"] = sum("peer_down" in line for line in logged.splitlines())
        measured["cores"] = cores_used(before, during, during["at"] - flood_started)
        return measured | changes_in_beta(before, during, after)

    def start_flood(
        self, story: Story, port: int, rate: int | None, seconds: int, log: Path
    ) -> subprocess.Popen[str]:
        """bench/flood in mallory at beta's `port`; returns once it says it is sending."""
        assert self.stranger is not None
        certificate = client_node_dir(story.state_dir(B), NETWORK).path / "certificate.json"
        argv = [sys.executable, str(FLOOD), "--certificate", str(certificate)]
        argv += ["--target", f"{self.lab.host(B).address}:{port}", "--duration", str(seconds)]
        argv += [] if rate is None else ["--rate", str(rate)]
        with open(log, "ab") as stderr:
            flood: subprocess.Popen[str] = self.stranger.namespace.popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True
            )
        assert flood.stdout is not None
        ready, _, _ = select.select([flood.stdout], [], [], 30.0)
        if not ready or flood.stdout.readline().strip() != "sending":
            stop_flood(flood)
            raise BenchError(f"bench/flood did not start: {log.read_text(errors='replace').strip()[-300:]}")
        return flood

    def close(self) -> None:
        if self.stranger is not None:
            self.stranger.close()


def stop_flood(flood: subprocess.Popen[str]) -> dict[str, Any]:
    """SIGTERM the flood by PID and read its JSON report (SIGKILL if it does not stop)."""
    if flood.poll() is None:
        flood.terminate()
    try:
        out, _ = flood.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        flood.kill()
        out, _ = flood.communicate(timeout=5)
    try:
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"no report (exit {flood.returncode})"}
    return report


def closed_port(lab: Lab) -> int:
    """A UDP port of beta nothing listens on: the reference flood's target."""
    listening = sh(lab.host(B), ["ss", "-Hlun", f"sport = :{FLOOD_CLOSED_PORT}"]).strip()
    if listening:
        raise BenchError(f"beta listens on UDP {FLOOD_CLOSED_PORT}, the flood's closed port: {listening}")
    return FLOOD_CLOSED_PORT


# --- what one measurement reads --------------------------------------------------------------


def beta_state(story: Story, mesh_port: int, flood_pid: int | None = None) -> dict[str, Any]:
    """What one measurement reads before, during and after the flood: beta's drop
    counters, its flood protection, how it reaches each peer, the kernel's UDP counters
    and its mesh socket's memory in beta, and CPU ticks (beta's agent, the flood, the
    machine and its softirq share)."""
    status = story.status(B)
    beta = story.lab.host(B)
    busy, softirq = machine_ticks()
    return {
        "drops": status.get("drops", {}),
        "handshakes": status["agent"].get("handshakes", {}),
        "reach": {p["name"]: p.get("reach") for p in status.get("peers", [])},
        "udp": udp_counters(beta),
        "socket": socket_memory(beta, mesh_port),
        "agent_ticks": daemon_ticks({status["agent"]["pid"]}),
        "flood_ticks": daemon_ticks({flood_pid}) if flood_pid else 0,
        "machine_ticks": busy,
        "softirq_ticks": softirq,
        "at": time.monotonic(),
    }


def machine_ticks() -> tuple[int, int]:
    """All CPUs' busy ticks (as `machine_busy_ticks`) and, of those, softirq's."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return machine_busy_ticks(), int(fields[7])


def udp_counters(host: LabHost) -> dict[str, int]:
    """The kernel's UDP counters in `host`'s namespace (the Udp: lines of /proc/net/snmp):
    InDatagrams, NoPorts (datagrams to a closed port), RcvbufErrors (dropped at a full
    socket buffer), ..."""
    snmp = sh(host, ["cat", "/proc/net/snmp"]).splitlines()
    names, values = (line.split()[1:] for line in snmp if line.startswith("Udp:"))
    return dict(zip(names, (int(value) for value in values), strict=True))


def socket_memory(host: LabHost, port: int) -> dict[str, int]:
    """`ss -m` of the UDP socket bound to `port`: r bytes queued, rb its receive buffer,
    d datagrams it dropped (the kernel's names)."""
    out = sh(host, ["ss", "-Hulnm", f"sport = :{port}"])
    found = re.search(r"skmem:\(([^)]*)\)", out)
    pairs = (re.fullmatch(r"([a-z_]+)(\d+)", item) for item in found.group(1).split(",")) if found else ()
    return {m.group(1): int(m.group(2)) for m in pairs if m}


def ping_loss(host: LabHost, target: str) -> dict[str, Any]:
    """FLOOD_PINGS pings at PING_INTERVAL: loss (from ping's own summary) and RTTs."""
    deadline = math.ceil(FLOOD_PINGS * PING_INTERVAL) + 10
    argv = ["ping", "-n", "-i", str(PING_INTERVAL), "-c", str(FLOOD_PINGS), "-W", "1", "-w", str(deadline)]
    out = host.run([*argv, target], timeout=deadline + 10).stdout
    summary_line = next((line for line in out.splitlines() if "packets transmitted" in line), "")
    words = summary_line.replace(",", "").split()  # N packets transmitted M received ...
    sent = int(words[0]) if words else FLOOD_PINGS
    received = int(words[3]) if len(words) > 3 else 0
    rtts = [float(word[5:]) for line in out.splitlines() for word in line.split() if word.startswith("time=")]
    return {
        "sent": sent,
        "answered": received,
        "loss_percent": round(100 * (1 - received / sent), 2) if sent else 100.0,
        "median_ms": round(statistics.median(rtts), 3) if rtts else None,
        "p99_ms": round(percentile(rtts, 99), 3) if rtts else None,
    }


def single_stream_or_zero(host: LabHost, target: str, duration: int) -> dict[str, Any]:
    """A 1-stream iperf3 run; one that fails (no connection under the flood) counts 0."""
    try:
        return iperf(host, target, duration, 1)
    except (BenchError, subprocess.TimeoutExpired) as error:
        return {"gbps": 0.0, "error": f"{type(error).__name__}: {error}"}


def cores_used(before: dict[str, Any], during: dict[str, Any], flood_seconds: float) -> dict[str, float]:
    """CPU cores used from `before` to `during` (the flood's: over its whole life)."""
    seconds = float(during["at"] - before["at"])

    def cores(key: str) -> float:
        return round(float(during[key] - before[key]) / TICK / seconds, 3)

    return {
        "beta_agent": cores("agent_ticks"),
        "flood": round(during["flood_ticks"] / TICK / flood_seconds, 3),
        "softirq": cores("softirq_ticks"),
        "machine": cores("machine_ticks"),
    }


def changes_in_beta(before: dict[str, Any], during: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """beta's counters over the flood (`after` - `before`), and what it showed `during`."""
    reasons = sorted(after["drops"].keys() | before["drops"].keys())
    drops = {reason: after["drops"].get(reason, 0) - before["drops"].get(reason, 0) for reason in reasons}
    handshakes = {
        k: after["handshakes"].get(k, 0) - before["handshakes"].get(k, 0) for k in HANDSHAKE_COUNTERS
    }
    return {
        "beta_drops": {reason: count for reason, count in drops.items() if count},
        "beta_handshakes": handshakes | {"under_load_during": during["handshakes"].get("under_load")},
        "beta_reach_during": during["reach"],
        "beta_udp": {key: after["udp"][key] - before["udp"][key] for key in UDP_COUNTERS},
        "beta_socket_during": during["socket"],
        "beta_socket_drops": during["socket"].get("d", 0) - before["socket"].get("d", 0),
    }


def links_stayed_up(measurement: dict[str, Any]) -> bool:
    """No peer_down in beta's log during the flood, and beta still reached alpha directly."""
    reach = measurement["beta_reach_during"]
    return bool(measurement["beta_peer_down_events"] == 0 and reach.get(A) == "direct")


# --- the figures and the Markdown --------------------------------------------------------------


def flood_side(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one side (the flood at the mesh port, or at the closed one)."""

    def median(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return {
        "loss_percent": median([m["ping"]["loss_percent"] for m in measurements]),
        "rtt_median_ms": median([m["ping"]["median_ms"] for m in measurements]),
        "gbps": median([m["tcp1"]["gbps"] for m in measurements]),
        "flood_rate": median([m["flood"].get("rate") for m in measurements]),
    }


def flood_figures(entry: dict[str, Any]) -> dict[str, Any]:
    """Per variant, over the rounds: each side's medians, the throughput ratio (mesh-port
    flood over closed-port flood, round by round, then the median) and the verdict."""
    rounds = [r for r in entry.get("rounds", []) if "error" not in r]
    figures: dict[str, Any] = {}
    for variant in FLOOD_VARIANTS:
        mesh = [r[variant]["mesh"] for r in rounds if variant in r]
        closed = [r[variant]["closed"] for r in rounds if variant in r]
        if not mesh:
            continue
        ratios = [
            m["tcp1"]["gbps"] / c["tcp1"]["gbps"]
            for m, c in zip(mesh, closed, strict=True)
            if c["tcp1"]["gbps"]
        ]
        ratio = statistics.median(ratios) if ratios else None
        loss = flood_side(mesh)["loss_percent"]
        figures[variant] = {
            "mesh": flood_side(mesh),
            "closed": flood_side(closed),
            "ratio": None if ratio is None else round(ratio, 3),
            "round_ratios": [round(x, 3) for x in ratios],
            "beta_drops": [m["beta_drops"] for m in mesh],
            "links_up": all(links_stayed_up(m) for m in mesh),
            "peer_down_events": sum(m["beta_peer_down_events"] for m in mesh),
            "met": None
            if loss is None or ratio is None
            else loss <= FLOOD_TARGETS["ping_loss_percent"] and ratio >= FLOOD_TARGETS["throughput_ratio"],
        }
    return figures


def flood_table(flood: dict[str, Any]) -> list[str]:
    """The "Handshake flood" section of the Markdown result."""
    if not flood.get("rounds"):
        return []
    lines = [
        "## Handshake flood",
        "",
        f"Host {STRANGER} (not a member, on the same site) sends well-formed Noise initiations with a"
        " valid mac1 (bench/flood: one Python process, one UDP socket) to beta's mesh port, and, as"
        f" the reference, the same flood to a closed UDP port of beta ({FLOOD_CLOSED_PORT}). During"
        f" each: {FLOOD_PINGS} pings alpha -> beta over naas0 at {PING_INTERVAL} s, then a"
        " 1-stream iperf3. Medians over the rounds; ratio = mesh-port Gbit/s over closed-port"
        f" Gbit/s, round by round. Target: ping loss <= {FLOOD_TARGETS['ping_loss_percent']:g} % and"
        f" ratio >= {FLOOD_TARGETS['throughput_ratio']:.0%}.",
        "",
        "| flood | aimed at | flood rate /s | ping loss % | RTT median ms | 1 stream Gbit/s | ratio"
        f" | beta's drops ({' / '.join(FLOOD_DROPS)}) | beta's links | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, f in flood.get("figures", {}).items():
        drops = "; ".join(
            " / ".join(str(d.get(reason, 0)) for reason in FLOOD_DROPS) for d in f["beta_drops"]
        )
        verdict = "n/a" if f["met"] is None else ("met" if f["met"] else "not met")
        ratio = "n/a" if f["ratio"] is None else f"{f['ratio']:.0%}"
        links = "up" if f["links_up"] else f"down ({f['peer_down_events']} peer_down)"
        for aim in ("mesh", "closed"):
            side = f[aim]
            lines.append(
                f"| {variant} | {aim} port | {fmt(side['flood_rate'], '.0f')}"
                f" | {fmt(side['loss_percent'], '.3g')} | {fmt(side['rtt_median_ms'], '.3f')}"
                f" | {fmt(side['gbps'])} | {ratio if aim == 'mesh' else ''}"
                f" | {drops if aim == 'mesh' else ''}"
                f" | {links if aim == 'mesh' else ''}"
                f" | {verdict if aim == 'mesh' else ''} |"
            )
    lines += [
        "",
        "| round | flood | aimed at | sent /s | ping loss % | RTT median / p99 ms | Gbit/s"
        " | CPU cores: beta's agent / flood / softirq / machine | beta's drops"
        " | handshakes admitted / cookies sent | under load | peer_down | beta reaches"
        " | beta's kernel: UDP in / to a closed port / dropped at a full buffer"
        " | mesh socket queued / buffer KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in flood["rounds"]:
        if "error" in r:
            lines.append(f"| {r['round']} | error: {r['error'].replace('|', '/')} |" + " |" * 13)
            continue
        for variant in FLOOD_VARIANTS:
            for aim, m in r.get(variant, {}).items():
                ping, hs, cpu, udp = m["ping"], m["beta_handshakes"], m["cores"], m["beta_udp"]
                queued = m["beta_socket_during"]
                drops = ", ".join(f"{k} {v}" for k, v in m["beta_drops"].items()) or "-"
                reach = ", ".join(f"{k} {v}" for k, v in m["beta_reach_during"].items())
                lines.append(
                    f"| {r['round']} | {variant} | {aim} | {m['flood'].get('rate')} | {ping['loss_percent']}"
                    f" | {fmt(ping['median_ms'], '.3f')} / {fmt(ping['p99_ms'], '.3f')} | {m['tcp1']['gbps']}"
                    f" | {' / '.join(f'{cpu[k]:.2f}' for k in ('beta_agent', 'flood', 'softirq', 'machine'))}"
                    f" | {drops} | {hs['admitted']} / {hs['cookies_sent']} | {hs['under_load_during']}"
                    f" | {m['beta_peer_down_events']} | {reach}"
                    f" | {udp['InDatagrams']} / {udp['NoPorts']} / {udp['RcvbufErrors']}"
                    f" | {queued.get('r', 0) // 1024} / {queued.get('rb', 0) // 1024} |"
                )
    return lines
