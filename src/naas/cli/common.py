"""What every command shares: exit codes, one-line errors, state-dir selection."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from naas.daemon.runner import DEFAULT_POLL_INTERVAL, MAX_POLL_INTERVAL, Agent
from naas.daemon.state import DEFAULT_STATE_DIR, NodeDir, client_node_dir, find_networks, network_dir
from naas.model.ids import Endpoint

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A failure to report on one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class BadInput(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_INPUT)


class Parser(argparse.ArgumentParser):
    """argparse with our error rule: one line on stderr, exit 2, and no usage block.

    Sub-parsers made by ``add_subparsers`` are of the same class, so the rule holds for
    every command and option of every entry point.
    """

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"naas: warning: {message}", file=sys.stderr, flush=True)


def state_dir_of(value: str | None) -> Path:
    return Path(value) if value else DEFAULT_STATE_DIR


def _membership(state_dir: Path, network: str) -> NodeDir | None:
    """This host's membership of ``network``: the client one, else a running PoP's."""
    node_dir = client_node_dir(state_dir, network)
    if node_dir.exists():
        return node_dir
    pops = network_dir(state_dir, network) / "pops"
    running = sorted(p for p in pops.glob("*/agent.sock")) if pops.is_dir() else []
    return NodeDir(running[0].parent) if running else None


def member_dir(state_dir: Path, network: str | None) -> NodeDir:
    """The membership to act on: ``--network`` or the only one there is (a PoP host's
    running PoP counts when the host has not joined as a client)."""
    if network is None:
        networks = [n for n in find_networks(state_dir) if _membership(state_dir, n) is not None]
        if not networks:
            raise CliError(f"this host has not joined any network (no state in {state_dir})")
        if len(networks) > 1:
            raise BadInput(f"this host is in several networks ({', '.join(networks)}): use --network")
        network = networks[0]
    node_dir = _membership(state_dir, network)
    if node_dir is None:
        raise CliError(f"this host has not joined network {network!r} (no state in {state_dir / network})")
    return node_dir


def metrics_endpoint(text: str | None) -> Endpoint | None:
    """``--metrics HOST:PORT`` (e.g. 127.0.0.1:9640), checked before anything starts."""
    if text is None:
        return None
    try:
        return Endpoint.parse(text)
    except ValueError:
        raise BadInput(f"--metrics: expected IP:PORT (e.g. 127.0.0.1:9640), got {text!r}") from None


def add_member_options(parser: argparse.ArgumentParser, network: bool = True) -> None:
    """--state-dir, and --network unless the command makes the membership."""
    parser.add_argument(
        "--state-dir", metavar="DIR", help="state directory (default /var/lib/naas or $NAAS_STATE_DIR)"
    )
    if network:
        parser.add_argument("--network", help="which network (default: the only one joined)")


@dataclass(frozen=True)
class AgentOptions:
    """The options of every command that runs an agent (``add_agent_options``), checked."""

    metrics: Endpoint | None = None  # where the opt-in Prometheus port listens
    offload: bool = True  # TSO/checksum offload on naas0, UDP GSO/GRO on the socket
    poll_ms: float = DEFAULT_POLL_INTERVAL * 1000  # 0: no polling (daemon/runner.py)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentOptions:
        """The options as given; bad input fails here, before anything is written."""
        metrics = metrics_endpoint(args.metrics)
        try:
            poll_ms = float(args.poll_ms)
        except ValueError:
            poll_ms = -1.0
        most = MAX_POLL_INTERVAL * 1000
        if not 0 <= poll_ms <= most:  # also refuses nan
            raise BadInput(f"--poll-ms: expected milliseconds from 0 to {most:g}, got {args.poll_ms!r}")
        return cls(metrics, args.offload, poll_ms)

    def agent(self, node_dir: NodeDir, interface: str) -> Agent:
        """An agent for ``node_dir`` that runs with these options."""
        return Agent(
            node_dir,
            interface=interface,
            metrics=None if self.metrics is None else self.metrics.as_tuple(),
            offload=self.offload,
            poll_interval=self.poll_ms / 1000,
        )

    def argv(self) -> list[str]:
        """The same options on an agent's command line (`naas agent`)."""
        return [
            *(["--metrics", str(self.metrics)] if self.metrics else []),
            *([] if self.offload else ["--no-offload"]),
            "--poll-ms",
            f"{self.poll_ms:g}",
        ]


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """--metrics, --no-offload and --poll-ms: the options of every command that runs an agent."""
    parser.add_argument("--metrics", metavar="IP:PORT", help="serve Prometheus metrics here (opt-in)")
    parser.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="no TSO/checksum offload on the TAP and no UDP GSO/GRO (slower; for misbehaving kernels)",
    )
    parser.add_argument(
        "--poll-ms",
        metavar="MS",
        default=f"{DEFAULT_POLL_INTERVAL * 1000:g}",
        help="while traffic flows, also poll naas0 and the socket every MS milliseconds: lower latency"
        " for sparse traffic at ~5-6%% of a core (default %(default)s; 0: off)",
    )
