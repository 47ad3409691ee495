"""``naas init``'s work: a network's CA, its PoPs' identities, its first clients and its
first network document, under a state directory (the CLI gives a staging one and moves
it into place, so that a failed init leaves nothing behind).

    ca.key (0600), ca.pub -> per PoP: keys (0600), certificate (groups ["pop"]), TLS key
    and certificate (the pin invitations carry), network.json, members.json
    -> the store: the PoPs as members, the file's clients and policy, document version 1
"""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Interface
from pathlib import Path

from naas.control.apply import clients_of
from naas.control.network import PopNetwork, network_info
from naas.core.crypto import ed25519_public, x25519_public
from naas.daemon.state import network_dir, pop_node_dir, write_file
from naas.model.certificate import Certificate
from naas.model.codec import certificate_to_dict
from naas.model.config import NetworkConfig
from naas.model.network import MemberRecord, NetworkInfo
from naas.pop.ca import issue_certificate
from naas.pop.store import PopStore
from naas.pop.store_control import POP_GROUPS
from naas.pop.tls import make_tls_material, write_tls_material


def make_network(
    config: NetworkConfig, state_dir: Path, store: PopStore
) -> tuple[NetworkInfo, dict[str, Certificate]]:
    """CA and PoP identities under ``state_dir``; the PoPs, the clients and the first
    document enter the store."""
    net_dir = network_dir(state_dir, config.name)
    ca_private = os.urandom(32)
    write_file(net_dir / "ca.key", ca_private, 0o600)
    write_file(net_dir / "ca.pub", ed25519_public(ca_private))
    now = int(time.time())
    certs = {}
    for pop in config.pops:
        node_dir = pop_node_dir(state_dir, config.name, pop.name)
        static_private, signing_private = os.urandom(32), os.urandom(32)
        existing = store.member(pop.name)
        overlay_ip = config.pop_overlay_ip(pop.name)
        subnet = config.network.subnet
        cert = issue_certificate(
            ca_private,
            network=config.name,
            name=pop.name,
            node_id=existing.node_id if existing else store.allocate_node_id(),
            is_pop=True,
            static_public=x25519_public(static_private),
            signing_public=ed25519_public(signing_private),
            ip=IPv4Interface(f"{overlay_ip}/{subnet.prefixlen}") if overlay_ip and subnet else None,
            groups=POP_GROUPS,
            now=now,
            lifetime=config.network.certificate_seconds,
        )
        store.add_member(cert, via="init")
        node_dir.save_keys(static_private, signing_private)
        write_tls_material(make_tls_material(pop.name), node_dir.path / "tls.crt", node_dir.path / "tls.key")
        certs[pop.name] = cert
    info = network_info(config, net_dir)
    for pop in config.pops:
        node_dir = pop_node_dir(state_dir, config.name, pop.name)
        node_dir.save_membership(certificate_to_dict(certs[pop.name]), info)
        node_dir.save_members(
            [MemberRecord(certs[p.name], (p.mesh_endpoint,)) for p in info.pops if p.name != pop.name]
        )
    net = PopNetwork(config, store, net_dir, ca_private, known_info=info)
    writes = [spec.write() for spec in clients_of(config)]
    if store.apply_changes(writes, (), config.policy, now, net.sign) is None:
        store.publish(now, net.sign)  # a new CA: members start from a document it signed
    return info, certs
