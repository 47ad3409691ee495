"""What every command shares: exit codes, one-line errors, state-dir selection."""

from __future__ import annotations

import sys
from pathlib import Path

from naas.daemon.state import DEFAULT_STATE_DIR, NodeDir, client_node_dir, find_networks

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


def member_dir(state_dir: Path, network: str | None) -> NodeDir:
    """The client membership to act on: ``--network`` or the only one there is."""
    if network is None:
        networks = [n for n in find_networks(state_dir) if client_node_dir(state_dir, n).exists()]
        if not networks:
            raise CliError(f"this host has not joined any network (no state in {state_dir})")
        if len(networks) > 1:
            raise BadInput(f"this host is in several networks ({', '.join(networks)}): use --network")
        network = networks[0]
    node_dir = client_node_dir(state_dir, network)
    if not node_dir.exists():
        raise CliError(f"this host has not joined network {network!r} (no state in {node_dir.path})")
    return node_dir
