"""The network's policy: who may talk to whom, as the operator writes it.

The ``[policy]`` table of naas.toml, the ``policy`` section of the network document and
the body of the API's ``/v1/policy`` are one shape (JSON below, TOML the same keys)::

    {"default": "deny",                     "allow" (today's behaviour) or "deny"
     "rule": [                              tried in order; the first that matches decides
       {"name": "ssh-from-ops",             unique, a name (lowercase, digits, '-')
        "from": ["group:ops"],              who sends: group:NAME, member:NAME, any,
        "to": ["group:web"],                who receives  or cidr:A.B.C.D/N
        "proto": "tcp",                     tcp, udp, icmp, any, or ethertype:0x88b5
        "ports": ["22", "8000-8100"],       tcp/udp destination ports; none: every port
        "action": "allow"}]}                allow or deny

This module is the model and its parser only (pure data, no frames): core/policy.py
decides flows with it. ``parse_policy`` takes untrusted input (a TOML table, a document
section, an API body) and raises PolicyError naming the key, e.g.
``policy.rule['ssh'].ports: "99999" is not a port or a range``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network
from typing import Any

from naas.model.codec import CodecError
from naas.model.ids import is_valid_name

MAX_RULES = 1000
MAX_SELECTORS = 64  # per side of a rule
MAX_PORT_RANGES = 64  # per rule
DEFAULT_RULE = "default"  # the name drops by the default action are counted under

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP = 1
IP_PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}


class PolicyError(CodecError):
    """A policy that cannot be used: ``key: problem``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class SelectorKind(StrEnum):
    ANY = "any"
    GROUP = "group"  # a member in the group (its groups: the document's, else its certificate's)
    MEMBER = "member"  # the member with that name
    CIDR = "cidr"  # an IPv4 address in the network: hosts bridged or routed behind members


@dataclass(frozen=True, slots=True)
class Selector:
    """One side's match: ``any``, ``group:NAME``, ``member:NAME`` or ``cidr:NET``."""

    kind: SelectorKind
    name: str = ""  # the group or member name
    network: IPv4Network | None = None  # for cidr

    def __str__(self) -> str:
        if self.kind is SelectorKind.ANY:
            return "any"
        if self.kind is SelectorKind.CIDR:
            return f"cidr:{self.network}"
        return f"{self.kind.value}:{self.name}"

    @classmethod
    def parse(cls, text: object) -> Selector:
        """Raises ValueError with the reason."""
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a selector (group:NAME, member:NAME, any, cidr:A.B.C.D/N)")
        if text == "any":
            return cls(SelectorKind.ANY)
        kind, sep, value = text.partition(":")
        if sep and kind in ("group", "member"):
            if not is_valid_name(value):
                raise ValueError(f"{text!r}: {value!r} is not a name (lowercase letters, digits, '-')")
            return cls(SelectorKind(kind), name=value)
        if sep and kind == "cidr":
            try:
                return cls(SelectorKind.CIDR, network=IPv4Network(value, strict=False))
            except ValueError:
                raise ValueError(f"{text!r}: {value!r} is not an IPv4 network") from None
        raise ValueError(f"{text!r} is not a selector (group:NAME, member:NAME, any, cidr:A.B.C.D/N)")


@dataclass(frozen=True, slots=True)
class Protocol:
    """What a rule matches above Ethernet: an IP protocol, any, or one EtherType."""

    name: str  # "tcp", "udp", "icmp", "any" or "ethertype"
    number: int = -1  # IP protocol number (tcp/udp/icmp), or the EtherType

    def __str__(self) -> str:
        return f"ethertype:0x{self.number:04x}" if self.name == "ethertype" else self.name

    @property
    def has_ports(self) -> bool:
        return self.name in ("tcp", "udp")

    @classmethod
    def parse(cls, text: object) -> Protocol:
        if not isinstance(text, str):
            raise ValueError(f"{text!r} is not a protocol (tcp, udp, icmp, any, ethertype:0xNNNN)")
        if text in IP_PROTOCOLS:
            return cls(text, IP_PROTOCOLS[text])
        if text == "any":
            return cls("any")
        kind, sep, value = text.partition(":")
        if kind == "ethertype" and sep:
            try:
                number = int(value, 16) if value.lower().startswith("0x") else int(value)
            except ValueError:
                number = -1
            if not 0x0600 <= number <= 0xFFFF:
                raise ValueError(f"{text!r}: an EtherType is 0x0600-0xffff, e.g. ethertype:0x88b5")
            return cls("ethertype", number)
        raise ValueError(f"{text!r} is not a protocol (tcp, udp, icmp, any, ethertype:0xNNNN)")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    sources: tuple[Selector, ...]
    destinations: tuple[Selector, ...]
    protocol: Protocol
    ports: tuple[tuple[int, int], ...]  # inclusive ranges; empty: every port
    action: Action

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": [str(s) for s in self.sources],
            "to": [str(s) for s in self.destinations],
            "proto": str(self.protocol),
            "ports": [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports],
            "action": self.action.value,
        }


@dataclass(frozen=True, slots=True)
class Policy:
    default: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()

    @property
    def is_open(self) -> bool:
        """Everything allowed, nothing to check: the default policy with no rule."""
        return self.default is Action.ALLOW and not self.rules

    def as_json(self) -> dict[str, Any]:
        """The document section and API shape (parse_policy reads it back)."""
        return {"default": self.default.value, "rule": [rule.as_json() for rule in self.rules]}


OPEN_POLICY = Policy()


def parse_port_range(text: object) -> tuple[int, int]:
    """``"22"`` or ``"8000-8100"`` (or an int) -> inclusive range; ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if isinstance(text, str):
        first, sep, last = text.partition("-")
        if first.isdigit() and first.isascii() and (not sep or (last.isdigit() and last.isascii())):
            lo, hi = int(first), int(last) if sep else int(first)
            if 0 < lo <= hi < 65536:
                return lo, hi
    raise ValueError(f'{text!r} is not a port or a range (e.g. "22", "8000-8100")')


def parse_policy(raw: object, key: str = "policy") -> Policy:
    """A Policy from untrusted JSON-like data (TOML table, document section, API body)."""
    if not isinstance(raw, Mapping):
        raise PolicyError(key, "expected a table")
    unknown = set(raw) - {"default", "rule"}
    if unknown:
        raise PolicyError(f"{key}.{sorted(map(str, unknown))[0]}", "unknown key")
    default_text = raw.get("default", "allow")
    if default_text not in ("allow", "deny"):
        raise PolicyError(f"{key}.default", f"{default_text!r} is not allow or deny")
    entries = raw.get("rule", [])
    if not isinstance(entries, list):
        raise PolicyError(f"{key}.rule", "expected a list of rules ([[policy.rule]])")
    if len(entries) > MAX_RULES:
        raise PolicyError(f"{key}.rule", f"more than {MAX_RULES} rules")
    rules: list[Rule] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        rule = _parse_rule(entry, f"{key}.rule[{index}]")
        if rule.name in names:
            raise PolicyError(f"{key}.rule[{rule.name!r}].name", "name used twice")
        names.add(rule.name)
        rules.append(rule)
    return Policy(Action(default_text), tuple(rules))


def _parse_rule(entry: object, key: str) -> Rule:
    if not isinstance(entry, Mapping):
        raise PolicyError(key, "expected a table")
    name = entry.get("name")
    if not isinstance(name, str) or not is_valid_name(name) or name == DEFAULT_RULE:
        problem = f"{name!r} is not a rule name (lowercase letters, digits, '-'; not 'default')"
        raise PolicyError(f"{key}.name", problem)
    key = f"{key.rpartition('[')[0]}[{name!r}]"
    unknown = set(entry) - {"name", "from", "to", "proto", "ports", "action"}
    if unknown:
        raise PolicyError(f"{key}.{sorted(map(str, unknown))[0]}", "unknown key")
    sides: list[tuple[Selector, ...]] = []
    for side in ("from", "to"):
        items = entry.get(side, ["any"])
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items or len(items) > MAX_SELECTORS:
            raise PolicyError(f"{key}.{side}", f"expected a list of 1-{MAX_SELECTORS} selectors")
        try:
            sides.append(tuple(Selector.parse(item) for item in items))
        except ValueError as exc:
            raise PolicyError(f"{key}.{side}", str(exc)) from None
    try:
        protocol = Protocol.parse(entry.get("proto", "any"))
    except ValueError as exc:
        raise PolicyError(f"{key}.proto", str(exc)) from None
    port_items = entry.get("ports", [])
    if isinstance(port_items, (str, int)):
        port_items = [port_items]
    if not isinstance(port_items, list) or len(port_items) > MAX_PORT_RANGES:
        raise PolicyError(f"{key}.ports", f"expected a list of at most {MAX_PORT_RANGES} ports or ranges")
    if port_items and not protocol.has_ports:
        raise PolicyError(f"{key}.ports", f"only tcp and udp have ports, not {protocol}")
    try:
        ports = tuple(parse_port_range(item) for item in port_items)
    except ValueError as exc:
        raise PolicyError(f"{key}.ports", str(exc)) from None
    action = entry.get("action")
    if action not in ("allow", "deny"):
        raise PolicyError(f"{key}.action", f"{action!r} is not allow or deny")
    return Rule(name, sides[0], sides[1], protocol, ports, Action(action))
