"""The policy over the REST API and the CLI (GET/PUT /v1/policy, POST /v1/policy/trace,
`naas policy show|trace`, allowed addresses in `naas clients` and `naas apply`), against
the live HTTPS server of tests/unit/test_api.py, at the API and on the PoP host alike.

    test / CLI --TLS--> master (enrollment + API) -- pop.db
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api import CONFIG, ApiLab, open_api_lab

SSH_FROM_OPS = {
    "name": "ssh-from-ops",
    "from": ["group:ops"],
    "to": ["group:frontend"],
    "proto": "tcp",
    "ports": ["22"],
    "action": "allow",
}
POLICY = {"default": "deny", "rule": [SSH_FROM_OPS]}
POLICY_TOML = """
[policy]
default = "deny"

[[policy.rule]]
name = "ssh-from-ops"
from = ["group:ops"]
to = ["group:frontend"]
proto = "tcp"
ports = ["22"]
action = "allow"
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ApiLab]:
    with open_api_lab(tmp_path) as opened:
        yield opened


def _regroup(lab: ApiLab, name: str, groups: list[str]) -> None:
    assert lab.http("PUT", f"/v1/members/{name}/groups", {"groups": groups}).status == 200


# -- the API ----------------------------------------------------------------------------------


def test_the_policy_is_open_until_one_is_put(lab: ApiLab) -> None:
    assert lab.http("GET", "/v1/policy", token="read").body == {"default": "allow", "rule": []}
    before = lab.store.document_version()
    put = lab.http("PUT", "/v1/policy", POLICY)
    assert put.status == 200, put
    assert put.body == {"policy": POLICY, "changed": True, "document_version": before + 1}
    assert lab.http("GET", "/v1/policy", token="read").body == POLICY  # GET, edit, PUT
    document = lab.http("GET", "/v1/document").body["document"]
    assert document["version"] == before + 1 and document["sections"]["policy"] == POLICY
    again = lab.http("PUT", "/v1/policy", POLICY)
    assert again.body == {"policy": POLICY, "changed": False, "document_version": before + 1}
    opened = lab.http("PUT", "/v1/policy", {})
    assert opened.body["policy"] == {"default": "allow", "rule": []} and opened.body["changed"]
    assert "policy" not in lab.http("GET", "/v1/document").body["document"]["sections"]


def test_ports_may_be_numbers_and_come_back_as_text(lab: ApiLab) -> None:
    rule = {**SSH_FROM_OPS, "ports": [22, "8000-8100"]}
    answer = lab.http("PUT", "/v1/policy", {"default": "deny", "rule": [rule]})
    assert answer.body["policy"]["rule"][0]["ports"] == ["22", "8000-8100"]


def test_a_read_token_may_read_and_trace_the_policy_but_not_put_it(lab: ApiLab) -> None:
    refused = lab.http("PUT", "/v1/policy", POLICY, token="read")
    assert (
        refused.status == 403 and "a read token may not replace the network's policy" in refused.body["error"]
    )
    assert lab.http("GET", "/v1/policy", token="read").status == 200
    trace = lab.http("POST", "/v1/policy/trace", {"from": "web", "to": "db", "proto": "icmp"}, token="read")
    assert trace.status == 200 and trace.body["allow"] is True


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"default": "maybe"}, "default: Input should be 'allow' or 'deny'"),
        ({"rule": [{**SSH_FROM_OPS, "ports": ["99999"]}]}, "rule['ssh-from-ops'].ports: '99999' is not"),
        ({"rule": [{**SSH_FROM_OPS, "ports": [99999]}]}, "rule[0].ports[0]"),
        ({"rule": [{**SSH_FROM_OPS, "proto": "icmp"}]}, "rule['ssh-from-ops'].ports: only tcp and"),
        ({"rule": [{**SSH_FROM_OPS, "from": ["ops"]}]}, "rule['ssh-from-ops'].from: 'ops' is not a"),
        ({"rule": [{**SSH_FROM_OPS, "from": []}]}, "rule[0].from: List should have at least 1 item"),
        ({"rule": [{**SSH_FROM_OPS, "log": True}]}, "rule[0].log: Extra inputs are not permitted"),
        ({"rule": [SSH_FROM_OPS, SSH_FROM_OPS]}, "policy.rule['ssh-from-ops'].name: name used twice"),
        ({"rule": [{**SSH_FROM_OPS, "name": "default"}]}, "policy.rule[0].name: 'default' is not"),
        ({"rule": [{k: v for k, v in SSH_FROM_OPS.items() if k != "action"}]}, "rule[0].action: Field"),
    ],
)  # fmt: skip
def test_a_bad_policy_is_a_400_naming_the_key(lab: ApiLab, body: dict[str, Any], words: str) -> None:
    before = lab.store.document_version()
    answer = lab.http("PUT", "/v1/policy", body)
    assert answer.status == 400 and words in answer.body["error"], answer
    assert "\n" not in answer.body["error"] and lab.store.document_version() == before


def test_trace_explains_the_decision(lab: ApiLab) -> None:
    lab.enroll("web")
    _regroup(lab, "db", ["ops"])
    lab.http("PUT", "/v1/policy", POLICY)
    allowed = lab.http("POST", "/v1/policy/trace", {"from": "db", "to": "web", "proto": "tcp", "port": 22})
    assert allowed.body == {
        "allow": True,
        "rule": "ssh-from-ops",
        "index": 0,
        "lines": [
            "flow: db (groups: ops) -> web (groups: frontend), tcp/22",
            "rule 1 'ssh-from-ops' (allow): matches -> ALLOW",
        ],
    }
    denied = lab.http("POST", "/v1/policy/trace", {"from": "web", "to": "db", "proto": "tcp", "port": 22})
    assert (denied.body["allow"], denied.body["rule"], denied.body["index"]) == (False, "default", None)
    assert denied.body["lines"][-1] == "no rule matches -> default DENY"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"from": "web", "to": "nobody", "proto": "tcp", "port": 22}, 404, "no member or client 'nobody'"),
        ({"from": "web", "to": "db", "proto": "sctp", "port": 22}, 400, "proto: 'sctp' is not a protocol"),
        ({"from": "web", "to": "db", "proto": "tcp"}, 400, "port: a tcp flow needs its destination port"),
        ({"from": "web", "to": "db", "proto": "tcp", "port": 70000}, 400, "port: Input should be less than"),
        ({"source": "web", "to": "db", "proto": "tcp"}, 400, "from: Field required"),
        ({"from": "web", "to": "db", "proto": "icmp", "src_ip": "10.0.0.300"}, 400, "src_ip"),
    ],
)
def test_a_bad_trace_is_refused_in_one_line(
    lab: ApiLab, body: dict[str, Any], status: int, words: str
) -> None:
    answer = lab.http("POST", "/v1/policy/trace", body, token="read")
    assert answer.status == status and words in answer.body["error"], answer


def test_a_client_enrolling_with_allowed_addresses_is_in_the_document(lab: ApiLab) -> None:
    created = lab.http("POST", "/v1/clients", {"name": "router", "allowed_addresses": ["192.168.50.0/24"]})
    assert created.status == 201 and created.body["allowed_addresses"] == ["192.168.50.0/24"]
    bad = lab.http("POST", "/v1/clients", {"name": "other", "allowed_addresses": ["192.168.50.1/24"]})
    assert bad.status == 400 and "allowed_addresses[0]" in bad.body["error"]
    before = lab.store.document_version()
    cert = lab.enroll("router")
    document = lab.http("GET", "/v1/document").body["document"]
    assert document["version"] == before + 1
    assert document["sections"]["addresses"] == {str(cert.node_id): ["192.168.50.0/24"]}
    listed = {c["name"]: c for c in lab.http("GET", "/v1/clients").body["clients"]}
    assert (
        listed["router"]["allowed_addresses"] == ["192.168.50.0/24"]
        and listed["db"]["allowed_addresses"] == []
    )


def test_apply_takes_the_policy_and_allowed_addresses(lab: ApiLab) -> None:
    clients = [
        {"name": "web", "ip": "10.32.1.10", "groups": ["frontend"], "allowed_addresses": ["10.99.0.0/16"]},
        {"name": "db"},
    ]
    before = lab.store.document_version()
    dry = lab.http("POST", "/v1/apply", {"clients": clients, "policy": POLICY, "dry_run": True}).body
    assert dry["lines"] == [
        "~ client web: allowed addresses [] -> [10.99.0.0/16]",
        "~ policy: 1 rule, default deny (was 0 rules, default allow): + rule ssh-from-ops",
    ]
    assert (dry["policy_changed"], dry["applied"]) == (True, False)
    done = lab.http("POST", "/v1/apply", {"clients": clients, "policy": POLICY}).body
    assert done["applied"] and done["document_version"] == before + 1
    assert lab.http("GET", "/v1/policy").body == POLICY
    kept = lab.http("POST", "/v1/apply", {"clients": clients}).body  # no policy: left as it is
    assert (kept["applied"], kept["policy_changed"]) == (False, False)
    bad = lab.http("POST", "/v1/apply", {"clients": clients, "policy": {"default": "deny", "rule": [{}]}})
    assert bad.status == 400 and "policy.rule[0]" in bad.body["error"]


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_policy_show_is_the_same_at_the_api_and_on_the_pop_host(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lab.cli(capsys, "policy", "show") == (0, "policy: 0 rules, default allow (no rule)\n", "")
    lab.http("PUT", "/v1/policy", {"default": "deny", "rule": [SSH_FROM_OPS, {"name": "any-icmp",
             "proto": "icmp", "action": "allow"}]})  # fmt: skip
    outputs = [lab.cli(capsys, "policy", "show", remote=remote) for remote in (True, False)]
    assert outputs[0] == outputs[1]
    code, out, err = outputs[0]
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "policy: 2 rules, default deny",
        "RULE  NAME          ACTION  PROTO  PORTS  FROM       TO",
        "1     ssh-from-ops  allow   tcp    22     group:ops  group:frontend",
        "2     any-icmp      allow   icmp   -      any        any",
    ]
    code, out, _ = lab.cli(capsys, "policy", "show", "--json", remote=False)
    assert json.loads(out)["rule"][0] == SSH_FROM_OPS


def test_cli_policy_trace_prints_the_lines_and_exits_0_either_way(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    _regroup(lab, "db", ["ops"])
    lab.http("PUT", "/v1/policy", POLICY)
    for remote in (True, False):
        assert lab.cli(capsys, "policy", "trace", "db", "web", "tcp", "22", remote=remote) == (
            0,
            "flow: db (groups: ops) -> web (groups: frontend), tcp/22\n"
            "rule 1 'ssh-from-ops' (allow): matches -> ALLOW\n",
            "",
        )
        code, out, err = lab.cli(capsys, "policy", "trace", "web", "db", "udp", "53", remote=remote)
        assert (code, err) == (0, "") and out.endswith("no rule matches -> default DENY\n")
    code, out, _ = lab.cli(capsys, "policy", "trace", "db", "web", "tcp", "22", "--json")
    assert json.loads(out)["rule"] == "ssh-from-ops"
    for argv, words in [
        (["db", "nobody", "tcp", "22"], "naas: no member or client 'nobody'\n"),
        (["db", "web", "sctp", "22"], "naas: proto: 'sctp' is not a protocol"),
        (["db", "web", "tcp", "ssh"], "naas: PORT: 'ssh' is not a port (1-65535)\n"),
        (["db", "web", "icmp", "--src-ip", "10.32.1.300"], "naas: src_ip: "),
    ]:
        for remote in (True, False):
            code, out, err = lab.cli(capsys, "policy", "trace", *argv, remote=remote)
            assert code == 2 and out == "" and err.startswith(words) and err.count("\n") == 1, (argv, err)


def test_cli_apply_and_clients_show_the_policy_and_allowed_addresses(
    lab: ApiLab, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CONFIG.replace('name = "db"\n', 'name = "db"\nallowed_addresses = ["192.168.50.0/24"]\n')
    lab.config_path.write_text(text + POLICY_TOML)
    expected = (
        "~ client db: allowed addresses [] -> [192.168.50.0/24]\n"
        "~ policy: 1 rule, default deny (was 0 rules, default allow): + rule ssh-from-ops\n"
    )
    assert lab.cli(capsys, "apply", "--dry-run", remote=False) == (
        0,
        expected + "dry run: nothing changed\n",
        "",
    )
    code, out, err = lab.cli(capsys, "apply", "--config", str(lab.config_path))
    assert code == 0 and out.startswith(expected) and "applied; network document version" in out, err
    assert lab.cli(capsys, "apply", remote=False) == (0, "no changes\n", "")
    code, out, _ = lab.cli(capsys, "clients")
    assert out.splitlines() == [
        "NAME  IP          GROUPS    ENROLLED  ALLOWED",
        "db    -           -         no        192.168.50.0/24",
        "web   10.32.1.10  frontend  no        -",
    ]
    code, out, err = lab.cli(capsys, "clients", "--create", "gw", "--allowed", "10.50.0.0/16, 10.51.0.0/16")
    assert code == 0 and ", allowed addresses 10.50.0.0/16,10.51.0.0/16)" in out, err
    lab.config_path.write_text(text)  # [policy] gone: the network is open again
    code, out, _ = lab.cli(capsys, "apply", "--json", remote=False)
    plan = json.loads(out)
    assert plan["policy_changed"] and plan["lines"][-1].startswith(
        "~ policy: 0 rules, default allow (was 1 rule"
    )
    assert plan["applied"] and lab.http("GET", "/v1/policy").body == {"default": "allow", "rule": []}
