"""A network-namespace lab: several "sites" joined by an underlay router, on one machine.

Theory of operation
-------------------
A `Lab` turns a declarative description (sites with their underlay subnets, hosts with
their site) into namespaces::

      naas-<id>-desktop      naas-<id>-laptop         naas-<id>-web
        eth0 10.100.1.10       eth0 10.100.1.11         eth0 10.100.2.10
          |                      |                        |
    +-----+--- naas-<id>-underlay (router, ip_forward=1) -+------------------+
    |  vh0 + vh1 -> br0 "onprem" 10.100.1.1/24    vh2 -> br1 "aws" 10.100.2.1/24   |
    +-----------------------------------------------------------------------------+

Each host is a namespace with one veth (``eth0``) whose peer sits in the router
namespace, enslaved to its site's bridge; the bridge holds the site's gateway (``.1``) and
the router forwards between sites, so every host reaches every other host's underlay
address, hosts of one site share a layer-2 segment, and the machine's own namespace is
never touched (both veth ends are created directly inside the lab's namespaces). Host
addresses are ``.10``, ``.11``, ... in the order hosts are declared within their site.
There is no added latency or loss: this kernel has no netem.

Names are unique per run: every namespace is ``<prefix><6 hex lab id>-<name>``, so labs
of parallel or crashed runs never collide. Before it creates anything the lab writes a
state file (``/run/naas-lab/<id>.json``: namespaces, started processes with their kernel
start times, the owner process); `Lab.close` kills the processes (SIGTERM, then SIGKILL),
deletes the namespaces (which deletes their veths and bridges) and the file. It is
idempotent and also runs when building fails. `Lab.keep` leaves everything running for
`naas demo`; `remove_saved_labs` (``naas demo down``) removes kept labs and labs whose
owner died, with the directories recorded by `Lab.own` (the demo's work directory: CA
key, state, logs); `cleanup_stale` also finds namespaces a crash left without a state file.

Commands run inside a namespace through ``ip netns exec`` (which also gives the command
a matching ``/sys``); Python code can enter one with `Namespace.entered` (``setns(2)`` on
the calling thread), e.g. to create a TAP device there. Links are built with ``ip -batch``
rather than pyroute2: this is test tooling, ``ip`` creates veth pairs straight into two
namespaces in one line and its errors are readable; the daemon itself uses netlink
(`naas.daemon.netconf`). `Lab.block` cuts the underlay between two hosts with an
nftables set in the first host's namespace (both directions dropped there).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

LAB_PREFIX = "naas-"
STATE_DIR = Path("/run/naas-lab")
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins namespaces
ROUTER = "underlay"  # the router namespace's short name (not allowed as a host name)
DEMO_SITES: Mapping[str, str] = {
    "onprem": "10.100.1.0/24",
    "aws": "10.100.2.0/24",
    "alibaba": "10.100.3.0/24",
}
FIRST_HOST = 10  # hosts get .10, .11, ... of their site
UNDERLAY_IFNAME = "eth0"  # the host side of each host's veth

COMMAND_TIMEOUT = 20.0  # any single setup / teardown command
TERM_GRACE = 3.0  # SIGTERM -> SIGKILL
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_NFT_TABLE = "naas_lab"
_CLONE_NEWNET = 0x40000000


class LabError(Exception):
    """Building or driving the lab failed; the message says which command and why."""


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    subnet: IPv4Network
    gateway: IPv4Interface  # held by the site's bridge in the router namespace
    bridge: str  # bridge name inside the router namespace


# --- small system helpers --------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _command(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run a setup command; raise `LabError` with its stderr if it fails."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {COMMAND_TIMEOUT}s: {' '.join(argv)}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise LabError(f"{' '.join(argv)} failed: {detail}")
    return done.stdout


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22: starttime


def same_process(pid: int, start: int | None) -> bool:
    """``pid`` is still the process that started at ``start`` (pids are reused)."""
    return start is not None and process_start_time(pid) == start


def _namespace_pids(namespace: str) -> list[int]:
    try:
        out = subprocess.run(
            ["ip", "netns", "pids", namespace],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        ).stdout
    except subprocess.TimeoutExpired:
        return []
    return [int(word) for word in out.split() if word.isdigit()]


def _terminate(processes: Sequence[tuple[int, int | None]]) -> None:
    """SIGTERM every (pid, start time) still alive, SIGKILL what survives the grace."""
    alive = [(pid, start) for pid, start in processes if same_process(pid, start)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in alive:
            if same_process(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + TERM_GRACE
        while time.monotonic() < deadline:
            alive = [(pid, start) for pid, start in alive if _is_running(pid, start)]
            if not alive:
                return
            time.sleep(0.05)


def _is_running(pid: int, start: int | None) -> bool:
    """Alive and not a zombie (a zombie has already left its namespaces)."""
    if not same_process(pid, start):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def teardown(namespaces: Sequence[str], processes: Sequence[tuple[int, int | None]]) -> None:
    """Kill `processes` and everything else inside `namespaces`, then delete them."""
    present = [namespace for namespace in namespaces if (NETNS_DIR / namespace).exists()]
    stragglers = [
        (pid, process_start_time(pid))
        for namespace in present
        for pid in _namespace_pids(namespace)
        if pid != os.getpid()  # a thread of ours may have entered it: never kill ourselves
    ]
    _terminate([*processes, *stragglers])
    for namespace in present:
        with contextlib.suppress(LabError):
            _command(["ip", "netns", "delete", namespace])


# --- namespaces and hosts --------------------------------------------------------------


class Namespace:
    """One namespace of a lab: run commands in it, or enter it from Python."""

    def __init__(self, lab: Lab, name: str, namespace: str):
        self.lab = lab
        self.name = name  # short name, e.g. "desktop"
        self.namespace = namespace  # full name, e.g. "naas-1a2b3c-desktop"

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def run(
        self,
        command: Sequence[str],
        timeout: float = 30.0,
        *,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed after `timeout` s); output captured as text."""
        return subprocess.run(
            self.argv(command),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start in the background; the lab kills it on close (SIGTERM, then SIGKILL)."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.argv(command), **kwargs)
        self.lab._track(process, command)
        return process

    exec = popen  # the name the lab's first users asked for

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace for the block (setns(2))."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(NETNS_DIR / self.namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(original)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.namespace}>"


class LabHost(Namespace):
    """A host: a namespace with one underlay interface (`UNDERLAY_IFNAME`) in a site."""

    def __init__(self, lab: Lab, name: str, namespace: str, *, site: Site, address: IPv4Address, port: str):
        super().__init__(lab, name, namespace)
        self.site = site
        self.interface = IPv4Interface(f"{address}/{site.subnet.prefixlen}")
        self.router_port = port  # its veth peer in the router namespace

    @property
    def address(self) -> IPv4Address:
        """The host's underlay IPv4 address."""
        return self.interface.ip


# --- the lab -----------------------------------------------------------------------------


class Lab:
    """Sites, hosts and an underlay router in namespaces (see module docstring).

    ``Lab(sites={"onprem": "10.100.1.0/24", ...}, hosts={"desktop": "onprem", ...})``
    describes; `start` (or ``with``) builds; `close` removes everything.
    """

    def __init__(
        self,
        *,
        hosts: Mapping[str, str],
        sites: Mapping[str, str | IPv4Network] = DEMO_SITES,
        lab_id: str | None = None,
        prefix: str = LAB_PREFIX,
        state_dir: Path = STATE_DIR,
    ):
        self.lab_id = lab_id or _new_lab_id(prefix)
        self.prefix = f"{prefix}{self.lab_id}-"
        self.state_path = Path(state_dir) / f"{self.lab_id}.json"
        self.sites: dict[str, Site] = {}
        for index, (name, subnet) in enumerate(sites.items()):
            network = IPv4Network(subnet)
            gateway = IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")
            self.sites[_checked(name, "site")] = Site(name, network, gateway, f"br{index}")
        self.router = Namespace(self, ROUTER, self.prefix + ROUTER)
        self._hosts: dict[str, LabHost] = {}
        for name, site_name in hosts.items():
            if _checked(name, "host") == ROUTER:
                raise ValueError(f"{ROUTER!r} is the router's name, not a host name")
            if site_name not in self.sites:
                raise ValueError(f"host {name!r}: unknown site {site_name!r}")
            site = self.sites[site_name]
            index = sum(1 for host in self._hosts.values() if host.site is site)
            address = site.subnet.network_address + FIRST_HOST + index
            if address not in site.subnet or address == site.subnet.broadcast_address:
                raise ValueError(f"site {site_name!r}: {site.subnet} is too small")
            self._hosts[name] = LabHost(
                self,
                name,
                self.prefix + name,
                site=site,
                address=address,
                port=f"vh{len(self._hosts)}",
            )
        self._processes: list[tuple[subprocess.Popen[Any], int | None, list[str]]] = []
        self._paths: list[Path] = []  # directories of the lab's own, removed with a saved lab
        self._created: list[str] = []  # namespaces this lab made: the only ones it deletes
        self._firewalled: set[str] = set()
        self._blocked: set[tuple[str, str]] = set()
        self._started = False
        self._closed = False
        self._kept = False

    # -- description --

    @property
    def hosts(self) -> dict[str, LabHost]:
        return dict(self._hosts)

    def host(self, name: str) -> LabHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in lab {self.lab_id}") from None

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, hosts first, the router last."""
        return [host.namespace for host in self._hosts.values()] + [self.router.namespace]

    # -- life cycle --

    def start(self) -> Lab:
        """Build the namespaces, links and addresses. On failure, remove what was built."""
        if self._started:
            raise LabError(f"lab {self.lab_id} was already started")
        self._started = True
        taken = [name for name in self.namespaces if (NETNS_DIR / name).exists()]
        if taken:
            self._closed = True
            raise LabError(f"lab {self.lab_id}: namespaces already exist: {', '.join(taken)}")
        try:
            self.save_state()
            for namespace in self.namespaces:
                _command(["ip", "netns", "add", namespace])
                self._created.append(namespace)
            _command(
                ["ip", "-batch", "-"],
                stdin="".join(
                    f"link add {UNDERLAY_IFNAME} netns {host.namespace} type veth"
                    f" peer name {host.router_port} netns {self.router.namespace}\n"
                    for host in self._hosts.values()
                ),
            )
            self._build_router()
            for host in self._hosts.values():
                _command(
                    ["ip", "-n", host.namespace, "-batch", "-"],
                    stdin=(
                        "link set lo up\n"
                        f"address add {host.interface} dev {UNDERLAY_IFNAME}\n"
                        f"link set {UNDERLAY_IFNAME} up\n"
                        f"route add default via {host.site.gateway.ip}\n"
                    ),
                )
        except BaseException:
            self.close()
            raise
        return self

    def _build_router(self) -> None:
        lines = ["link set lo up\n"]
        for site in self.sites.values():
            lines += [
                f"link add {site.bridge} type bridge\n",
                f"link set {site.bridge} alias {site.name}\n",
                f"address add {site.gateway} dev {site.bridge}\n",
                f"link set {site.bridge} up\n",
            ]
        for host in self._hosts.values():
            lines += [
                f"link set {host.router_port} alias {host.name}\n",
                f"link set {host.router_port} master {host.site.bridge} up\n",
            ]
        _command(["ip", "-n", self.router.namespace, "-batch", "-"], stdin="".join(lines))
        _command(self.router.argv(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))

    def close(self) -> None:
        """Kill the lab's processes, delete its namespaces and state file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        processes = [(p.pid, start) for p, start, _ in self._processes if p.poll() is None]
        teardown(self._created, processes)
        for process, _start, _argv in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1.0)  # reap
        self.state_path.unlink(missing_ok=True)

    def own(self, path: Path) -> None:
        """Record ``path`` (a directory of this lab's own, e.g. a work directory with keys
        and logs) in the state file, so that `remove_saved_labs` deletes it with the lab.
        `close` leaves it: the caller decides whether a finished run's files stay."""
        path = Path(path).resolve()
        if path not in self._paths:
            self._paths.append(path)
            if self._started and not self._closed:
                self.save_state()

    def keep(self) -> Path:
        """Leave the lab running after this process exits; `remove_saved_labs` ends it."""
        self._kept = True
        return self.save_state()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if not self._kept:
            self.close()

    # -- processes and state --

    def _track(self, process: subprocess.Popen[Any], argv: Sequence[str]) -> None:
        self._processes.append((process, process_start_time(process.pid), list(argv)))
        self.save_state()

    def save_state(self) -> Path:
        """Write the state file (namespaces, processes, addresses) atomically."""
        state = {
            "lab_id": self.lab_id,
            "prefix": self.prefix,
            "owner": {"pid": os.getpid(), "start": process_start_time(os.getpid())},
            "kept": self._kept,
            "namespaces": self.namespaces,
            "processes": [{"pid": p.pid, "start": start, "argv": argv} for p, start, argv in self._processes],
            "paths": [str(path) for path in self._paths],
            "sites": {name: str(site.subnet) for name, site in self.sites.items()},
            "hosts": {
                name: {"namespace": h.namespace, "site": h.site.name, "address": str(h.address)}
                for name, h in self._hosts.items()
            },
        }
        self.state_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.state_path)
        return self.state_path

    # -- faults --

    def block(self, host_a: str, host_b: str) -> None:
        """Cut the underlay between two hosts: host_a drops everything to/from host_b."""
        a, b = self.host(host_a), self.host(host_b)
        if (host_a, host_b) in self._blocked:
            return
        script = ""
        if host_a not in self._firewalled:
            table = f"inet {_NFT_TABLE}"
            script += (
                f"add table {table}\n"
                f"add set {table} blocked {{ type ipv4_addr; }}\n"
                f"add chain {table} input {{ type filter hook input priority 0; }}\n"
                f"add chain {table} output {{ type filter hook output priority 0; }}\n"
                f"add rule {table} input ip saddr @blocked drop\n"
                f"add rule {table} output ip daddr @blocked drop\n"
            )
        script += f"add element inet {_NFT_TABLE} blocked {{ {b.address} }}\n"
        _command(a.argv(["nft", "-f", "-"]), stdin=script)
        self._firewalled.add(host_a)
        self._blocked.add((host_a, host_b))
        self._flush_conntrack(a, b)

    def unblock(self, host_a: str, host_b: str) -> None:
        """Undo `block(host_a, host_b)` (no-op if it is not blocked)."""
        a, b = self.host(host_a), self.host(host_b)
        if (host_a, host_b) not in self._blocked:
            return
        _command(
            a.argv(["nft", "-f", "-"]), stdin=f"delete element inet {_NFT_TABLE} blocked {{ {b.address} }}\n"
        )
        self._blocked.discard((host_a, host_b))
        self._flush_conntrack(a, b)

    @staticmethod
    def _flush_conntrack(*hosts: LabHost) -> None:
        if shutil.which("conntrack") is None:
            return
        for host in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(host.argv(["conntrack", "-F"]), capture_output=True, timeout=COMMAND_TIMEOUT)


def _new_lab_id(prefix: str) -> str:
    for _ in range(100):
        lab_id = secrets.token_hex(3)
        in_use = NETNS_DIR.is_dir() and any(
            name.startswith(f"{prefix}{lab_id}-") for name in os.listdir(NETNS_DIR)
        )
        if not in_use:
            return lab_id
    raise LabError(f"no free lab id for prefix {prefix!r}")


def _checked(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} name must match {_NAME.pattern}: {name!r}")
    return name


# --- leftovers ---------------------------------------------------------------------------


def _saved_states(state_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    states = []
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        try:
            states.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return states


def _owner_alive(state: Mapping[str, Any]) -> bool:
    owner = state.get("owner") or {}
    return same_process(int(owner.get("pid", 0)), owner.get("start"))


def _remove_saved(path: Path, state: Mapping[str, Any]) -> list[str]:
    namespaces = [str(name) for name in state.get("namespaces", [])]
    processes = [(int(p["pid"]), p.get("start")) for p in state.get("processes", [])]
    teardown(namespaces, processes)
    for owned in state.get("paths", []):
        directory = Path(str(owned))
        if directory.is_absolute() and directory.is_dir() and not directory.is_symlink():
            shutil.rmtree(directory, ignore_errors=True)
    path.unlink(missing_ok=True)
    return namespaces


def remove_saved_labs(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove kept labs and labs whose owner died (``naas demo down``).

    Labs whose owner process is still running are left to it. Returns the lab ids removed.
    """
    removed = []
    for path, state in _saved_states(state_dir):
        if state.get("kept") or not _owner_alive(state):
            _remove_saved(path, state)
            removed.append(str(state.get("lab_id", path.stem)))
    return removed


def cleanup_stale(prefix: str = LAB_PREFIX, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove what crashed lab runs left behind; returns the namespaces removed.

    A namespace ``<prefix><6 hex>-...`` is stale unless a state file says its lab is kept
    or its owner process is alive, so parallel runs and kept demos are left alone.
    """
    removed: list[str] = []
    protected: set[str] = set()
    for path, state in _saved_states(state_dir):
        if state.get("kept") or _owner_alive(state):
            protected.update(state.get("namespaces", []))
        elif str(state.get("prefix", "")).startswith(prefix):
            removed += _remove_saved(path, state)
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{6}-")
    orphans = [
        name
        for name in (sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else [])
        if pattern.match(name) and name not in protected and name not in removed
    ]
    teardown(orphans, [])
    return removed + orphans
