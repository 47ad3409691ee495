"""Bad input on the command line: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from naas.cli.common import AgentOptions, add_agent_options
from naas.cli.main import run

CONFIG = """
[network]
name = "net"
subnet = "10.20.0.0/16"
[[pop]]
name = "master"
address = "127.0.0.1"
[[client]]
name = "desktop"
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "naas.toml"
    path.write_text(CONFIG)
    return path


def test_bad_config_exits_2_and_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "naas.toml"
    bad.write_text(CONFIG.replace('address = "127.0.0.1"', 'address = "nowhere"'))
    state = tmp_path / "state"
    code, _, err = _run(capsys, "init", "--config", str(bad), "--state-dir", str(state))
    assert code == 2
    assert err == f"naas: {bad}: pop['master'].address: not an IP address: 'nowhere'\n"
    assert not state.exists()


def test_init_then_invite(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    code, out, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err
    assert (state / "net" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (state / "net" / "pops" / "master" / "static.key").stat().st_mode & 0o777 == 0o600
    assert (state / "net" / "pops" / "master" / "tls.key").stat().st_mode & 0o777 == 0o600
    code, out, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state))
    assert code == 1 and "already initialized" in err
    code, out, err = _run(capsys, "invite", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err
    assert out.startswith("desktop  naas://127.0.0.1:5641/net?token=")
    code, out, err = _run(
        capsys, "invite", "--config", str(config), "--state-dir", str(state), "--client", "nobody"
    )
    assert code == 2 and "no client named 'nobody'" in err
    code, out, err = _run(
        capsys, "invite", "--config", str(config), "--state-dir", str(state), "--ttl", "soon"
    )
    assert code == 2 and err.startswith("naas: --ttl:")


def test_invite_before_init_fails(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "invite", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code == 1 and "not initialized" in err


@pytest.mark.parametrize("url", ["", "http://x/y", "naas://1.2.3.4:5641/net?token=short&pin=x"])
def test_join_with_a_bad_url_exits_2(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "join", url, "--state-dir", str(tmp_path / "s"))
    assert code == 2
    assert err.startswith("naas: invitation URL:") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_status_without_membership(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", "--state-dir", str(tmp_path))
    assert code == 1 and "has not joined any network" in err


def test_unknown_command_is_bad_input() -> None:
    with pytest.raises(SystemExit) as caught:
        run(["frobnicate"])
    assert caught.value.code == 2


@pytest.mark.parametrize("text", ["127.0.0.1:9640", "[::1]:9640"])
def test_agent_options_hand_metrics_to_the_agent_as_given(text: str) -> None:
    """`naas up` checks --metrics once and passes it on to `naas agent` unchanged."""
    parser = argparse.ArgumentParser()
    add_agent_options(parser)
    options = AgentOptions.from_args(parser.parse_args(["--metrics", text]))
    assert options.argv()[:2] == ["--metrics", text]
    again = AgentOptions.from_args(parser.parse_args(options.argv()))
    assert again == options and again.metrics is not None
    assert again.metrics.as_tuple() == (text.rsplit(":", 1)[0].strip("[]"), 9640)
