"""Overlay address allocation for members (pure).

In layer-3 mode every member gets one IPv4 address of ``network.subnet``, written into
its certificate (so DHCP and ARP answers come from the control plane, never from a
lease server). The rules, in order:

1. a client with a fixed address (its ``ip`` key; the store's clients table once
   ``naas apply`` keeps it, naas.toml's before) gets exactly that address;
2. a member that enrolls again keeps the address it had, if still free and valid;
3. otherwise the lowest address of the DHCP range that no member uses and that the
   configuration does not reserve (PoPs' addresses, clients' fixed ``ip``, the gateway).

Pure layer 2 (no subnet) allocates nothing: the answer is None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface

from naas.model.config import NetworkConfig


class AddressPoolExhausted(RuntimeError):
    """The DHCP range has no free address left."""


FixedAddresses = Mapping[str, IPv4Address | None]  # client name -> its fixed address, if any


def reserved_ips(config: NetworkConfig, fixed: FixedAddresses | None = None) -> set[IPv4Address]:
    """Addresses given to someone: PoPs, clients with a fixed address, the gateway."""
    if fixed is None:
        fixed = {client.name: client.ip for client in config.clients}
    reserved = {ip for pop in config.pops if (ip := config.pop_overlay_ip(pop.name)) is not None}
    reserved |= {ip for ip in fixed.values() if ip is not None}
    if config.network.gateway is not None:
        reserved.add(config.network.gateway)
    return reserved


def choose_ip(
    config: NetworkConfig,
    client_name: str,
    used: Iterable[IPv4Address],
    current: IPv4Address | None = None,
    *,
    fixed: FixedAddresses | None = None,
) -> IPv4Interface | None:
    """The address for ``client_name``; ``used`` are the other members' addresses;
    ``fixed``: the clients' fixed addresses (default: naas.toml's)."""
    subnet = config.network.subnet
    if subnet is None:
        return None
    prefix = subnet.prefixlen
    if fixed is None:
        fixed = {client.name: client.ip for client in config.clients}
    own = fixed.get(client_name)
    if own is not None:
        return IPv4Interface(f"{own}/{prefix}")
    taken = set(used) | reserved_ips(config, fixed)
    if (
        current is not None
        and current in subnet
        and current not in (subnet.network_address, subnet.broadcast_address)
        and current not in taken
    ):
        return IPv4Interface(f"{current}/{prefix}")
    first, last = config.dhcp_first, config.dhcp_last
    if first is None or last is None:
        raise AddressPoolExhausted(f"{config.source}: network.dhcp_range: no range to allocate")
    for value in range(int(first), int(last) + 1):
        candidate = IPv4Address(value)
        if candidate not in taken:
            return IPv4Interface(f"{candidate}/{prefix}")
    raise AddressPoolExhausted(
        f"{config.source}: network.dhcp_range: all addresses {first}-{last} are in use"
    )
