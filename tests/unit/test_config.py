"""naas.toml validation: every error names the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from naas.model.config import ConfigError, is_valid_name, load_config, parse_config

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
