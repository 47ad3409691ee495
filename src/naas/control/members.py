"""Clients, invitations, members' groups, revocation and API tokens: the use cases.

A client is a name the network expects (with a fixed address and groups, or not); an
invitation lets it enroll once; a member is an enrolled client (or a PoP). Changing a
member's groups or revoking it makes a new network document in the same transaction
(pop/store_control.py), which the PoPs' agents pick up and the mesh spreads.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from naas.control.errors import Conflict, Invalid, NotFound
from naas.control.network import PopNetwork
from naas.model.certificate import Certificate
from naas.model.document import MAX_ALLOWED_ADDRESSES
from naas.model.ids import is_valid_name
from naas.pop.invitations import build_url, make_token, token_hash
from naas.pop.store import InvitationRecord
from naas.pop.store_control import ROLES, ClientRecord

DEFAULT_TTL = 7 * 86400
MAX_TTL = 365 * 86400
TOKEN_PREFIX = "naas_"


@dataclass(frozen=True, slots=True)
class IssuedInvitation:
    client: str
    url: str  # holds the token: shown once, never stored
    expires_at: int
    id: str  # the first 16 hex digits of the token's hash: names it in lists and cancels


def invitation_id(record: InvitationRecord) -> str:
    return record.token_hash[:16]


# -- clients ----------------------------------------------------------------------------------


def check_groups(groups: Sequence[str], where: str = "groups") -> tuple[str, ...]:
    for group in groups:
        if not isinstance(group, str) or not is_valid_name(group):
            raise Invalid(f"{where}: {group!r} is not a group name (lowercase letters, digits, '-')")
    return tuple(sorted(set(groups)))


def check_allowed_addresses(
    networks: Sequence[IPv4Network], where: str = "allowed_addresses"
) -> tuple[IPv4Network, ...]:
    """The networks a member may send from besides its own address: any IPv4 networks
    (routed or bridged hosts need not be in the subnet), at most MAX_ALLOWED_ADDRESSES."""
    if len(networks) > MAX_ALLOWED_ADDRESSES:
        raise Invalid(f"{where}: at most {MAX_ALLOWED_ADDRESSES} networks")
    for network in networks:
        if not isinstance(network, IPv4Network):
            raise Invalid(f"{where}: {network!r} is not an IPv4 network")
    return tuple(sorted(set(networks)))


def check_client_ip(net: PopNetwork, name: str, ip: IPv4Address | None) -> None:
    """A fixed address must be a host of the subnet, and no one else's."""
    if ip is None:
        return
    subnet = net.config.network.subnet
    if subnet is None:
        raise Invalid(f"ip: the network {net.name!r} has no subnet (pure layer 2)")
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        raise Invalid(f"ip: {ip} is not a host address of subnet {subnet}")
    pops = {net.config.pop_overlay_ip(pop.name): pop.name for pop in net.config.pops}
    if ip in pops or ip == net.config.network.gateway:
        raise Conflict(f"ip: {ip} is taken by {pops.get(ip, 'the gateway')}")
    for client in net.store.clients():
        if client.ip == ip and client.name != name:
            raise Conflict(f"ip: {ip} is taken by client {client.name!r}")
    for cert in net.store.members():
        if cert.ip is not None and cert.ip.ip == ip and cert.name != name:
            raise Conflict(f"ip: {ip} is in use by member {cert.name!r}")


def create_client(
    net: PopNetwork,
    name: str,
    ip: IPv4Address | None,
    groups: Sequence[str],
    allowed_addresses: Sequence[IPv4Network] = (),
) -> ClientRecord:
    if not is_valid_name(name):
        raise Invalid(f"name: {name!r} is not a client name (lowercase letters, digits, '-', at most 63)")
    if any(pop.name == name for pop in net.config.pops):
        raise Conflict(f"name: {name!r} is a PoP")
    if net.store.client(name) is not None:
        raise Conflict(f"client {name!r} exists")
    wanted = check_groups(groups)
    allowed = check_allowed_addresses(allowed_addresses)
    check_client_ip(net, name, ip)
    net.store.put_client(name, ip, wanted, net.clock(), net.sign, allowed_addresses=allowed)
    record = net.store.client(name)
    assert record is not None
    return record


def delete_client(net: PopNetwork, name: str) -> Certificate | None:
    """Remove a client; its member, if it enrolled, is revoked. Returns that certificate."""
    try:
        return net.store.delete_client(name, net.clock(), net.sign)
    except KeyError:
        raise NotFound(f"no client {name!r}") from None


def set_groups(net: PopNetwork, name: str, groups: Sequence[str]) -> ClientRecord:
    """A member's (or a client's) groups; they reach every member with the next document."""
    wanted = check_groups(groups)
    client = net.store.client(name)
    if client is None:
        if net.store.member(name) is not None:
            raise Conflict(f"{name!r} is a PoP: its groups are fixed")
        raise NotFound(f"no client {name!r}")
    try:
        net.store.put_client(name, client.ip, wanted, net.clock(), net.sign)
    except ValueError as exc:
        raise Conflict(str(exc)) from None
    updated = net.store.client(name)
    assert updated is not None
    return updated


# -- invitations ------------------------------------------------------------------------------


def invite(net: PopNetwork, names: Sequence[str], ttl: int = DEFAULT_TTL) -> list[IssuedInvitation]:
    """One single-use URL per client (every client in the store if ``names`` is empty)."""
    if not 0 < ttl <= MAX_TTL:
        raise Invalid(f"ttl: {ttl} is not between 1 s and {MAX_TTL // 86400} days")
    known = {client.name: client for client in net.store.clients()}
    if names:
        for name in names:
            if name not in known:
                raise NotFound(f"no client named {name!r}: add it to naas.toml and run `naas apply`")
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(known)
        if not chosen:
            raise Invalid("the network has no clients: add them to naas.toml and run `naas apply`")
    now = net.clock()
    pops = [(pop.enrollment_endpoint, pop.tls_pin) for pop in net.info.pops]
    issued = []
    for name in chosen:
        token = make_token(os.urandom(32))
        hashed = token_hash(token)
        net.store.add_invitation(hashed, name, now, now + ttl)
        issued.append(IssuedInvitation(name, build_url(net.name, pops, token), int(now + ttl), hashed[:16]))
    return issued


def invitations(net: PopNetwork) -> list[InvitationRecord]:
    return net.store.invitations()


def cancel_invitation(net: PopNetwork, invitation: str) -> None:
    """Cancel an unused invitation by its id (``IssuedInvitation.id``)."""
    for record in net.store.invitations():
        if invitation_id(record) == invitation:
            if record.used_at is not None:
                raise Conflict(f"invitation {invitation} was used by {record.client_name!r}")
            net.store.delete_invitation(record.token_hash)
            return
    raise NotFound(f"no invitation {invitation!r}")


# -- members ----------------------------------------------------------------------------------


def revoke(net: PopNetwork, name: str) -> Certificate:
    """Cut member ``name`` off the mesh; a new invitation makes it a new identity."""
    try:
        return net.store.revoke(name, net.clock(), net.sign)
    except KeyError:
        if any(r.name == name for r in net.store.revocations()):
            raise Conflict(f"{name!r} is already revoked") from None
        raise NotFound(f"no member {name!r}") from None
    except ValueError as exc:
        raise Conflict(str(exc)) from None


# -- API tokens -------------------------------------------------------------------------------


def create_token(net: PopNetwork, name: str, role: str) -> str:
    """A new bearer token for the REST API, shown once; only its hash is stored."""
    if role not in ROLES:
        raise Invalid(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if not is_valid_name(name):
        raise Invalid(f"name: {name!r} is not a token name (lowercase letters, digits, '-')")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    net.store.add_token(token_hash(token), name, role, net.clock())
    return token


def token_role(net: PopNetwork, token: str) -> str | None:
    """The role of a presented token, None if it is not one of ours."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100 or not token.isascii():
        return None
    return net.store.token_role(token_hash(token), net.clock())
