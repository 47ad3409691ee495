"""naas.toml validation: every error names the file, the key and the problem."""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from naas.model.config import ConfigError, load_config, parse_config
from naas.model.ids import is_valid_name
from naas.model.policy import OPEN_POLICY, Action

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "naas.toml"

BASE = """
[network]
name = "net"
subnet = "10.20.0.0/16"
dhcp_range = "10.20.1.10-10.20.1.20"
[[pop]]
name = "master"
address = "192.0.2.1"
[[pop]]
name = "slave"
address = "192.0.2.2"
[[client]]
name = "desktop"
"""


def test_the_shipped_example_is_valid_and_warns_about_public_space() -> None:
    config = load_config(EXAMPLE)
    assert config.name == "my-virtual-cloud"
    assert [p.name for p in config.pops] == ["master", "slave"]
    assert config.client("aws-web-1").ip is not None
    assert len(config.warnings) == 1 and "network.subnet" in config.warnings[0]


def test_defaults_and_pop_addresses() -> None:
    config = parse_config(BASE)
    assert config.network.mesh_port == 5640 and config.network.enrollment_port == 5641
    assert str(config.pop_overlay_ip("master")) == "10.20.0.1"
    assert str(config.pop_overlay_ip("slave")) == "10.20.0.2"
    assert config.warnings == ()


def test_pure_layer2_config() -> None:
    config = parse_config(
        BASE.replace('subnet = "10.20.0.0/16"\n', "").replace('dhcp_range = "10.20.1.10-10.20.1.20"\n', "")
    )
    assert config.network.subnet is None and config.pop_overlay_ip("master") is None


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("mesh_port = 5640", ""), "network.bogus", "unknown key"),
        (('name = "net"', 'name = "Bad Name"'), "network.name", "not a valid name"),
        (('address = "192.0.2.2"', 'address = "192.0.2"'), "pop['slave'].address", "not an IP address"),
        (
            ('dhcp_range = "10.20.1.10-10.20.1.20"', 'dhcp_range = "10.21.0.1-10.21.0.9"'),
            "network.dhcp_range",
            "not a host address",
        ),
        (
            ('dhcp_range = "10.20.1.10-10.20.1.20"', 'dhcp_range = "10.20.1.30-10.20.1.20"'),
            "network.dhcp_range",
            "after the last",
        ),
        (('name = "desktop"', 'name = "master"'), "client['master'].name", "used twice"),
        (('address = "192.0.2.2"', 'address = "192.0.2.1"'), "pop['slave'].address", "two PoPs"),
        (('name = "desktop"', 'name = "desktop"\nip = "10.20.0.1"'), "client['desktop'].ip", "already taken"),
        (('subnet = "10.20.0.0/16"', 'subnet = "10.20.0.0/31"'), "network.subnet", "too small"),
    ],
)
def test_errors_name_file_key_and_problem(change: tuple[str, str], key: str, problem: str) -> None:
    old, new = change
    text = (
        BASE.replace(old, new, 1)
        if old != "mesh_port = 5640"
        else BASE.replace('name = "net"', 'name = "net"\nbogus = 1', 1)
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    message = str(caught.value)
    assert message.startswith(f"site.toml: {key}: "), message
    assert problem in message
    assert "\n" not in message


def test_missing_sections_and_bad_toml() -> None:
    with pytest.raises(ConfigError, match=r"^x.toml: pop: required key is missing$"):
        parse_config('[network]\nname = "n"\n', "x.toml")
    with pytest.raises(ConfigError, match=r"^x.toml: not valid TOML"):
        parse_config("[network\n", "x.toml")
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config("/nonexistent/naas.toml")


def test_dhcp_range_needs_a_subnet() -> None:
    text = BASE.replace('subnet = "10.20.0.0/16"\n', "")
    with pytest.raises(ConfigError, match=r"network.dhcp_range: needs network.subnet"):
        parse_config(text)


def test_a_name_is_the_whole_text() -> None:
    assert is_valid_name("aws-web-1") and is_valid_name("a")
    for bad in ("abc\n", "", "-a", "a-", "A", "a b", "a" * 64, "é"):
        assert not is_valid_name(bad), repr(bad)


# -- [policy] and allowed_addresses ----------------------------------------------------------

POLICY = """
[policy]
default = "deny"
[[policy.rule]]
name = "ssh-from-ops"
from = ["group:ops"]
to = ["group:web", "member:desktop"]
proto = "tcp"
ports = ["22", "8000-8100"]
action = "allow"
[[policy.rule]]
name = "lab-frames"
from = ["cidr:10.9.0.0/24"]
proto = "ethertype:0x88b5"
action = "allow"
"""


def test_no_policy_is_the_open_policy() -> None:
    config = parse_config(BASE)
    assert config.policy == OPEN_POLICY and config.policy.is_open
    assert config.client("desktop").allowed_addresses == ()


def test_the_policy_table_is_parsed_in_order() -> None:
    config = parse_config(BASE + POLICY)
    policy = config.policy
    assert policy.default is Action.DENY
    assert [rule.name for rule in policy.rules] == ["ssh-from-ops", "lab-frames"]
    ssh = policy.rules[0]
    assert [str(s) for s in ssh.sources] == ["group:ops"]
    assert [str(s) for s in ssh.destinations] == ["group:web", "member:desktop"]
    assert (str(ssh.protocol), ssh.ports, ssh.action) == ("tcp", ((22, 22), (8000, 8100)), Action.ALLOW)
    assert [str(s) for s in policy.rules[1].destinations] == ["any"]  # "to" left out: any
    assert policy.as_json()["rule"][1]["proto"] == "ethertype:0x88b5"
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (('ports = ["22", "8000-8100"]', 'ports = ["0"]'), "policy.rule['ssh-from-ops'].ports", "not a port"),
        (('default = "deny"', 'default = "block"'), "policy.default", "not allow or deny"),
        (('proto = "tcp"', 'proto = "sctp"'), "policy.rule['ssh-from-ops'].proto", "not a protocol"),
        (('from = ["group:ops"]', 'from = ["ops"]'), "policy.rule['ssh-from-ops'].from", "not a selector"),
        (('name = "lab-frames"', 'name = "ssh-from-ops"'), "policy.rule['ssh-from-ops'].name", "used twice"),
        (('action = "allow"\n[[policy.rule]]', 'action = "allow"\nlog = true\n[[policy.rule]]'),
         "policy.rule['ssh-from-ops'].log", "unknown key"),
        (('proto = "ethertype:0x88b5"', 'proto = "icmp"\nports = ["1"]'),
         "policy.rule['lab-frames'].ports", "only tcp and udp have ports"),
        (('default = "deny"', 'default = "deny"\nstrict = true'), "policy.strict", "unknown key"),
    ],
)  # fmt: skip
def test_policy_errors_name_file_and_key(change: tuple[str, str], key: str, problem: str) -> None:
    old, new = change
    text = BASE + POLICY.replace(old, new, 1)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    message = str(caught.value)
    assert message.startswith(f"site.toml: {key}: ") and problem in message, message
    assert "\n" not in message


def test_a_policy_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^naas.toml: policy: "):
        parse_config('policy = "deny"\n' + BASE)


def test_a_member_selector_naming_no_client_or_pop_is_a_warning() -> None:
    text = BASE + POLICY.replace("member:desktop", "member:laptop").replace(
        'from = ["group:ops"]', 'from = ["group:ops", "member:master"]'
    )
    config = parse_config(text, "site.toml")
    assert config.warnings == (
        "site.toml: policy.rule['ssh-from-ops'].to: member:laptop names no client or PoP of this file",
    )


def test_allowed_addresses_are_networks_inside_or_outside_the_subnet() -> None:
    text = BASE.replace(
        'name = "desktop"',
        'name = "desktop"\nallowed_addresses = ["10.20.9.0/24", "192.168.1.7", "0.0.0.0/0"]',
    )
    config = parse_config(text)
    assert config.client("desktop").allowed_addresses == (
        IPv4Network("10.20.9.0/24"),
        IPv4Network("192.168.1.7/32"),
        IPv4Network("0.0.0.0/0"),
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('["routers"]', "'routers' is not an IPv4 network in CIDR form"),
        ('["10.20.9.1/24"]', "'10.20.9.1/24' has host bits set: the network is 10.20.9.0/24"),
        ('["2001:db8::/64"]', "is not an IPv4 network"),
        ("[7]", "7 is not an IPv4 network"),
        ('"10.20.9.0/24"', "valid tuple"),
        (str([f"10.{i}.0.0/16" for i in range(65)]).replace("'", '"'), "at most 64 networks"),
    ],
)
def test_allowed_addresses_errors_name_the_client(value: str, problem: str) -> None:
    text = BASE.replace('name = "desktop"', f'name = "desktop"\nallowed_addresses = {value}')
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.toml")
    message = str(caught.value)
    assert message.startswith("site.toml: client['desktop'].allowed_addresses: ") and problem in message, (
        message
    )


def test_the_examples_commented_policy_and_router_are_valid_and_change_nothing() -> None:
    text = EXAMPLE.read_text()
    start = text.index("# Optional: a router")
    toml_line = re.compile(r"^# (\[|[a-z_]+ = )")
    uncommented = [line[2:] for line in text[start:].splitlines() if toml_line.match(line)]
    config = parse_config(text[:start] + "\n".join(uncommented) + "\n")
    assert config.client("office-router").allowed_addresses == (IPv4Network("192.168.50.0/24"),)
    assert [rule.name for rule in config.policy.rules] == ["ssh-from-ops", "office-to-web"]
    assert config.policy.default is Action.ALLOW
    assert load_config(EXAMPLE).policy == OPEN_POLICY
