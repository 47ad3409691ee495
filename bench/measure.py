"""What bench/run's systems and its handshake flood figure (bench/flood_figure.py) share.

Commands in the lab's hosts (`sh`) and on the machine (`local`), waiting (`wait_until`,
`wait_reach`), iperf3 (a server in beta, a client in alpha, the receiver's Gbit/s from its
JSON), CPU accounting from /proc (a daemon's utime + stime with its children's, the
machine's busy time) and number formatting. Every command has a timeout, and a step that
fails raises BenchError with what failed and why. Imported by bench/run, whose directory
is on sys.path when it runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from naas.lab.netns import Lab, LabHost
from naas.lab.story import Story

A, B = "alpha", "beta"  # the two ends of every measurement: iperf3 clients in A, its server in B
IPERF_PORT = 5201
PING_INTERVAL = 0.01
UP_LIMIT = 30.0  # seconds for a tunnel to pass pings, or for alpha to reach beta directly


class BenchError(Exception):
    """A step of the bench failed; the message says which and why."""


# --- commands and waiting ---------------------------------------------------------------


def sh(host: LabHost, argv: list[str], timeout: float = 30.0) -> str:
    """Run `argv` in `host`'s namespace; raise BenchError with its stderr if it fails."""
    try:
        done = host.run(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{host.name}: timed out after {timeout} s: {' '.join(argv)}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise BenchError(f"{host.name}: {' '.join(argv)} failed: {detail}")
    return done.stdout


def local(argv: list[str], timeout: float = 60.0) -> str:
    """Run a command in the machine's own namespace (key generation, and `ip` building mallory)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def wait_until(what: str, check: Callable[[], bool], limit: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() >= deadline:
            raise BenchError(f"{what}: not within {limit:.0f} s")
        time.sleep(interval)


def pings_once(host: LabHost, target: str) -> bool:
    return host.run(["ping", "-n", "-c", "1", "-W", "1", target], timeout=5).returncode == 0


def agent(story: Story, host: str) -> dict[str, Any]:
    info: dict[str, Any] = story.status(host)["agent"]
    return info


def wait_reach(story: Story, target: str, reach: str, via: str | None, limit: float) -> None:
    """Ping beta from alpha until alpha's `naas status` shows beta as `reach` (via `via`)."""
    seen: dict[str, Any] = {}

    def there() -> bool:
        pings_once(story.lab.host(A), target)
        peer: dict[str, Any] = next((p for p in story.status(A)["peers"] if p["name"] == B), {})
        seen.update(reach=peer.get("reach"), via=peer.get("via"))
        return peer.get("reach") == reach and (via is None or peer.get("via") == via)

    try:
        wait_until(f"alpha sees beta as {reach}" + (f" via {via}" if via else ""), there, limit, 0.5)
    except BenchError as error:
        raise BenchError(f"{error} (last: reach {seen.get('reach')}, via {seen.get('via')})") from None


def stop_process(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


# --- iperf3 ---------------------------------------------------------------------------------


def iperf_argv(target: str, duration: int, streams: int) -> list[str]:
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-J", "-O", "1", "-t", str(duration)]
    return [*argv, "-P", str(streams)] if streams > 1 else argv


def iperf_result(out: str) -> dict[str, Any]:
    try:
        data = json.loads(out)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {out.strip()[:200]}") from None
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    end = data["end"]
    return {
        "gbps": round(end["sum_received"]["bits_per_second"] / 1e9, 4),
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
    }


def iperf(host: LabHost, target: str, duration: int, streams: int) -> dict[str, Any]:
    done = host.run(iperf_argv(target, duration, streams), timeout=duration + 40)
    return iperf_result(done.stdout)


def start_iperf_server(lab: Lab, workdir: Path) -> subprocess.Popen[Any]:
    beta = lab.host(B)
    with open(workdir / "iperf3-server.log", "ab") as log:
        server = beta.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if server.poll() is not None:
            raise BenchError(f"iperf3 -s exited (see {workdir / 'iperf3-server.log'})")
        return bool(beta.run(["ss", "-Hltn", f"sport = :{IPERF_PORT}"], timeout=5).stdout.strip())

    wait_until("iperf3 server listening in beta", listening, 10.0, 0.1)
    return server


def wait_for_server_done(lab: Lab) -> None:
    """Until iperf3 -s has closed the last test's sockets: a client that comes sooner is
    told "the server is busy running a test" (seen on a slow machine after a 1-stream run)."""
    beta = lab.host(B)
    argv = ["ss", "-Htn", "state", "established", "state", "close-wait", f"sport = :{IPERF_PORT}"]
    wait_until(
        "iperf3 server done with the last test",
        lambda: not beta.run(argv, timeout=5).stdout.strip(),
        15.0,
        0.05,
    )


# --- CPU accounting ------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def with_children(pids: list[int]) -> set[int]:
    """`pids` and all their descendants (a daemon's helper processes count as the daemon)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        fields = _proc_stat(int(entry)) if entry.isdigit() else None
        if fields:
            parents[int(entry)] = int(fields[1])
    found = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def daemon_ticks(pids: set[int]) -> int:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) of `pids`, in clock ticks."""
    total = 0
    for pid in pids:
        fields = _proc_stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total


def machine_busy_ticks() -> int:
    """All CPUs' busy time from /proc/stat: user nice system irq softirq steal.

    That is every field but idle and iowait; guest and guest_nice are left out because
    the kernel already counts them in user and nice.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq + steal


TICK = os.sysconf("SC_CLK_TCK")


# --- numbers --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def fmt(value: Any, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)
