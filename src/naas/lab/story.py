"""The user's story, step by step, on a namespace lab: used by `naas demo` and e2e tests.

Every step runs the real commands a user runs (``naas init``, ``naas pop``,
``naas invite``, ``naas-enrollment URL``, ``naas status``) inside the hosts'
namespaces; each host has its own state directory under the story's work directory,
as separate machines would. The two PoPs share one SQLite store file (the lab is one
machine); on real machines they share a PostgreSQL store instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise, permutations
from pathlib import Path
from typing import Any

from naas.lab.netns import Lab

NETWORK = "my-virtual-cloud"
SUBNET = "172.32.0.0/16"
DHCP_RANGE = "172.32.1.10-172.32.1.250"
DEMO_SITES = {"onprem": "10.100.1.0/24", "aws": "10.100.2.0/24", "alibaba": "10.100.3.0/24"}
DEMO_HOSTS = {
    "master": "onprem",
    "slave": "onprem",
    "desktop": "onprem",
    "aws-web-1": "aws",
    "aws-web-2": "aws",
    "ali-app-1": "alibaba",
    "ali-db-1": "alibaba",
}
POPS = ("master", "slave")


class StoryError(Exception):
    """A step of the story failed; the message says which and why."""


def naas_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "naas", *args]


def enrollment_argv(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("naas-enrollment")
    if script.exists():
        return [str(script), *args]
    return naas_argv("join", *args)


def config_text(lab: Lab, *, layer3: bool = True, fixed: dict[str, str] | None = None) -> str:
    """The story's naas.toml for the lab's hosts."""
    lines = ["[network]", f'name = "{NETWORK}"', "mesh_port = 5640", "enrollment_port = 5641"]
    if layer3:
        lines += [f'subnet = "{SUBNET}"', f'dhcp_range = "{DHCP_RANGE}"']
    for pop in POPS:
        lines += ["", "[[pop]]", f'name = "{pop}"', f'address = "{lab.host(pop).address}"']
    for name in lab.hosts:
        if name in POPS:
            continue
        lines += ["", "[[client]]", f'name = "{name}"']
        if fixed and name in fixed:
            lines.append(f'ip = "{fixed[name]}"')
    return "\n".join(lines) + "\n"


@dataclass
class Story:
    lab: Lab
    workdir: Path
    layer3: bool = True
    config_path: Path = field(init=False)
    store_url: str = field(init=False)
    drawings: Path = field(init=False)  # where `naas demo` puts the pictures of the mesh
    pop_processes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    invitations: dict[str, str] = field(default_factory=dict)
    enroll_seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "naas.toml"
        self.drawings = self.workdir
        self.store_url = f"sqlite:///{self.workdir / 'pop-store.db'}"

    # -- paths ------------------------------------------------------------------------------

    def state_dir(self, host: str) -> Path:
        return self.workdir / "hosts" / host

    @property
    def clients(self) -> list[str]:
        return [name for name in self.lab.hosts if name not in POPS]

    def run(self, host: str, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.lab.host(host).run(argv, timeout=timeout)

    def naas(self, host: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(host, naas_argv(*args, "--state-dir", str(self.state_dir(host))), timeout)

    def _checked(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        if result.returncode != 0:
            raise StoryError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # -- the steps --------------------------------------------------------------------------

    def write_config(self, **options: Any) -> None:
        self.config_path.write_text(config_text(self.lab, layer3=self.layer3, **options))

    def init(self) -> str:
        """`naas init` on master, then the documented copy of its state to slave."""
        out = self._checked(
            "naas init",
            self.naas("master", "init", "--config", str(self.config_path), "--store", self.store_url),
        )
        # stands in for the printed `tar | ssh` copy: the slave gets the same state directory
        shutil.copytree(self.state_dir("master"), self.state_dir("slave"), dirs_exist_ok=True)
        return out

    def start_pop(self, name: str) -> None:
        log = open(self.workdir / f"pop-{name}.log", "ab")  # noqa: SIM115 - lives with the process
        argv = naas_argv(
            "pop",
            "--config",
            str(self.config_path),
            "--name",
            name,
            "--state-dir",
            str(self.state_dir(name)),
            "--store",
            self.store_url,
        )
        self.pop_processes[name] = self.lab.host(name).popen(argv, stdout=log, stderr=log)
        log.close()
        socket = self.state_dir(name) / NETWORK / "pops" / name / "agent.sock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pop_processes[name].poll() is not None:
                raise StoryError(f"PoP {name} exited; see {self.workdir / f'pop-{name}.log'}")
            if socket.exists() and self._https_ready(name):
                return
            time.sleep(0.1)
        raise StoryError(f"PoP {name} did not start within 20 s")

    def _https_ready(self, name: str) -> bool:
        host = self.lab.host(name)
        probe = "import socket,sys; socket.create_connection((sys.argv[1], 5641), timeout=1).close()"
        return host.run([sys.executable, "-c", probe, str(host.address)], timeout=5).returncode == 0

    def stop_pop(self, name: str) -> None:
        process = self.pop_processes.pop(name, None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def invite(self, *clients: str, ttl: str | None = None) -> dict[str, str]:
        args = ["invite", "--config", str(self.config_path), "--store", self.store_url, "--json"]
        for client in clients:
            args += ["--client", client]
        if ttl:
            args += ["--ttl", ttl]
        out = self._checked("naas invite", self.naas("master", *args))
        urls = {item["client"]: item["url"] for item in json.loads(out)}
        self.invitations.update(urls)
        return urls

    def enroll(self, client: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        url = url or self.invitations[client]
        started = time.monotonic()
        result = self.run(client, enrollment_argv(url, "--state-dir", str(self.state_dir(client))), 60)
        self.enroll_seconds[client] = time.monotonic() - started
        return result

    def enroll_all(self) -> None:
        for client in self.clients:
            self._checked(f"naas-enrollment on {client}", self.enroll(client))

    def status(self, host: str) -> dict[str, Any]:
        """`naas status --json` on ``host`` (a PoP host shows its PoP)."""
        out = self._checked(
            f"naas status on {host}", self.naas(host, "status", "--json", "--network", NETWORK)
        )
        result: dict[str, Any] = json.loads(out)
        return result

    def draw(self, host: str, output: Path) -> Path:
        """`naas draw -o OUTPUT` on ``host``: the mesh as ``host`` sees it (PNG, SVG or DOT by suffix)."""
        self._checked(
            f"naas draw on {host}", self.naas(host, "draw", "-o", str(output), "--network", NETWORK)
        )
        return output

    def overlay_ip(self, host: str) -> str:
        ip = self.status(host)["node"]["ip"]
        return str(ip).split("/")[0]

    def ping(self, source: str, target_ip: str, count: int = 1, wait: float = 2.0) -> float | None:
        """RTT in ms of a ping over naas0, or None if nothing came back."""
        result = self.lab.host(source).run(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-i", "0.2", target_ip],
            timeout=count * 0.2 + wait + 5,
        )
        if result.returncode != 0:
            return None
        for line in result.stdout.splitlines():
            if "min/avg/max" in line:
                return float(line.split("=")[1].split("/")[1])
        return None

    def ping_matrix(self, attempts: int = 3) -> dict[tuple[str, str], float | None]:
        """Every member pings every other over naas0 (a few tries for the first handshake)."""
        ips = {host: self.overlay_ip(host) for host in self.lab.hosts}
        results: dict[tuple[str, str], float | None] = {}
        for source, target in permutations(self.lab.hosts, 2):
            rtt = None
            for _ in range(attempts):
                rtt = self.ping(source, ips[target])
                if rtt is not None:
                    break
            results[(source, target)] = rtt
        return results

    def ping_outage(
        self, source: str, target_ip: str, *, seconds: float, action_at: float, action: Callable[[], None]
    ) -> tuple[float, int, int]:
        """Ping every 0.1 s for ``seconds``; run ``action`` after ``action_at`` s.

        Returns (longest gap between two answers in seconds, answers, sent).
        """
        count = int(seconds / 0.1)
        argv = ["ping", "-n", "-i", "0.1", "-W", "1", "-c", str(count), target_ip]
        process = self.lab.host(source).popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        time.sleep(action_at)
        action()
        out, _ = process.communicate(timeout=seconds + 15)
        answered = sorted(
            {
                int(word.split("=")[1])
                for line in out.splitlines()
                for word in line.split()
                if word.startswith("icmp_seq=")
            }
        )
        if len(answered) < 2:
            return (seconds, len(answered), count)
        gaps = [b - a for a, b in pairwise(answered)]
        gaps.append(count - answered[-1])
        return (round(max(gaps) * 0.1, 1), len(answered), count)

    def close(self) -> None:
        for name in list(self.pop_processes):
            self.stop_pop(name)
