"""The user's story, step by step, on a namespace lab: used by `naas demo` and e2e tests.

Every step runs the real commands a user runs (``naas init``, ``naas pop``,
``naas invite``, ``naas-enrollment``, ``naas status``) inside the hosts'
namespaces; each host has its own state directory under the story's work directory,
as separate machines would. The two PoPs share one SQLite store file (the lab is one
machine); on real machines they share a PostgreSQL store instead.

Clients enroll with ``naas-enrollment -`` and the URL on standard input (or
``--url-file``), never with the URL in the command line, where its token would show in
``ps``; every command line the story runs is kept in ``Story.commands``.
`Story.shell_command` and `Story.pop_command` are the commands a user runs in a kept
lab: a shell inside a host with that host's state, and a PoP started again.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise, permutations
from pathlib import Path
from typing import Any, Literal

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


def commands_dir() -> Path:
    """Where the ``naas``, ``naas-enrollment`` and ``naas-drawing`` commands are (.venv/bin)."""
    return Path(sys.executable).parent


EnrollVia = Literal["stdin", "file", "argv"]  # how `Story.enroll` hands over the URL


def config_text(
    lab: Lab,
    *,
    layer3: bool = True,
    fixed: dict[str, str] | None = None,
    certificate_lifetime: str | None = None,
    groups: dict[str, tuple[str, ...]] | None = None,
    allowed_addresses: dict[str, tuple[str, ...]] | None = None,
    policy: str = "",
) -> str:
    """The story's naas.toml for the lab's hosts; ``groups`` and ``allowed_addresses`` of
    clients by name, ``policy``: TOML appended as it is (a ``[policy]`` table)."""
    lines = ["[network]", f'name = "{NETWORK}"', "mesh_port = 5640", "enrollment_port = 5641"]
    if certificate_lifetime is not None:
        lines.append(f'certificate_lifetime = "{certificate_lifetime}"')
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
        if groups and name in groups:
            lines.append("groups = [" + ", ".join(f'"{group}"' for group in groups[name]) + "]")
        if allowed_addresses and name in allowed_addresses:
            lines.append("allowed_addresses = [" + ", ".join(f'"{n}"' for n in allowed_addresses[name]) + "]")
    if policy:
        lines += ["", policy.strip()]
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
    commands: list[list[str]] = field(default_factory=list)  # every command line run, in order

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

    def env(self, host: str) -> dict[str, str]:
        """The environment that points the commands at ``host``'s state (and, on a PoP,
        at the store both PoPs share): what a kept lab's shell sets."""
        env = {"NAAS_STATE_DIR": str(self.state_dir(host))}
        if host in POPS:
            env["NAAS_POP_STORE"] = self.store_url
        return env

    def shell_command(self, host: str) -> str:
        """A shell command line that opens bash inside ``host`` with its state and the naas
        commands on PATH (append ``-c 'naas status'`` to run one command instead)."""
        assignments = " ".join(f"{key}={shlex.quote(value)}" for key, value in self.env(host).items())
        path = shlex.quote(str(commands_dir()))
        return f"ip netns exec {self.lab.host(host).namespace} env {assignments} PATH={path}:$PATH bash"

    def pop_argv(self, name: str) -> list[str]:
        """`naas pop` for PoP ``name``, with its state directory and the shared store."""
        return naas_argv(
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

    def pop_log(self, name: str) -> Path:
        return self.workdir / f"pop-{name}.log"

    def pop_command(self, name: str) -> str:
        """A shell command line that starts PoP ``name`` again in the background, as the
        story started it (log appended to its log file)."""
        argv = self.lab.host(name).argv([str(commands_dir() / "naas"), *self.pop_argv(name)[3:]])
        log = shlex.quote(str(self.pop_log(name)))
        return f"{shlex.join(argv)} >>{log} 2>&1 &"

    def run(
        self, host: str, argv: list[str], timeout: float = 60.0, *, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        return self.lab.host(host).run(argv, timeout=timeout, input=input)

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
        log = open(self.pop_log(name), "ab")  # noqa: SIM115 - lives with the process
        argv = self.pop_argv(name)
        self.commands.append(argv)
        self.pop_processes[name] = self.lab.host(name).popen(argv, stdout=log, stderr=log)
        log.close()
        process = self.pop_processes[name]
        if not self.wait_pop(name, alive=lambda: process.poll() is None):
            if process.poll() is not None:
                raise StoryError(f"PoP {name} exited (status {process.returncode}); see {self.pop_log(name)}")
            raise StoryError(f"PoP {name} did not start within 20 s; see {self.pop_log(name)}")

    def wait_pop(self, name: str, alive: Callable[[], bool] = lambda: True, seconds: float = 20) -> bool:
        """True once PoP ``name`` answers on its control socket and its HTTPS port (at
        most ``seconds``); False at once if ``alive()`` says its process exited."""
        socket = self.state_dir(name) / NETWORK / "pops" / name / "agent.sock"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not alive():
                return False
            if socket.exists() and self._https_ready(name):
                return True
            time.sleep(0.1)
        return False

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

    def enroll(
        self, client: str, url: str | None = None, *, via: EnrollVia = "stdin"
    ) -> subprocess.CompletedProcess[str]:
        """`naas-enrollment` on ``client``, the URL on standard input (``via="stdin"``: ``-``),
        in a 0600 file (``"file"``: ``--url-file``) or, as a user may still do, in the
        command line (``"argv"``)."""
        url = url or self.invitations[client]
        state = ["--state-dir", str(self.state_dir(client))]
        stdin = None
        if via == "stdin":
            argv, stdin = enrollment_argv("-", *state), url + "\n"
        elif via == "file":
            argv = enrollment_argv("--url-file", str(self.url_file(client, url)), *state)
        elif via == "argv":
            argv = enrollment_argv(url, *state)
        else:
            raise ValueError(f"via: stdin, file or argv, not {via!r}")
        started = time.monotonic()
        result = self.run(client, argv, 60, input=stdin)
        self.enroll_seconds[client] = time.monotonic() - started
        return result

    def url_file(self, client: str, url: str) -> Path:
        """``url`` written to a file only its owner may read (mode 0600 from the start)."""
        path = self.workdir / "invitations" / f"{client}.url"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(url + "\n")
        return path

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
