"""What every command shares: exit codes, one-line errors, state-dir selection."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def metrics_address(text: str | None) -> tuple[str, int] | None:
    """``--metrics HOST:PORT`` (e.g. 127.0.0.1:9640), checked before anything starts."""
    if text is None:
        return None
    try:
        endpoint = Endpoint.parse(text)
    except ValueError:
        raise BadInput(f"--metrics: expected IP:PORT (e.g. 127.0.0.1:9640), got {text!r}") from None
    return endpoint.host, endpoint.port


def add_member_options(parser: argparse.ArgumentParser, network: bool = True) -> None:
    """--state-dir, and --network unless the command makes the membership."""
    parser.add_argument("--state-dir", help="state directory (default /var/lib/naas or $NAAS_STATE_DIR)")
    if network:
        parser.add_argument("--network", help="which network (default: the only one joined)")


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """--metrics, and --no-offload: the options of every command that runs an agent."""
    parser.add_argument("--metrics", metavar="IP:PORT", help="serve Prometheus metrics here (opt-in)")
    parser.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="no TSO/checksum offload on the TAP and no UDP GSO/GRO (slower; for misbehaving kernels)",
    )
