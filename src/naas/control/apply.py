"""``naas apply``: naas.toml stays the single source of truth for the clients and the policy.

    the file's clients and policy
      --plan()-->  Plan: clients added, changed (groups, fixed address, allowed
                   addresses) and removed; the policy before and after
      --apply()--> the store, in one transaction with at most one new network document
                   (members see it within seconds); a removed client is revoked only
                   with prune (without it, the plan says so and keeps it)

The file's policy is the network's: a file without ``[policy]`` has the open policy, and
applying it opens a network that had another (the plan says so). The REST API's apply
may leave the policy out, and then leaves it as it is.

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
from naas.model.policy import OPEN_POLICY, Policy
from naas.pop.store_control import ClientRecord, ClientWrite


@dataclass(frozen=True, slots=True)
class ClientSpec:
    name: str
    ip: IPv4Address | None = None
    groups: tuple[str, ...] = ()
    allowed: tuple[IPv4Network, ...] = ()  # networks it may send from besides its address

    def write(self) -> ClientWrite:
        """The store's change that makes the client this."""
        return ClientWrite(
            self.name, self.ip, tuple(sorted(set(self.groups))), tuple(sorted(set(self.allowed)))
        )


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
    policy_before: Policy = OPEN_POLICY
    policy: Policy | None = None  # the policy wanted; None: left as it is

    @property
    def policy_changed(self) -> bool:
        return self.policy is not None and self.policy != self.policy_before

    @property
    def empty(self) -> bool:
        """Nothing to do (removed clients kept without ``prune`` are nothing to do)."""
        return not (self.added or self.changed or (self.removed and self.prune) or self.policy_changed)

    def lines(self) -> list[str]:
        """The difference, one line per client and one for the policy, as ``naas apply``
        prints it."""
        out = [f"+ client {c.name}{_describe(c)}" for c in self.added]
        for change in self.changed:
            before, after = change.before, change.after
            parts = []
            if before.groups != after.groups:
                parts.append(f"groups {_listed(before.groups)} -> {_listed(after.groups)}")
            if before.ip != after.ip:
                old, new = before.ip or "from the range", after.ip or "from the range"
                parts.append(f"ip {old} -> {new} (at its next enrollment)")
            if before.allowed_addresses != after.allowed:
                old_nets, new_nets = before.allowed_addresses, after.allowed
                parts.append(f"allowed addresses {_listed(old_nets)} -> {_listed(new_nets)}")
            out.append(f"~ client {after.name}: {', '.join(parts)}")
        for record in self.removed:
            if self.prune:
                out.append(f"- client {record.name} (its member, if enrolled, is revoked)")
            else:
                out.append(f"  client {record.name} is not in the file: kept (--prune revokes it)")
        if self.policy is not None and self.policy_changed:
            out.append(policy_line(self.policy_before, self.policy))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": [c.name for c in self.added],
            "changed": [c.after.name for c in self.changed],
            "removed": [r.name for r in self.removed] if self.prune else [],
            "kept": [] if self.prune else [r.name for r in self.removed],
            "policy_changed": self.policy_changed,
            "lines": self.lines(),
        }


def _listed(items: Sequence[object]) -> str:
    return "[" + ", ".join(str(item) for item in items) + "]"


def _describe(spec: ClientSpec) -> str:
    parts = [f"ip {spec.ip}"] if spec.ip else []
    if spec.groups:
        parts.append(f"groups {_listed(spec.groups)}")
    if spec.allowed:
        parts.append(f"allowed addresses {_listed(spec.allowed)}")
    return f" ({', '.join(parts)})" if parts else ""


def describe_policy(policy: Policy) -> str:
    """``2 rules, default deny``."""
    count = len(policy.rules)
    return f"{count} rule{'' if count == 1 else 's'}, default {policy.default.value}"


def policy_line(before: Policy, after: Policy) -> str:
    """``~ policy: 2 rules, default deny (was 0 rules, default allow): + rule ssh-from-ops, ...``"""
    old = {rule.name: rule for rule in before.rules}
    new = {rule.name: rule for rule in after.rules}
    details = [f"+ rule {name}" for name in new if name not in old]
    details += [f"~ rule {name}" for name in new if name in old and new[name] != old[name]]
    details += [f"- rule {name}" for name in old if name not in new]
    if not details and list(old) != list(new):
        details.append("rules reordered")
    line = f"~ policy: {describe_policy(after)} (was {describe_policy(before)})"
    return line + (f": {', '.join(details)}" if details else "")


def clients_of(config: NetworkConfig) -> list[ClientSpec]:
    specs = []
    for client in config.clients:
        where = f"{config.source}: client[{client.name!r}].groups"
        groups = members.check_groups(client.groups, where)
        specs.append(ClientSpec(client.name, client.ip, groups, client.allowed_addresses))
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


def plan(
    net: PopNetwork, wanted: Sequence[ClientSpec], *, prune: bool = False, policy: Policy | None = None
) -> Plan:
    """The difference between ``wanted`` (and ``policy``, None: not compared) and the store."""
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
    result = Plan(prune=prune, policy_before=net.store.policy(), policy=policy)
    for spec in wanted:
        members.check_groups(spec.groups)
        members.check_allowed_addresses(spec.allowed)
        spec = ClientSpec(
            spec.name, spec.ip, tuple(sorted(set(spec.groups))), tuple(sorted(set(spec.allowed)))
        )
        before = current.pop(spec.name, None)
        if before is None:
            result.added.append(spec)
        elif (before.ip, before.groups, before.allowed_addresses) != (spec.ip, spec.groups, spec.allowed):
            result.changed.append(Change(before, spec))
    result.removed = sorted(current.values(), key=lambda r: r.name)
    for spec in [*result.added, *(c.after for c in result.changed)]:
        members.check_client_ip(net, spec.name, spec.ip)
    return result


def apply(net: PopNetwork, chosen: Plan) -> int | None:
    """Carry the plan out, all of it or nothing, with one new network document at most;
    returns its version (None: the document says what it said)."""
    writes = [spec.write() for spec in chosen.added] + [change.after.write() for change in chosen.changed]
    removed = [record.name for record in chosen.removed] if chosen.prune else []
    policy = chosen.policy if chosen.policy_changed else None
    try:
        return net.store.apply_changes(writes, removed, policy, net.clock(), net.sign)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
