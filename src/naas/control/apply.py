"""``naas apply``: naas.toml stays the single source of truth for the clients.

    the file's clients --plan()--> Plan: added, changed (groups, fixed address), removed
                                   --apply()--> the store, one client at a time; a change
                                   of groups makes a new network document (members see it
                                   within seconds); a removed client is revoked only with
                                   prune (without it, the plan says so and keeps it)

Settings that cannot change under a live network (the network's name, its subnet, the
mesh port, the PoPs) are compared first with what the PoPs run on (``live``: the network
description saved at ``naas init``); a difference is refused as ``file: key: problem``
and nothing is changed. A second apply of the same file finds an empty plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from naas.control import members
from naas.control.errors import Conflict, ControlError, Invalid
from naas.control.network import PopNetwork
from naas.model.config import NetworkConfig
from naas.pop.store_control import ClientRecord


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    ip: IPv4Address | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    before: ClientRecord
    after: ClientSpec


@dataclass
class Plan:
    added: list[ClientSpec] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    removed: list[ClientRecord] = field(default_factory=list)
    prune: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to do (removed clients kept without ``prune`` are nothing to do)."""
        return not (self.added or self.changed or (self.removed and self.prune))

    def lines(self) -> list[str]:
        """The difference, one line per client, as ``naas apply`` prints it."""
        out = [f"+ client {c.name}{_describe(c.ip, c.groups)}" for c in self.added]
        for change in self.changed:
            before, after = change.before, change.after
            parts = []
            if before.groups != after.groups:
                parts.append(f"groups {_groups(before.groups)} -> {_groups(after.groups)}")
            if before.ip != after.ip:
                old, new = before.ip or "from the range", after.ip or "from the range"
                parts.append(f"ip {old} -> {new} (at its next enrollment)")
            out.append(f"~ client {after.name}: {', '.join(parts)}")
        for record in self.removed:
            if self.prune:
                out.append(f"- client {record.name} (its member, if enrolled, is revoked)")
            else:
                out.append(f"  client {record.name} is not in the file: kept (--prune revokes it)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [c.name for c in self.added],
            "changed": [c.after.name for c in self.changed],
            "removed": [r.name for r in self.removed] if self.prune else [],
            "kept": [] if self.prune else [r.name for r in self.removed],
            "lines": self.lines(),
        }


def _groups(groups: Sequence[str]) -> str:
    return "[" + ", ".join(groups) + "]"


def _describe(ip: IPv4Address | None, groups: Sequence[str]) -> str:
    parts = ([f"ip {ip}"] if ip else []) + ([f"groups {_groups(groups)}"] if groups else [])
    return f" ({', '.join(parts)})" if parts else ""


def clients_of(config: NetworkConfig) -> list[ClientSpec]:
    specs = []
    for client in config.clients:
        where = f"{config.source}: client[{client.name!r}].groups"
        specs.append(ClientSpec(client.name, client.ip, members.check_groups(client.groups, where)))
    return specs


def check_settings(net: PopNetwork, config: NetworkConfig) -> None:
    """Refuse a file whose fixed settings differ from the live network's."""
    file_pops = [(p.name, p.address) for p in config.pops]
    network = config.network
    check_fixed_settings(net, config.source, config.name, network.subnet, network.mesh_port, file_pops)


def check_fixed_settings(
    net: PopNetwork,
    source: str,
    name: str,
    subnet: IPv4Network | None,
    mesh_port: int,
    pops: Sequence[tuple[str, str]] | None,
) -> None:
    """``check_settings`` without a file (the REST API's apply); ``pops`` None: not compared."""
    live = net.live_info()
    if name != live.name:
        raise Invalid(f"{source}: network.name: {name!r} is not this network ({live.name!r})")
    if subnet != live.subnet:
        raise Invalid(
            f"{source}: network.subnet: cannot change under a live network ({live.subnet} -> "
            f"{subnet}); make a new network with `naas init`"
        )
    if mesh_port != live.mesh_port:
        raise Invalid(
            f"{source}: network.mesh_port: cannot change under a live network "
            f"({live.mesh_port} -> {mesh_port})"
        )
    live_pops = [(p.name, p.mesh_endpoint.host) for p in live.pops]
    if pops is not None and live_pops != list(pops):
        raise Invalid(f"{source}: pop: the PoPs cannot change under a live network (they are {live_pops})")


def plan(net: PopNetwork, wanted: Sequence[ClientSpec], *, prune: bool = False) -> Plan:
    names = [spec.name for spec in wanted]
    if len(set(names)) != len(names):
        raise Invalid("clients: a name is given twice")
    pops = {pop.name for pop in net.config.pops}.intersection(names)
    if pops:
        raise Conflict(f"clients: {sorted(pops)[0]!r} is a PoP")
    fixed = [spec.ip for spec in wanted if spec.ip is not None]
    if len(set(fixed)) != len(fixed):
        raise Invalid("clients: an address is given to two clients")
    current = {record.name: record for record in net.store.clients()}
    result = Plan(prune=prune)
    for spec in wanted:
        members.check_groups(spec.groups)
        before = current.pop(spec.name, None)
        if before is None:
            result.added.append(spec)
        elif (before.ip, before.groups) != (spec.ip, tuple(sorted(set(spec.groups)))):
            result.changed.append(Change(before, spec))
    result.removed = sorted(current.values(), key=lambda r: r.name)
    for spec in [*result.added, *(c.after for c in result.changed)]:
        members.check_client_ip(net, spec.name, spec.ip)
    return result


def apply(net: PopNetwork, chosen: Plan) -> None:
    """Carry the plan out; a failure part-way leaves the clients done so far done (the
    next apply finishes the rest)."""
    try:
        for spec in chosen.added:
            net.store.put_client(spec.name, spec.ip, spec.groups, net.clock(), net.sign)
        for change in chosen.changed:
            spec = change.after
            net.store.put_client(spec.name, spec.ip, spec.groups, net.clock(), net.sign)
        if chosen.prune:
            for record in chosen.removed:
                members.delete_client(net, record.name)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
