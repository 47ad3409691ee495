"""The admin CLI at a PoP's REST API (``--api URL --pin PIN``, the token from the
environment or ``--token``), against the live HTTPS server of tests/unit/test_api.py:
the same output as on the PoP host, the pin checked before the token is sent, and API
refusals as one line with exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api import CONFIG, ApiLab, open_api_lab

from naas.cli.main import run
from naas.pop.invitations import parse_url_untrusted
from naas.pop.tls import make_tls_material


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ApiLab]:
    with open_api_lab(tmp_path) as opened:
        yield opened


# -- the CLI at the API -----------------------------------------------------------------------


def test_cli_clients_and_members_at_the_api(lab: ApiLab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = lab.cli(capsys, "clients", "--create", "kiosk", "--groups", "edge, lobby")
    assert code == 0, err
    assert out.startswith(
        "client kiosk added (ip from the range, groups edge,lobby); `naas invite --client kiosk`"
    )
    code, out, _ = lab.cli(capsys, "clients")
    assert out.splitlines() == [
        "NAME   IP          GROUPS      ENROLLED  ALLOWED",
        "db     -           -           no        -",
        "kiosk  -           edge,lobby  no        -",
        "web    10.32.1.10  frontend    no        -",
    ]
    lab.enroll("web")
    code, out, err = lab.cli(capsys, "members", "--groups", "web", "frontend,public")
    assert code == 0 and out.startswith("groups of web: frontend,public; network document version"), err
    code, out, _ = lab.cli(capsys, "members", "--json")
    assert {m["name"]: m["groups"] for m in json.loads(out)["members"]}["web"] == ["frontend", "public"]
    code, out, err = lab.cli(capsys, "clients", "--delete", "kiosk")
    assert code == 0 and out.startswith("client kiosk removed: network document version"), err
    code, out, err = lab.cli(capsys, "revoke", "web")
    assert code == 0 and out.startswith("revoked web (node "), err
    code, out, _ = lab.cli(capsys, "members")
    assert "revoked: web (node" in out and out.splitlines()[0].split() == [
        "NAME", "NODE", "IP", "GROUPS", "KIND", "REACH", "RTT", "DOCUMENT",
    ]  # fmt: skip
    code, _, err = lab.cli(capsys, "revoke", "web")
    assert (code, err) == (2, "naas: 'web' is already revoked\n")


def test_cli_invite_json_is_the_same_at_the_api_and_on_the_pop_host(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for remote in (True, False):
        code, out, err = lab.cli(capsys, "invite", "--json", "--ttl", "2h", remote=remote)
        assert code == 0, err
        outputs.append(json.loads(out))
    shapes = [
        [(row["client"], sorted(row), row["url"].split("token=")[0]) for row in rows] for rows in outputs
    ]
    url_start = "naas://10.0.0.1:5641/acme?"
    assert shapes[0] == shapes[1] == [(c, ["client", "expires_at", "url"], url_start) for c in ("db", "web")]
    url = outputs[0][1]["url"]
    parsed = parse_url_untrusted(url)
    assert parsed.pops[0][1] == lab.pin
    assert abs(outputs[0][1]["expires_at"] - outputs[1][1]["expires_at"]) <= 1  # 2 h from (about) now
    code, out, _ = lab.cli(capsys, "invite", "--client", "web")
    assert code == 0 and out.startswith("web  naas://10.0.0.1:5641/acme?token=")
    code, _, err = lab.cli(capsys, "invite", "--client", "nobody")
    assert (code, err) == (2, "naas: no client named 'nobody': add it to naas.toml and run `naas apply`\n")


def test_cli_apply_at_the_api_prints_what_it_prints_on_the_pop_host(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.config_path.write_text(CONFIG + '\n[[client]]\nname = "kiosk"\ngroups = ["edge"]\n')
    outputs = [lab.cli(capsys, "apply", "--dry-run", "--config", str(lab.config_path))]
    outputs.append(lab.cli(capsys, "apply", "--dry-run", remote=False))
    assert outputs[0] == outputs[1] == (0, "+ client kiosk (groups [edge])\ndry run: nothing changed\n", "")
    code, out, err = lab.cli(capsys, "apply", "--config", str(lab.config_path))
    assert code == 0 and out.endswith(
        f"applied; network document version {lab.store.document_version()}\n"
    ), err
    for remote in (True, False):
        extra = ["--config", str(lab.config_path)] if remote else []
        assert lab.cli(capsys, "apply", *extra, remote=remote) == (0, "no changes\n", "")
    lab.config_path.write_text(
        CONFIG.replace("10.32.0.0/16", "10.33.0.0/16").replace("10.32.1.10", "10.33.1.10")
    )
    code, _, err = lab.cli(capsys, "apply", "--config", str(lab.config_path))
    assert code == 2 and err.startswith("naas: settings: network.subnet: cannot change under a live network")
    code, _, err = lab.cli(capsys, "apply", "--json", remote=False)
    assert code == 2 and err.startswith(f"naas: {lab.config_path}: network.subnet: cannot change")


def test_cli_checks_the_pin_before_it_sends_the_token(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = make_tls_material("impostor").pin
    code = run(["clients", "--api", lab.url, "--token", lab.reader, "--pin", wrong])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"naas: the PoP at {lab.url} does not hold the pinned key (expected {wrong}")
    assert "the token was not sent" in err and lab.reader not in err
    assert [t.last_used_at for t in lab.store.tokens() if t.name == "viewer"] == [None]  # never presented


def test_cli_api_errors_and_options(
    lab: ApiLab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = run(["clients", "--create", "kiosk", "--api", lab.url, "--token", lab.reader, "--pin", lab.pin])
    refusal = "naas: a read token may not add a client (this needs an admin token)\n"
    assert (code, capsys.readouterr().err) == (2, refusal)
    code = run(["clients", "--api", lab.url, "--token", "naas_nope", "--pin", lab.pin])
    assert (code, capsys.readouterr().err) == (2, "naas: the token is not valid here\n")
    for name, value in [("NAAS_API", lab.url), ("NAAS_API_TOKEN", lab.admin), ("NAAS_API_PIN", lab.pin)]:
        monkeypatch.setenv(name, value)
    assert run(["clients", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)["clients"]] == ["db", "web"]
    monkeypatch.delenv("NAAS_API_PIN")
    for argv, words in [
        (["clients"], "--pin: expected sha256:"),
        (["clients", "--pin", lab.pin, "--store", "sqlite:///x.db"], "--store: not used with --api"),
        (["clients", "--pin", lab.pin, "--config", "naas.toml"], "--config: not used with --api"),
        (["clients", "--pin", lab.pin, "--api", "http://127.0.0.1:1"], "--api: expected https://HOST:PORT"),
        (["clients", "--pin", lab.pin, "--ip", "10.32.9.9"], "--ip, --groups and --allowed go with --create"),
        (["apply", "--pin", lab.pin], "--config: required: apply sends the clients"),
    ]:
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("naas: ") and words in err and err.count("\n") == 1, err
    monkeypatch.delenv("NAAS_API")
    assert run(["clients"]) == 2 and "--config: required (or --api" in capsys.readouterr().err
    dead = "https://127.0.0.1:1"
    assert run(["clients", "--api", dead, "--pin", lab.pin]) == 1
    assert capsys.readouterr().err.startswith(f"naas: cannot reach the API at {dead}: ")
