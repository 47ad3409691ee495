"""Interface configuration over netlink (pyroute2 ``IPRoute``), never by running ``ip``.

Theory of operation
-------------------
The daemon configures its own adapter once it exists and whenever the control plane
changes its mind: `configure_interface` sets the MAC, the MTU, the IPv4 address (if the
network has layer 3) and the link state, in that order, so the address and its connected
route appear on a link that already has its final MTU. `set_address` replaces every IPv4
address of the link by one (IPv6 link-local addresses are left alone); `route_mtu_to` asks
the kernel which device it would route a peer's underlay address through (RTM_GETROUTE,
like ``ip route get``) and returns that device's MTU, lowered by a route or learned
path-MTU metric if there is one; the overlay MTU is derived from it.

Every call opens a short-lived netlink socket in the network namespace of the calling
thread: configuration is rare, and this keeps the functions stateless and safe to use
from a thread that entered a lab namespace. Every failure becomes one `NetconfError`
whose message names the interface, the operation and the kernel's reason.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from ipaddress import IPv4Interface, ip_address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

FALLBACK_MTU = 1500  # when the kernel has no route to the destination


RTN_LOCAL = 2  # linux/rtnetlink.h: a route to an address of this host


class NetconfError(Exception):
    """A netlink operation failed; the message is one line for logs and users."""


@contextmanager
def _netlink(what: str) -> Iterator[IPRoute]:
    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise NetconfError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None
    except OSError as exc:
        raise NetconfError(f"{what}: {exc.strerror or exc}") from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetconfError(f"{name}: no such interface")
    return int(found[0])


def _format_mac(mac: bytes) -> str:
    if len(mac) != 6:
        raise NetconfError(f"a MAC address has 6 bytes, not {len(mac)}: {mac.hex()}")
    return ":".join(f"{octet:02x}" for octet in mac)


def link_exists(name: str) -> bool:
    """Whether an interface called `name` exists in this namespace."""
    with _netlink(f"{name}: lookup") as ipr:
        return bool(ipr.link_lookup(ifname=name))


def configure_interface(
    name: str,
    *,
    mac: bytes,
    mtu: int,
    address: IPv4Interface | None,
    up: bool = True,
    gso_max_size: int | None = None,
) -> None:
    """Set MAC, MTU, the only IPv4 address (None: leave addresses alone) and link state,
    and the largest super-frame the stack may send (kept when the kernel cannot set it)."""
    text_mac = _format_mac(mac)
    with _netlink(f"{name}: set mac {text_mac} mtu {mtu}") as ipr:
        ipr.link("set", index=_index(ipr, name), address=text_mac, mtu=mtu)
    if gso_max_size is not None:
        with suppress(NetconfError), _netlink(f"{name}: set gso_max_size {gso_max_size}") as ipr:
            ipr.link("set", index=_index(ipr, name), gso_max_size=gso_max_size)
    if address is not None:
        set_address(name, address)
    with _netlink(f"{name}: set link {'up' if up else 'down'}") as ipr:
        ipr.link("set", index=_index(ipr, name), state="up" if up else "down")


def interface_addresses(name: str) -> list[IPv4Interface]:
    """The IPv4 addresses of `name`, with their prefix lengths, in kernel order."""
    with _netlink(f"{name}: list addresses") as ipr:
        messages = ipr.get_addr(index=_index(ipr, name), family=socket.AF_INET)
        return [IPv4Interface(f"{message.get('IFA_LOCAL')}/{message['prefixlen']}") for message in messages]


def flush_addresses(name: str) -> None:
    """Remove every IPv4 address (and so the connected routes) of `name`."""
    for existing in interface_addresses(name):
        _delete_address(name, existing)


def set_address(name: str, address: IPv4Interface) -> None:
    """Make `address` the only IPv4 address of `name` (no change if it already is)."""
    existing = interface_addresses(name)
    if existing == [address]:
        return
    for old in existing:
        if old != address:
            _delete_address(name, old)
    if address not in existing:
        with _netlink(f"{name}: add address {address}") as ipr:
            ipr.addr(
                "add",
                index=_index(ipr, name),
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
            )


def _delete_address(name: str, address: IPv4Interface) -> None:
    with _netlink(f"{name}: delete address {address}") as ipr:
        ipr.addr(
            "del",
            index=_index(ipr, name),
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
        )


def route_mtu_to(dst_ip: str) -> int:
    """MTU towards `dst_ip` (IPv4 or IPv6): the egress device's, or a lower route metric.

    For an address of this host, the MTU of the device that holds it (not loopback's).

    Returns `FALLBACK_MTU` when the kernel has no route to `dst_ip`.
    """
    family = socket.AF_INET6 if ip_address(dst_ip).version == 6 else socket.AF_INET
    with _netlink(f"route to {dst_ip}") as ipr:
        try:
            routes = ipr.route("get", dst=dst_ip, family=family)
        except NetlinkError:
            return FALLBACK_MTU
        if not routes:
            return FALLBACK_MTU
        route = routes[0]
        oif = route.get("RTA_OIF")
        if route["type"] == RTN_LOCAL:  # our own address (a PoP): its device, not loopback
            owners = ipr.get_addr(family=family, address=dst_ip)
            oif = owners[0]["index"] if owners else None
            if oif is None:
                return FALLBACK_MTU
        links = ipr.get_links(oif)
        mtu = int(links[0].get("IFLA_MTU")) if links else FALLBACK_MTU
        metrics = route.get("RTA_METRICS")
        route_mtu = metrics.get("RTAX_MTU") if metrics is not None else None
        return min(mtu, int(route_mtu)) if route_mtu else mtu
