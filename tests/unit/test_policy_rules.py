"""The policy model, its decisions and traces, and the firewall's port security on a
layer-3 network (pure: frames built by hand, no mesh)."""

from __future__ import annotations

import struct
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naas.core.firewall import Firewall, MemberFacts, networks
from naas.core.policy import Party, PolicyEngine, trace
from naas.core.wire import DropReason
from naas.model.ids import NodeId, mac_for_node
from naas.model.policy import OPEN_POLICY, Action, PolicyError, parse_policy

OPS = Party(1, "ops-1", frozenset({"ops"}))
WEB = Party(2, "web-1", frozenset({"web"}))
GUEST = Party(3, "guest", frozenset())
TIERS = {
    "default": "deny",
    "rule": [
        {
            "name": "web",
            "from": "any",
            "to": ["group:web"],
            "proto": "tcp",
            "ports": ["80", "443"],
            "action": "allow",
        },
        {
            "name": "no-guest-ssh",
            "from": ["member:guest"],
            "to": ["any"],
            "proto": "tcp",
            "ports": [22],
            "action": "deny",
        },
        {
            "name": "ssh",
            "from": ["group:ops", "member:guest"],
            "to": ["any"],
            "proto": "tcp",
            "ports": ["22"],
            "action": "allow",
        },
        {
            "name": "bridged",
            "from": ["cidr:10.77.0.0/24"],
            "to": ["group:web"],
            "proto": "udp",
            "ports": ["5000-5100"],
            "action": "allow",
        },
        {"name": "lab", "from": ["any"], "to": ["any"], "proto": "ethertype:0x88b5", "action": "allow"},
    ],
}
IPV4, TCP, UDP = 0x0800, 6, 17


def _decide(
    policy: dict[str, Any], src: Party, dst: Party, proto: int, port: int, ip_src: str = "0.0.0.0"
) -> str:
    decision = PolicyEngine(parse_policy(policy)).decide(
        src, dst, IPV4, proto, port, int(IPv4Address(ip_src)), 0
    )
    return f"{'allow' if decision.allow else 'deny'}:{decision.rule}"


def test_first_matching_rule_decides_and_the_default_catches_the_rest() -> None:
    assert _decide(TIERS, GUEST, WEB, TCP, 443) == "allow:web"
    assert _decide(TIERS, OPS, WEB, TCP, 22) == "allow:ssh"
    assert _decide(TIERS, GUEST, WEB, TCP, 22) == "deny:no-guest-ssh", "an earlier deny wins"
    assert _decide(TIERS, WEB, OPS, TCP, 443) == "deny:default"
    assert _decide(TIERS, OPS, WEB, UDP, 5050) == "deny:default"
    assert _decide(TIERS, OPS, WEB, UDP, 5050, "10.77.0.9") == "allow:bridged", (
        "cidr: a bridged host's source"
    )
    assert _decide(TIERS, OPS, WEB, UDP, 5101, "10.77.0.9") == "deny:default"
    engine = PolicyEngine(parse_policy(TIERS))
    assert engine.decide(GUEST, OPS, 0x88B5, -1, 0, 0, 0).rule == "lab"
    assert not engine.decide(GUEST, OPS, 0x88B6, -1, 0, 0, 0).allow


def test_pairs_are_permitted_for_arp_when_some_allow_rule_could_apply() -> None:
    engine = PolicyEngine(parse_policy({"default": "deny", "rule": [TIERS["rule"][0]]}))
    assert engine.pair_permitted(GUEST, WEB)
    assert not engine.pair_permitted(WEB, GUEST)
    assert PolicyEngine(OPEN_POLICY).pair_permitted(WEB, GUEST)


def test_trace_says_why_each_rule_does_not_match_and_which_decides() -> None:
    policy = parse_policy(TIERS)
    lines = trace(policy, WEB, OPS, "tcp", 22).lines
    assert lines[0] == "flow: web-1 (groups: web) -> ops-1 (groups: ops), tcp/22"
    assert "does not include ops-1" in lines[1]
    assert "rule 3 'ssh' (allow): no match, from [group:ops, member:guest] does not include web-1" in lines[3]
    assert lines[-1] == "no rule matches -> default DENY"
    result = trace(policy, GUEST, WEB, "tcp", 22)
    assert result.decision.rule == "no-guest-ssh" and not result.decision.allow
    assert result.lines[-1] == "rule 2 'no-guest-ssh' (deny): matches -> DENY"
    assert "port 8080 is not in [80, 443]" in str(trace(policy, GUEST, WEB, "tcp", 8080))
    with pytest.raises(ValueError):
        trace(policy, GUEST, WEB, "any")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"default": "maybe"}, "policy.default: 'maybe' is not allow or deny"),
        (
            {"rule": [{"name": "a", "action": "allow", "proto": "tcp", "ports": ["0"]}]},
            "policy.rule['a'].ports",
        ),
        ({"rule": [{"name": "a", "action": "allow", "proto": "icmp", "ports": ["1"]}]}, "only tcp and udp"),
        ({"rule": [{"name": "a", "action": "allow", "from": ["group:Ops"]}]}, "policy.rule['a'].from"),
        ({"rule": [{"name": "a", "action": "allow", "to": ["cidr:10.0.0.300/8"]}]}, "not an IPv4 network"),
        ({"rule": [{"name": "a", "action": "allow", "proto": "ethertype:0x0100"}]}, "0x0600-0xffff"),
        ({"rule": [{"name": "a", "action": "allow"}, {"name": "a", "action": "deny"}]}, "name used twice"),
        ({"rule": [{"name": "default", "action": "allow"}]}, "not 'default'"),
        (
            {"rule": [{"name": "a", "action": "allow", "colour": "red"}]},
            "policy.rule['a'].colour: unknown key",
        ),
        ({"rule": [{"name": "a"}]}, "policy.rule['a'].action"),
        ({"rules": []}, "policy.rules: unknown key"),
    ],
)
def test_bad_policies_are_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=None) as caught:
        parse_policy(raw)
    assert message in str(caught.value)


def test_the_json_shape_reads_back_to_the_same_policy() -> None:
    policy = parse_policy(TIERS)
    assert parse_policy(policy.as_json()) == policy
    assert policy.default is Action.DENY and not policy.is_open and OPEN_POLICY.is_open


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_rule = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "x-1"]), "action": st.sampled_from(["allow", "deny", "maybe"])},
    optional={
        "from": st.lists(st.sampled_from(["any", "group:ops", "member:x", "cidr:10.0.0.0/8", "bogus", ""])),
        "proto": st.sampled_from(["tcp", "udp", "icmp", "any", "ethertype:0x88b5", "ethertype:zz", "sctp"]),
        "ports": st.lists(st.one_of(st.integers(-5, 70000), st.sampled_from(["22", "1-2", "2-1", "x", ""]))),
    },
)


@given(
    st.one_of(
        _json, st.fixed_dictionaries({"default": st.sampled_from(["allow", "deny"]), "rule": st.lists(_rule)})
    )
)
def test_untrusted_policies_parse_or_raise_policy_error_only(raw: object) -> None:
    try:
        policy = parse_policy(raw)
    except PolicyError:
        return
    assert parse_policy(policy.as_json()) == policy


# -- port security on a layer-3 network -----------------------------------------------------

ADDRESSES = {1: "172.32.1.1", 2: "172.32.1.2", 3: "172.32.1.3"}


def _firewall(allowed: dict[int, tuple[str, ...]] | None = None) -> Firewall:
    parties = {1: OPS, 2: WEB, 3: GUEST}

    def facts(node: int) -> MemberFacts | None:
        if node not in parties:
            return None
        nets = networks(IPv4Network(n) for n in (allowed or {}).get(node, ()))
        return MemberFacts(parties[node], int(IPv4Address(ADDRESSES[node])), nets)

    return Firewall(WEB, facts, Counter(), layer3=True)


def _frame(sender: int, ip_src: str, *, src_mac: bytes | None = None, arp: bool = False) -> bytes:
    ethernet = mac_for_node(NodeId(2)) + (src_mac or mac_for_node(NodeId(sender)))
    if arp:
        body = struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            IPV4,
            6,
            4,
            2,
            ethernet[6:],
            IPv4Address(ip_src).packed,
            ethernet[:6],
            IPv4Address(ADDRESSES[2]).packed,
        )
        return ethernet + b"\x08\x06" + body
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28,
        0,
        0,
        64,
        1,
        0,
        IPv4Address(ip_src).packed,
        IPv4Address(ADDRESSES[2]).packed,
    )
    return ethernet + b"\x08\x00" + header + struct.pack("!BBHHH", 8, 0, 0, 1, 1)


def test_port_security_ties_source_addresses_to_the_sender() -> None:
    firewall = _firewall({1: ("10.77.0.0/24",)})
    assert firewall.inbound(3, _frame(3, ADDRESSES[3]), 0, 1.0)
    assert firewall.inbound(1, _frame(1, "10.77.0.5"), 0, 1.0), "an allowed address of the sender"
    refused = [
        _frame(3, ADDRESSES[1]),  # another member's IPv4 address
        _frame(3, "10.77.0.5"),  # an address allowed to another member
        _frame(3, ADDRESSES[3], src_mac=mac_for_node(NodeId(1))),  # another member's MAC
        _frame(3, ADDRESSES[1], arp=True),  # an ARP reply claiming another member's address
    ]
    for frame in refused:
        assert not firewall.inbound(3, frame, 0, 1.0)
    assert firewall.drops[DropReason.SPOOFED_SOURCE] == len(refused)
    assert firewall.inbound(3, _frame(3, "0.0.0.0", arp=True), 0, 1.0), "an ARP probe (RFC 5227)"
