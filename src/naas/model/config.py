"""The network's one configuration file (naas.toml), validated.

``load_config(path)`` reads TOML and returns a frozen ``NetworkConfig`` or raises
``ConfigError`` whose message names the file, the key and the problem, e.g.
``naas.toml: network.dhcp_range: 172.33.0.10 is outside subnet 172.32.0.0/16``.
pydantic does the type checking; the cross-field rules are written out below.
Every key is documented in examples/naas.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from naas.model.document import MAX_ALLOWED_ADDRESSES
from naas.model.ids import NAME_PATTERN, is_valid_name
from naas.model.policy import OPEN_POLICY, Policy, PolicyError, SelectorKind, parse_policy

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Port = Annotated[int, Field(gt=0, lt=65536)]


class ConfigError(ValueError):
    """A configuration problem: ``file: key: what is wrong``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkSection(_Strict):
    name: Name
    mesh_port: Port = 5640
    enrollment_port: Port = 5641
    subnet: IPv4Network | None = None
    dhcp_range: str | None = None
    gateway: IPv4Address | None = None
    certificate_days: Annotated[int, Field(gt=0, le=3650)] = 365
    certificate_lifetime: str | None = None  # "30m", "12h", "90d": instead of certificate_days

    @property
    def certificate_seconds(self) -> int:
        """How long a member certificate is valid (checked by _check)."""
        if self.certificate_lifetime is None:
            return self.certificate_days * 86_400
        return parse_duration(self.certificate_lifetime)


class PopSection(_Strict):
    name: Name
    address: str  # underlay address, reachable by every member
    ip: IPv4Address | None = None  # overlay address; default: the subnet's first ones

    @field_validator("address")
    @classmethod
    def _literal_address(cls, value: str) -> str:
        try:
            ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        return value


class ClientSection(_Strict):
    name: Name
    ip: IPv4Address | None = None
    groups: tuple[str, ...] = ()
    # networks the member may send from besides its own address (routers, bridged hosts):
    # port security on the data path drops other sources; outside the subnet too
    allowed_addresses: tuple[IPv4Network, ...] = ()

    @field_validator("allowed_addresses", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value  # pydantic says what it expected
        if len(value) > MAX_ALLOWED_ADDRESSES:
            raise ValueError(f"at most {MAX_ALLOWED_ADDRESSES} networks")
        return tuple(parse_allowed_network(item) for item in value)

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not is_valid_name(group):
                raise ValueError(f"{group!r} is not a group name (lowercase letters, digits, '-')")
        return value


_DURATION_UNITS = {"m": 60, "h": 3600, "d": 86_400}
MIN_CERTIFICATE_SECONDS = 60
MAX_CERTIFICATE_SECONDS = 3650 * 86_400


def parse_allowed_network(text: object) -> IPv4Network:
    """``"10.9.0.0/24"`` (or one address, a /32) -> IPv4Network; ValueError saying why not."""
    if isinstance(text, IPv4Network):
        return text
    if not isinstance(text, str):
        raise ValueError(f'{text!r} is not an IPv4 network in CIDR form (e.g. "10.9.0.0/24")')
    try:
        return IPv4Network(text)
    except ValueError:
        pass
    try:
        loose = IPv4Network(text, strict=False)
    except ValueError:
        raise ValueError(f'{text!r} is not an IPv4 network in CIDR form (e.g. "10.9.0.0/24")') from None
    raise ValueError(f"{text!r} has host bits set: the network is {loose}")


def parse_duration(text: str) -> int:
    """``"30m"``, ``"12h"``, ``"90d"`` -> seconds; ValueError for anything else."""
    number, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS or not number.isdigit() or not number.isascii():
        raise ValueError(f"{text!r} is not a duration (e.g. 30m, 12h, 90d)")
    return int(number) * _DURATION_UNITS[unit]


class _ConfigFile(_Strict):
    network: NetworkSection
    pop: list[PopSection] = Field(min_length=1)
    client: list[ClientSection] = []
    policy: dict[str, Any] | None = None  # parsed by model/policy.py in _check


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    source: str
    network: NetworkSection
    pops: tuple[PopSection, ...]
    clients: tuple[ClientSection, ...]
    dhcp_first: IPv4Address | None
    dhcp_last: IPv4Address | None
    warnings: tuple[str, ...]
    policy: Policy = OPEN_POLICY  # the [policy] table; absent: everything allowed

    @property
    def name(self) -> str:
        return self.network.name

    def pop(self, name: str) -> PopSection:
        for pop in self.pops:
            if pop.name == name:
                return pop
        known = ", ".join(p.name for p in self.pops)
        raise ConfigError(self.source, "pop", f"no PoP named {name!r} (known: {known})")

    def client(self, name: str) -> ClientSection:
        for client in self.clients:
            if client.name == name:
                return client
        raise ConfigError(self.source, "client", f"no client named {name!r}")

    def pop_overlay_ip(self, name: str) -> IPv4Address | None:
        """A PoP's overlay address: its ``ip`` key, else the subnet's n-th host."""
        subnet = self.network.subnet
        if subnet is None:
            return None
        for index, pop in enumerate(self.pops):
            if pop.name == name:
                return pop.ip or subnet.network_address + 1 + index
        raise ConfigError(self.source, "pop", f"no PoP named {name!r}")


def _key_of(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """``('pop', 1, 'address')`` -> ``pop[1].address`` (or ``pop["slave"]``)."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            name = (
                node[item].get("name")
                if isinstance(node, list) and item < len(node) and isinstance(node[item], dict)
                else None
            )
            parts[-1] += f"[{name!r}]" if isinstance(name, str) else f"[{item}]"
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def parse_config(text: str, source: str = "naas.toml") -> NetworkConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    try:
        model = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _key_of(tuple(first["loc"]), raw)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "required key is missing"
        elif first["type"] == "string_pattern_mismatch":
            message = f"{first.get('input')!r} is not a valid name (lowercase letters, digits, '-')"
        raise ConfigError(source, key, message) from None
    return _check(model, source)


def load_config(path: str | Path) -> NetworkConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    return parse_config(text, str(path))


def _check(model: _ConfigFile, source: str) -> NetworkConfig:
    net = model.network
    warnings: list[str] = []

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(source, key, problem)

    if net.certificate_lifetime is not None:
        if "certificate_days" in net.model_fields_set:
            raise fail("network.certificate_lifetime", "give it or certificate_days, not both")
        try:
            seconds = parse_duration(net.certificate_lifetime)
        except ValueError as exc:
            raise fail("network.certificate_lifetime", str(exc)) from None
        if not MIN_CERTIFICATE_SECONDS <= seconds <= MAX_CERTIFICATE_SECONDS:
            raise fail("network.certificate_lifetime", "must be between 1m and 3650d")
    names: set[str] = set()
    for section, entries in (("pop", model.pop), ("client", model.client)):
        for entry in entries:
            if entry.name in names:
                raise fail(f"{section}[{entry.name!r}].name", "name used twice")
            names.add(entry.name)
    pop_addresses: set[str] = set()
    for pop in model.pop:
        if pop.address in pop_addresses:
            raise fail(f"pop[{pop.name!r}].address", "address used by two PoPs")
        pop_addresses.add(pop.address)

    dhcp_first: IPv4Address | None = None
    dhcp_last: IPv4Address | None = None
    subnet = net.subnet
    if subnet is None:
        for key, value in (("dhcp_range", net.dhcp_range), ("gateway", net.gateway)):
            if value is not None:
                raise fail(f"network.{key}", "needs network.subnet (pure layer 2 has no addresses)")
        fixed = [("pop", p.name) for p in model.pop if p.ip] + [
            ("client", c.name) for c in model.client if c.ip
        ]
        if fixed:
            section, name = fixed[0]
            raise fail(f"{section}[{name!r}].ip", "needs network.subnet")
    else:
        if subnet.prefixlen > 30:
            raise fail("network.subnet", "too small: use a /30 or larger")
        if not subnet.is_private:
            warnings.append(
                f"{source}: network.subnet: {subnet} is not private address space; "
                "it works on the overlay but shadows those public addresses"
            )
        if net.dhcp_range is not None:
            first_text, sep, last_text = net.dhcp_range.partition("-")
            try:
                if not sep:
                    raise ValueError
                dhcp_first = IPv4Address(first_text.strip())
                dhcp_last = IPv4Address(last_text.strip())
            except ValueError:
                raise fail(
                    "network.dhcp_range", "expected FIRST-LAST, e.g. 172.32.1.10-172.32.1.250"
                ) from None
            for address in (dhcp_first, dhcp_last):
                if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
                    raise fail("network.dhcp_range", f"{address} is not a host address of subnet {subnet}")
            if dhcp_first > dhcp_last:
                raise fail("network.dhcp_range", "first address is after the last one")
        else:
            dhcp_first = subnet.network_address + 1 + len(model.pop)
            dhcp_last = subnet.broadcast_address - 1
        if net.gateway is not None and net.gateway not in subnet:
            raise fail("network.gateway", f"{net.gateway} is outside subnet {subnet}")
        used: dict[IPv4Address, str] = {}
        for index, pop in enumerate(model.pop):
            ip = pop.ip or subnet.network_address + 1 + index
            key = f"pop[{pop.name!r}].ip"
            if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
                raise fail(key, f"{ip} is not a host address of subnet {subnet}")
            used[ip] = key
        for client in model.client:
            if client.ip is None:
                continue
            key = f"client[{client.name!r}].ip"
            if client.ip not in subnet or client.ip in (subnet.network_address, subnet.broadcast_address):
                raise fail(key, f"{client.ip} is not a host address of subnet {subnet}")
            if client.ip in used:
                raise fail(key, f"{client.ip} is already taken by {used[client.ip]}")
            used[client.ip] = key
        if net.gateway is not None and net.gateway in used:
            raise fail("network.gateway", f"{net.gateway} is already taken by {used[net.gateway]}")
    policy = _check_policy(model, source, names, warnings)
    return NetworkConfig(
        source=source,
        network=net,
        pops=tuple(model.pop),
        clients=tuple(model.client),
        dhcp_first=dhcp_first,
        dhcp_last=dhcp_last,
        warnings=tuple(warnings),
        policy=policy,
    )


def _check_policy(model: _ConfigFile, source: str, names: set[str], warnings: list[str]) -> Policy:
    """The [policy] table; a ``member:NAME`` that names no client or PoP is a warning (the
    member may be added later, or by the API), not an error."""
    if model.policy is None:
        return OPEN_POLICY
    try:
        policy = parse_policy(model.policy, "policy")
    except PolicyError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    for rule in policy.rules:
        for side, selectors in (("from", rule.sources), ("to", rule.destinations)):
            for selector in selectors:
                if selector.kind is SelectorKind.MEMBER and selector.name not in names:
                    warnings.append(
                        f"{source}: policy.rule[{rule.name!r}].{side}: {selector} names no client or "
                        "PoP of this file"
                    )
    return policy
