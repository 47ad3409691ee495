"""On-disk state of a member (and of a PoP), one directory per network.

    <state-dir>/<network>/
        node/                 this host's membership (naas-enrollment)
            static.key        X25519 private key, raw, mode 0600 - never leaves the host
            signing.key       Ed25519 private key, raw, mode 0600 - never leaves the host
            certificate.json  signed by the network CA
            network.json      the network description received at enrollment
            members.json      cached member list and endpoints (restart with PoPs down)
            document.json     the newest network document, as signed (mode 0600)
            agent.sock        control socket of the running agent
            agent.pid, agent.log
            interface         the TAP device the agent last ran on (naas up starts it there again)
        ca.key, ca.pub        network CA (PoP hosts only; ca.key mode 0600)
        pops/<name>/          a PoP's membership, same layout as node/, plus tls.key/tls.crt
        pop.db                the PoPs' SQLite store (default)

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file; secrets are created with mode 0600 from the start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naas.core.node import LocalIdentity
from naas.model.certificate import Certificate
from naas.model.codec import (
    certificate_from_dict,
    certificate_to_dict,
    member_from_dict,
    member_to_dict,
    network_from_dict,
    network_to_dict,
)
from naas.model.network import MemberRecord, NetworkInfo

DEFAULT_STATE_DIR = Path(os.environ.get("NAAS_STATE_DIR", "/var/lib/naas"))


class StateError(Exception):
    """Saved state is missing or unreadable."""


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data``, created with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, mode: int = 0o644) -> None:
    write_file(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable ({exc})") from None


def network_dir(state_dir: Path, network: str) -> Path:
    return state_dir / network


def find_networks(state_dir: Path) -> list[str]:
    """Networks this host is a member of (client or PoP)."""
    if not state_dir.is_dir():
        return []
    found = []
    for child in sorted(state_dir.iterdir()):
        if (child / "node" / "certificate.json").exists() or (child / "pops").is_dir():
            found.append(child.name)
    return found


@dataclass(frozen=True, slots=True)
class NodeDir:
    """The directory of one membership (a client's ``node/`` or a PoP's ``pops/<name>/``)."""

    path: Path

    @property
    def socket_path(self) -> Path:
        return self.path / "agent.sock"

    @property
    def pid_path(self) -> Path:
        return self.path / "agent.pid"

    @property
    def log_path(self) -> Path:
        return self.path / "agent.log"

    def exists(self) -> bool:
        return (self.path / "certificate.json").exists()

    def save_interface(self, name: str) -> None:
        """The TAP device the agent runs on: a host in two networks gives each its own
        (naas0, naas1), and `naas up` must bring each back on the one it had."""
        write_file(self.path / "interface", f"{name}\n".encode())

    def load_interface(self) -> str | None:
        """The name `save_interface` kept, or None (a membership made before it existed)."""
        try:
            return (self.path / "interface").read_text().strip() or None
        except OSError:
            return None

    def save_keys(self, static_private: bytes, signing_private: bytes) -> None:
        write_file(self.path / "static.key", static_private, 0o600)
        write_file(self.path / "signing.key", signing_private, 0o600)

    def save_membership(self, identity_cert: dict[str, Any], network: NetworkInfo) -> None:
        write_json(self.path / "network.json", network_to_dict(network))
        write_json(self.path / "certificate.json", identity_cert)

    def save_members(self, members: list[MemberRecord]) -> None:
        write_json(self.path / "members.json", [member_to_dict(m) for m in members])

    def save_certificate(self, certificate: Certificate) -> None:
        """A renewed certificate replaces the one in certificate.json."""
        write_json(self.path / "certificate.json", certificate_to_dict(certificate))

    def save_document(self, body: bytes) -> None:
        write_file(self.path / "document.json", body, 0o600)

    def load_document(self) -> bytes | None:
        """The document saved last (checked by the core, like any other), or None."""
        try:
            return (self.path / "document.json").read_bytes()
        except OSError:
            return None

    def load_identity(self) -> LocalIdentity:
        try:
            static_private = (self.path / "static.key").read_bytes()
            signing_private = (self.path / "signing.key").read_bytes()
        except OSError as exc:
            raise StateError(f"{self.path}: keys unreadable ({exc.strerror})") from None
        if len(static_private) != 32 or len(signing_private) != 32:
            raise StateError(f"{self.path}: keys are corrupt")
        cert = certificate_from_dict(read_json(self.path / "certificate.json"))
        return LocalIdentity(cert, static_private, signing_private)

    def load_network(self) -> NetworkInfo:
        return network_from_dict(read_json(self.path / "network.json"))

    def load_members(self) -> list[MemberRecord]:
        try:
            raw = read_json(self.path / "members.json")
        except StateError:
            return []
        members = []
        for item in raw if isinstance(raw, list) else []:
            try:
                members.append(member_from_dict(item))
            except ValueError:
                continue  # a damaged cache entry is skipped, never fatal
        return members


def client_node_dir(state_dir: Path, network: str) -> NodeDir:
    return NodeDir(network_dir(state_dir, network) / "node")


def pop_node_dir(state_dir: Path, network: str, pop: str) -> NodeDir:
    return NodeDir(network_dir(state_dir, network) / "pops" / pop)


__all__ = [
    "DEFAULT_STATE_DIR",
    "NodeDir",
    "StateError",
    "certificate_to_dict",
    "client_node_dir",
    "find_networks",
    "network_dir",
    "pop_node_dir",
    "read_json",
    "write_file",
    "write_json",
]
