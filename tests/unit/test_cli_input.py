"""Bad input on the command line: one line on stderr, exit 2, nothing written.

Also: a failed ``init`` writes nothing, ``invite``/``pop`` never make a store, and the
invitation URL can come from standard input or a 0600 file (kept out of ``ps``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import pytest
from alembic import command as alembic_command

from naas.cli.common import AgentOptions, CliError, add_agent_options
from naas.cli.main import enrollment_main, run
from naas.control import setup
from naas.pop import migrate
from naas.pop.store import PopStore, sqlite_url

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


def _listing(root: Path) -> list[str]:
    """Every path under ``root`` (and whether root exists), to compare before and after."""
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*"))] if root.exists() else ["<absent>"]


def test_invite_and_pop_refuse_a_store_init_did_not_make(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in a kept demo lab: init made the store elsewhere; invite without --store must
    not make a second, empty store and print a URL no PoP knows."""
    state = tmp_path / "state"
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state), "--store", shared)
    assert code == 0, err
    default = state / "net" / "pop.db"
    for command in (["invite"], ["pop", "--name", "master"]):
        before = _listing(state)
        code, out, err = _run(capsys, *command, "--config", str(config), "--state-dir", str(state))
        assert code == 2 and out == "", err
        assert err == f"naas: no PoP store at sqlite:///{default}: run `naas init` first or give --store\n"
        assert not default.exists() and _listing(state) == before
    empty = tmp_path / "empty.db"
    empty.touch()  # a file, but not a store init made
    code, _, err = _run(
        capsys, "invite", "--config", str(config), "--state-dir", str(state), "--store", f"sqlite:///{empty}"
    )
    assert code == 2 and "no PoP store at" in err and err.count("\n") == 1
    code, out, err = _run(
        capsys, "invite", "--config", str(config), "--state-dir", str(state), "--store", shared
    )
    assert code == 0 and out.startswith("desktop  naas://"), err


def _without_postgres_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("psycopg", "psycopg2"):  # None in sys.modules: `import` fails
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("existing", [False, True])
def test_init_with_a_store_it_cannot_use_writes_nothing(
    existing: bool,
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    if existing:  # e.g. a host that is also a client of the network
        (state / "net" / "node").mkdir(parents=True)
        (state / "net" / "node" / "keep.txt").write_text("mine")
    before = _listing(state)
    _without_postgres_driver(monkeypatch)
    url = "postgresql://naas:s3cret@db.invalid/naas"
    code, out, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state), "--store", url)
    assert code == 1 and out == "", err
    assert err.count("\n") == 1, err
    assert err.startswith("naas: store postgresql://naas:***@db.invalid/naas: the PostgreSQL driver ")
    assert err.endswith(" is not installed\n") and "s3cret" not in err
    assert _listing(state) == before, "a failed init leaves the state directory as it was"
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err  # no --force needed
    assert (state / "net" / "ca.key").exists() and (state / "net" / "pop.db").exists()
    assert not list(state.glob(".*")), "no staging directory is left"
    if existing:
        assert (state / "net" / "node" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("existing", [False, True])
def test_init_that_fails_half_way_writes_nothing(
    existing: bool,
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "deep" / "state"
    if existing:
        (state / "net").mkdir(parents=True)
    before = _listing(tmp_path)

    def broken(*_args: object) -> None:
        raise CliError("disk full")

    monkeypatch.setattr(setup, "write_tls_material", broken)
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state))
    assert code == 1 and err == "naas: disk full\n"
    assert _listing(tmp_path) == before
    monkeypatch.undo()
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err


def test_init_force_starts_over_with_the_same_store(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert _run(capsys, "init", "--config", str(config), "--state-dir", str(state))[0] == 0
    ca, node_ids = (state / "net" / "ca.key").read_bytes(), (state / "net" / "pop.db").stat().st_ino
    log = state / "net" / "pops" / "master" / "agent.log"
    log.write_text("a PoP's log stays\n")
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state), "--force")
    assert code == 0, err
    assert (state / "net" / "ca.key").read_bytes() != ca
    assert (state / "net" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (state / "net" / "pop.db").stat().st_ino == node_ids, "the store is kept"
    assert log.read_text() == "a PoP's log stays\n"


def test_a_store_url_that_is_no_url_is_bad_input(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code, _, err = _run(capsys, "init", "--config", str(config), "--state-dir", str(state), "--store", "nope")
    assert (
        code == 2 and err.startswith("naas: --store: 'nope' is not a database URL") and err.count("\n") == 1
    )
    assert not state.exists()


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("http://x/y\n", "naas: invitation URL:"), ("", "naas: invitation URL: nothing on standard input")],
)
def test_enrollment_reads_the_url_from_standard_input(
    stdin: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = enrollment_main(["-", "--state-dir", str(tmp_path / "s")])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()


def test_enrollment_reads_the_url_from_a_private_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "s")
    url_file = tmp_path / "invitation.url"
    fd = os.open(url_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"naas://1.2.3.4:5641/net?token=short&pin=x\n")
    os.close(fd)
    cases = [
        (["--url-file", str(url_file)], "naas: invitation URL:"),  # read, then parsed
        (["--url-file", str(tmp_path / "none")], "naas: --url-file: cannot read"),
        (["--url-file", str(tmp_path)], "naas: --url-file:"),
        (["naas://x", "--url-file", str(url_file)], "naas: give the invitation URL either"),
        ([], "naas: no invitation URL:"),
    ]
    for argv, message in cases:
        code = enrollment_main([*argv, "--state-dir", state])
        _, err = capsys.readouterr()
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, (argv, err)
    url_file.chmod(0o644)
    code = enrollment_main(["--url-file", str(url_file), "--state-dir", state])
    _, err = capsys.readouterr()
    assert code == 2
    assert err == f"naas: --url-file: {url_file} is open to other users (mode 0644): chmod 600 it\n"
    assert not (tmp_path / "s").exists()


def test_an_out_of_date_store_is_refused_with_the_command_that_upgrades_it(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert _run(capsys, "init", "--config", str(config), "--state-dir", str(state))[0] == 0
    store = PopStore(sqlite_url(state / "net" / "pop.db"))
    with store.engine.begin() as conn:  # back to the first revision, as an older NaaS left it
        alembic_command.downgrade(migrate._config(conn), "0001")
    store.close()
    code, _, err = _run(capsys, "invite", "--config", str(config), "--state-dir", str(state))
    assert code == 1 and "naas db upgrade" in err and len(err.strip().splitlines()) == 1, err
    code, out, _ = _run(capsys, "db", "upgrade", "--config", str(config), "--state-dir", str(state))
    assert code == 0 and f"upgraded from revision 0001 to {migrate.head_revision()}" in out
    code, out, err = _run(capsys, "apply", "--config", str(config), "--state-dir", str(state))
    assert code == 0, err
    code, out, err = _run(capsys, "invite", "--config", str(config), "--state-dir", str(state), "--json")
    assert code == 0 and json.loads(out)[0]["client"] == "desktop", err
