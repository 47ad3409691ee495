"""PopNetwork: one network as the PoP hosts see it, the object every use case works on.

It holds the parsed naas.toml (the settings that cannot change under a live network:
name, subnet, ports, PoPs), the store (what can: clients, members, revocations,
documents, tokens), the CA's private key and the wall clock. ``sign`` turns the store's
DocumentState into a signed network document; the store calls it inside the transaction
that changes the state (pop/store_control.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from naas.core.network_document import make_document
from naas.daemon.state import pop_node_dir
from naas.model.config import NetworkConfig
from naas.model.ids import Endpoint
from naas.model.network import NetworkInfo, PopInfo
from naas.pop.store import PopStore
from naas.pop.store_control import DocumentState
from naas.pop.tls import tls_pin_of_pem


@dataclass
class PopNetwork:
    config: NetworkConfig
    store: PopStore
    net_dir: Path  # <state-dir>/<network>: ca.key, ca.pub, pops/<name>/tls.crt
    ca_private: bytes
    clock: Callable[[], float] = time.time
    known_info: NetworkInfo | None = field(default=None, repr=False)  # else read from net_dir

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def info(self) -> NetworkInfo:
        """The network description members receive at enrollment."""
        if self.known_info is None:
            self.known_info = network_info(self.config, self.net_dir)
        return self.known_info

    def sign(self, version: int, state: DocumentState) -> bytes:
        """The signed body of document ``version`` describing ``state``."""
        return make_document(
            self.ca_private,
            network=self.config.name,
            version=version,
            issued_at=int(self.clock()),
            groups=state.groups,
            revoked=state.revoked,
            policy=state.policy,
            allowed_addresses=state.allowed,
        ).body

    def live_info(self) -> NetworkInfo:
        """The network description the PoPs were set up with (network.json in a PoP's
        state, written by ``naas init``): what a changed naas.toml is compared with."""
        for pop in self.config.pops:
            node_dir = pop_node_dir(self.net_dir.parent, self.config.name, pop.name)
            if (node_dir.path / "network.json").exists():
                return node_dir.load_network()
        return self.info


def network_info(config: NetworkConfig, net_dir: Path) -> NetworkInfo:
    """The network description, from the config and the PoPs' TLS certificates."""
    pops = []
    for pop in config.pops:
        cert_pem = (pop_node_dir(net_dir.parent, config.name, pop.name).path / "tls.crt").read_bytes()
        pops.append(
            PopInfo(
                name=pop.name,
                mesh_endpoint=Endpoint(pop.address, config.network.mesh_port),
                enrollment_endpoint=Endpoint(pop.address, config.network.enrollment_port),
                tls_pin=tls_pin_of_pem(cert_pem),
            )
        )
    return NetworkInfo(
        name=config.name,
        mesh_port=config.network.mesh_port,
        ca_public=(net_dir / "ca.pub").read_bytes(),
        pops=tuple(pops),
        subnet=config.network.subnet,
        gateway=config.network.gateway,
    )
