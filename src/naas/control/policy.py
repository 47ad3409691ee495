"""The network's policy: shown, replaced (the REST API's PUT /v1/policy; ``naas apply``
replaces it from naas.toml, control/apply.py) and traced.

    set_policy: untrusted JSON -> model/policy.py parse_policy (a bad key: Invalid, one
                line naming it) -> the store: the policy row and its new network
                document, one transaction (pop/store_control.py)
    trace:      two member names -> Party (node id, name, groups as the next document
                says them) -> core/policy.py trace with the store's policy: each rule
                in order, why it matches or not, the verdict

A party is what the members' data paths will see: an enrolled member's node id and
groups (a PoP's are "pop"; a client's, its client row's: the next document's), or for
a client not enrolled yet node id 0 and its configured groups. Its overlay address is
the flow's address, so ``cidr:`` rules are traced too; ``src_ip`` and ``dst_ip`` name
other addresses (a host bridged behind a member).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from naas.control.errors import Invalid, NotFound
from naas.control.network import PopNetwork
from naas.core.policy import Party, Trace
from naas.core.policy import trace as trace_flow
from naas.model.policy import Policy, PolicyError, Protocol, parse_policy
from naas.pop.store_control import POP_GROUPS


@dataclass(frozen=True, slots=True)
class PolicyChange:
    policy: Policy
    changed: bool
    document_version: int  # the store's newest, after the change


def show(net: PopNetwork) -> Policy:
    """The network's policy (the open policy, "default allow" with no rule, until one is set)."""
    return net.store.policy()


def parse(raw: Any) -> Policy:
    """A policy from its JSON shape ({"default": ..., "rule": [...]}); Invalid naming the key."""
    try:
        return parse_policy(raw, "policy")
    except PolicyError as exc:
        raise Invalid(str(exc)) from None


def set_policy(net: PopNetwork, raw: Any) -> PolicyChange:
    """Make ``raw`` (the policy's JSON shape) the network's policy: a new network document
    if it differs from the current one."""
    policy = parse(raw)
    version = net.store.set_policy(policy, net.clock(), net.sign)
    return PolicyChange(policy, version is not None, version or net.store.document_version())


def party(net: PopNetwork, name: str) -> tuple[Party, IPv4Address | None]:
    """The member (or client) ``name`` as the policy sees it, and its overlay address."""
    cert = net.store.member(name)
    client = net.store.client(name)
    if cert is not None:
        groups = POP_GROUPS if cert.is_pop else client.groups if client is not None else cert.groups
        address = None if cert.ip is None else cert.ip.ip
        return Party(cert.node_id, name, frozenset(groups)), address
    if client is not None:
        return Party(0, name, frozenset(client.groups)), client.ip
    if any(pop.name == name for pop in net.config.pops):  # not in the store yet (before init)
        return Party(0, name, frozenset(POP_GROUPS)), net.config.pop_overlay_ip(name)
    if any(revoked.name == name for revoked in net.store.revocations()):
        raise NotFound(f"{name!r} is revoked: it has no part in the policy")
    raise NotFound(f"no member or client {name!r}")


def trace(
    net: PopNetwork,
    from_name: str,
    to_name: str,
    protocol: str,
    port: int = 0,
    *,
    src_ip: IPv4Address | None = None,
    dst_ip: IPv4Address | None = None,
) -> Trace:
    """Why a flow from member ``from_name`` to ``to_name`` (``protocol``: tcp, udp, icmp or
    ethertype:0xNNNN; ``port``: its destination port, tcp and udp only) is allowed or
    denied by the network's policy, rule by rule."""
    try:
        spec = Protocol.parse(protocol)
    except ValueError as exc:
        raise Invalid(f"proto: {exc}") from None
    if spec.name == "any":
        raise Invalid("proto: give the flow's protocol: tcp, udp, icmp or ethertype:0xNNNN")
    if spec.has_ports and not 0 < port < 65536:
        raise Invalid(f"port: a {spec} flow needs its destination port (1-65535)")
    if not spec.has_ports and port:
        raise Invalid(f"port: only tcp and udp flows have ports, not {spec}")
    if spec.name == "ethertype" and (src_ip is not None or dst_ip is not None):
        raise Invalid(f"src_ip, dst_ip: a {spec} frame has no IPv4 addresses")
    source, source_ip = party(net, from_name)
    destination, destination_ip = party(net, to_name)
    if spec.name == "ethertype":
        source_ip = destination_ip = None
    try:
        return trace_flow(
            net.store.policy(),
            source,
            destination,
            str(spec),
            port,
            ip_src=src_ip or source_ip,
            ip_dst=dst_ip or destination_ip,
        )
    except ValueError as exc:  # core/policy.py's own check of the protocol
        raise Invalid(str(exc)) from None
