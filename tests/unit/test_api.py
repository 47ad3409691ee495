"""The REST API over real HTTPS, and the admin CLI at it with --api.

A network made as `naas init` makes it (control/setup.py: CA, PoP identities and TLS
keys, SQLite store, clients web and db, document 1); PoP master's enrollment service
with the API mounted, on 127.0.0.1 in a background loop; the CLI in this process::

    test / CLI (--api https://127.0.0.1:PORT --pin P --token T) --TLS--> master  -- pop.db
    CLI on the "PoP host" (--config --state-dir --store) ------------------------/
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_enrollment_http import LoopThread, _keys

from naas.cli.main import run
from naas.control import members
from naas.control.network import PopNetwork
from naas.control.setup import make_network
from naas.core.topology import MemberView, Reach, Topology
from naas.daemon.state import network_dir, pop_node_dir
from naas.model.certificate import Certificate
from naas.model.config import load_config
from naas.model.ids import Endpoint
from naas.pop.api import ROUTES, RestApi, api_document
from naas.pop.client import enroll
from naas.pop.invitations import Invitation, parse_url_untrusted, token_hash
from naas.pop.limits import EnrollmentLimits
from naas.pop.server import EnrollmentService
from naas.pop.store import PopStore, sqlite_url

CONFIG = """
[network]
name = "acme"
subnet = "10.32.0.0/16"

[[pop]]
name = "master"
address = "10.0.0.1"

[[pop]]
name = "slave"
address = "10.0.0.2"

[[client]]
name = "web"
ip = "10.32.1.10"
groups = ["frontend"]

[[client]]
name = "db"
"""
JSON = "application/json"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class ApiLab:
    net: PopNetwork
    store: PopStore
    port: int
    pin: str
    admin: str  # tokens
    reader: str
    config_path: Path
    state_dir: Path
    service: EnrollmentService
    loop: LoopThread
    view: list[Topology | None]  # what the PoP's agent answers, [0]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "admin",
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> Answer:
        """One HTTPS request; ``token``: "admin", "read", a literal token, or None."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {dict(admin=self.admin, read=self.reader).get(token, token)}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", JSON)
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=10, source_address=(source, 0)
        )
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), json.loads(response.read()))
        finally:
            connection.close()

    def invitation(self, client: str) -> Invitation:
        """A new invitation for ``client`` from the API, pointed at this test's port."""
        answer = self.http("POST", "/v1/invitations", {"client": client})
        assert answer.status == 201, answer
        parsed = parse_url_untrusted(answer.body["url"])
        ((endpoint, pin), *_) = parsed.pops
        assert (endpoint, pin) == (Endpoint("10.0.0.1", 5641), self.pin)  # the URL names master, pinned
        return Invitation(parsed.network, parsed.token, ((Endpoint("127.0.0.1", self.port), pin),))

    def enroll(self, client: str) -> Certificate:
        return enroll(self.invitation(client), *_keys(), attempts=1).certificate

    def cli(
        self, capsys: pytest.CaptureFixture[str], *argv: str, remote: bool = True
    ) -> tuple[int, str, str]:
        where = (
            ["--api", self.url, "--token", self.admin, "--pin", self.pin] if remote else self.local_options
        )
        code = run([*argv, *where])
        out, err = capsys.readouterr()
        return code, out, err

    @property
    def local_options(self) -> list[str]:
        store = sqlite_url(self.state_dir.parent / "pop.db")
        return ["--config", str(self.config_path), "--state-dir", str(self.state_dir), "--store", store]


@contextmanager
def open_api_lab(path: Path, limits: EnrollmentLimits | None = None) -> Iterator[ApiLab]:
    """The network of CONFIG made in ``path``, PoP master serving enrollment and the API."""
    config_path = path / "naas.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    state = path / "state"
    store = PopStore(sqlite_url(path / "pop.db"))
    store.create_schema()
    info, _ = make_network(config, state, store)
    net_dir = network_dir(state, "acme")
    net = PopNetwork(config, store, net_dir, (net_dir / "ca.key").read_bytes(), known_info=info)
    admin, reader = members.create_token(net, "ops", "admin"), members.create_token(net, "viewer", "read")
    view: list[Topology | None] = [None]
    service = EnrollmentService(net, "master", on_enrolled=lambda _cert: None, limits=limits)
    service.api = RestApi(net, "master", agent_view=lambda: _agent_view(view))
    node = pop_node_dir(state, "acme", "master").path
    loop = LoopThread()
    try:
        port = loop.serve(service, node / "tls.crt", node / "tls.key")
        yield ApiLab(
            net, store, port, info.pops[0].tls_pin, admin, reader, config_path, state, service, loop, view
        )
    finally:
        loop.close()
        store.close()


def _agent_view(view: list[Topology | None]) -> Topology:
    if view[0] is None:
        raise RuntimeError("the agent is not running")  # as Agent.topology() before start
    return view[0]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ApiLab]:
    with open_api_lab(tmp_path) as opened:
        yield opened


# -- the document -----------------------------------------------------------------------------


def test_openapi_document_lists_every_route_the_server_has(lab: ApiLab) -> None:
    answer = lab.http("GET", "/v1/openapi.json", token=None)
    assert answer.status == 200 and answer.body == api_document()
    document = answer.body
    assert document["openapi"] == "3.1.0"
    mounted = {  # by RestApi; the enrollment service's own routes are in docs/protocol.md
        (route.method, route.resource.canonical)
        for route in lab.loop.runners[0].app.router.routes()
        if route.resource is not None and isinstance(route.handler, functools.partial)
    }
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert documented == mounted | {("GET", "/v1/health")} and len(mounted) == len(ROUTES) - 1
    schemas = document["components"]["schemas"]
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.operation and operation["x-naas-role"] == route.role
        answer_ref = operation["responses"][str(route.status)]["content"][JSON]["schema"]["$ref"]
        assert answer_ref == f"#/components/schemas/{route.answer.__name__}"
        if route.body is not None:
            body_ref = operation["requestBody"]["content"][JSON]["schema"]["$ref"]
            assert schemas[body_ref.rsplit("/", 1)[1]]["additionalProperties"] is False
        assert bool(operation["security"]) == (route.role != "public")
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas, f"dangling $ref {ref}"
    assert "$defs" not in text


def test_health_needs_no_token(lab: ApiLab) -> None:
    answer = lab.http("GET", "/v1/health", token=None)
    assert (answer.status, answer.body) == (200, {"status": "ok", "network": "acme", "pop": "master"})


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (None, "missing Authorization"),
        ("naas_not-a-real-token", "not valid"),
        ("", "missing"),
        ("x", "not valid"),
    ],
)
def test_no_or_unknown_token_is_401(lab: ApiLab, token: str | None, words: str) -> None:
    answer = lab.http("GET", "/v1/clients", token=token)
    assert answer.status == 401 and words in answer.body["error"]
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_read_token_reads_and_may_not_write(lab: ApiLab) -> None:
    assert lab.http("GET", "/v1/clients", token="read").status == 200
    for method, path, body in [
        ("POST", "/v1/clients", {"name": "kiosk"}),
        ("POST", "/v1/members/web/revoke", None),
        ("POST", "/v1/apply", {"clients": []}),
    ]:
        answer = lab.http(method, path, body, token="read")
        assert answer.status == 403 and "a read token may not" in answer.body["error"]
    assert lab.store.client("kiosk") is None and len(lab.store.clients()) == 2


def test_failed_auth_spends_the_enrollment_limiters_credits(lab: ApiLab) -> None:
    for _ in range(10):  # the burst, from 127.0.0.2 only
        assert lab.http("GET", "/v1/clients", token="naas_wrong", source="127.0.0.2").status == 401
    limited = lab.http("GET", "/v1/clients", source="127.0.0.2")  # even with a good token, now
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert lab.http("GET", "/v1/clients").status == 200  # other sources are not affected
    assert lab.http("GET", "/v1/health", token=None, source="127.0.0.2").status == 200


def test_the_token_is_never_logged(lab: ApiLab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lab.http("GET", "/v1/clients")
    lab.http("POST", "/v1/clients", {"name": "kiosk"})
    lab.http("POST", "/v1/clients", {"name": "kiosk"}, token="read")
    lab.http("POST", "/v1/clients", raw=b"{not json")
    lab.http("GET", "/v1/clients", token=lab.admin + "x")
    assert "operation=create_client path=/v1/clients status=201 role=admin pop=master" in caplog.text
    for secret in (lab.admin, lab.reader, token_hash(lab.admin), lab.admin.removeprefix("naas_")):
        assert secret not in caplog.text


# -- clients and invitations ------------------------------------------------------------------


def test_a_created_client_is_listed_and_can_be_invited(lab: ApiLab) -> None:
    created = lab.http(
        "POST", "/v1/clients",
        {"name": "kiosk", "ip": "10.32.9.9", "groups": ["b", "a"], "allowed_addresses": ["192.168.7.0/24"]},
    )  # fmt: skip
    assert created.status == 201
    assert created.body == {
        "name": "kiosk", "ip": "10.32.9.9", "groups": ["a", "b"], "allowed_addresses": ["192.168.7.0/24"],
        "created_at": created.body["created_at"], "enrolled": False,
    }  # fmt: skip
    listed = lab.http("GET", "/v1/clients", token="read").body["clients"]
    assert [c["name"] for c in listed] == ["db", "kiosk", "web"]
    assert lab.http("GET", "/v1/clients/kiosk").body == created.body
    again = lab.http("POST", "/v1/clients", {"name": "kiosk"})
    assert (again.status, again.body) == (409, {"error": "client 'kiosk' exists"})
    taken = lab.http("POST", "/v1/clients", {"name": "other", "ip": "10.32.9.9"})
    assert taken.status == 409 and "taken by client 'kiosk'" in taken.body["error"]
    cert = lab.enroll("kiosk")
    assert (cert.name, str(cert.ip.ip) if cert.ip else None, cert.groups) == (
        "kiosk",
        "10.32.9.9",
        ("a", "b"),
    )
    assert lab.http("GET", "/v1/clients/kiosk").body["enrolled"] is True


def test_invitations_are_listed_without_tokens_and_cancelled(lab: ApiLab) -> None:
    issued = lab.http("POST", "/v1/invitations", {"client": "db", "ttl_seconds": 3600})
    assert issued.status == 201 and len(issued.body["id"]) == 16
    token = parse_url_untrusted(issued.body["url"]).token
    lab.enroll("web")
    listing = lab.http("GET", "/v1/invitations", token="read")
    assert token not in json.dumps(listing.body) and token_hash(token) not in json.dumps(listing.body)
    states = {row["client"]: row for row in listing.body["invitations"]}
    assert states["db"]["state"] == "unused" and states["db"]["id"] == issued.body["id"]
    assert states["web"]["state"] == "used" and states["web"]["used_by_pop"] == "master"
    used = lab.http("DELETE", f"/v1/invitations/{states['web']['id']}")
    assert used.status == 409 and "was used by 'web'" in used.body["error"]
    assert lab.http("DELETE", f"/v1/invitations/{issued.body['id']}").body == {"id": issued.body["id"]}
    assert lab.http("DELETE", f"/v1/invitations/{issued.body['id']}").status == 404
    assert [row["client"] for row in lab.http("GET", "/v1/invitations").body["invitations"]] == ["web"]
    unknown = lab.http("POST", "/v1/invitations", {"client": "nobody"})
    assert unknown.status == 404 and "no client named 'nobody'" in unknown.body["error"]


def test_deleting_an_enrolled_client_revokes_its_member(lab: ApiLab) -> None:
    cert = lab.enroll("web")
    before = lab.store.document_version()
    answer = lab.http("DELETE", "/v1/clients/web")
    assert answer.body == {"name": "web", "revoked_node_id": cert.node_id, "document_version": before + 1}
    assert lab.store.client("web") is None and lab.store.member("web") is None
    assert lab.http("GET", "/v1/clients/web").status == 404


# -- members, groups, revocation, the document -------------------------------------------------


def test_revoke_makes_a_new_document_and_the_member_leaves_the_list(lab: ApiLab) -> None:
    cert = lab.enroll("web")
    names = [m["name"] for m in lab.http("GET", "/v1/members", token="read").body["members"]]
    assert names == ["master", "slave", "web"]
    before = lab.store.document_version()
    answer = lab.http("POST", "/v1/members/web/revoke")
    assert answer.status == 200
    assert answer.body == {"name": "web", "node_id": cert.node_id, "document_version": before + 1}
    assert lab.store.document_version() == before + 1
    listing = lab.http("GET", "/v1/members").body
    assert [m["name"] for m in listing["members"]] == ["master", "slave"]
    assert listing["revoked"] == [{"node_id": cert.node_id, "name": "web", "until": cert.not_after}]
    assert listing["document_version"] == before + 1
    document = lab.http("GET", "/v1/document").body
    assert document["version"] == before + 1
    assert document["document"]["sections"]["revoked"][0]["node"] == cert.node_id
    gone = lab.http("GET", "/v1/members/web")
    assert (gone.status, gone.body) == (404, {"error": "member 'web' is revoked"})
    assert lab.http("POST", "/v1/members/web/revoke").status == 409
    pop = lab.http("POST", "/v1/members/master/revoke")
    assert pop.status == 409 and "is a PoP" in pop.body["error"]
    assert lab.http("POST", "/v1/members/nobody/revoke").status == 404


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_changed_groups_make_a_document_that_lists_them(lab: ApiLab, method: str) -> None:
    cert = lab.enroll("db")
    before = lab.store.document_version()
    answer = lab.http(method, "/v1/members/db/groups", {"groups": ["ops", "backend"]})
    assert answer.body == {"name": "db", "groups": ["backend", "ops"], "document_version": before + 1}
    document = lab.http("GET", "/v1/document", token="read").body
    assert document["document"]["sections"]["groups"] == {str(cert.node_id): ["backend", "ops"]}
    assert lab.http("GET", "/v1/members/db").body["groups"] == ["backend", "ops"]
    assert lab.http("GET", "/v1/clients/db").body["groups"] == ["backend", "ops"]
    pop = lab.http(method, "/v1/members/master/groups", {"groups": []})
    assert pop.status == 409 and "PoP" in pop.body["error"]
    assert lab.http(method, "/v1/members/nobody/groups", {"groups": []}).status == 404


def test_members_show_what_the_pops_agent_sees(lab: ApiLab) -> None:
    cert = lab.enroll("web")
    master = lab.store.member("master")
    assert master is not None
    assert {m["reach"] for m in lab.http("GET", "/v1/members").body["members"]} == {None}  # no agent
    lab.view[0] = Topology(
        network="acme",
        local=master.node_id,
        mtu=1400,
        members=(
            MemberView(master.node_id, "master", True, "10.32.0.1", "02:00:00:00:00:01", Reach.SELF),
            MemberView(
                cert.node_id, "web", False, "10.32.1.10", "02:00:00:00:00:03", Reach.DIRECT,
                endpoint="198.51.100.7:5640", rtt_ms=1.5, document_version=1,
            ),
        ),
        links=(),
        document_version=1,
    )  # fmt: skip
    listing = lab.http("GET", "/v1/members").body
    rows = {m["name"]: m for m in listing["members"]}
    assert (rows["master"]["reach"], rows["slave"]["reach"]) == ("self", None)
    assert rows["web"] == {
        "name": "web", "node_id": cert.node_id, "ip": "10.32.1.10", "groups": ["frontend"], "is_pop": False,
        "not_after": cert.not_after, "reach": "direct", "rtt_ms": 1.5, "endpoint": "198.51.100.7:5640",
        "document_version": 1,
    }  # fmt: skip
    assert listing["agent_document_version"] == 1
    assert lab.http("GET", "/v1/members/web").body == rows["web"]


# -- apply ------------------------------------------------------------------------------------


def _apply_body(**extra: Any) -> dict[str, Any]:
    clients = [
        {"name": "web", "ip": "10.32.1.10", "groups": ["frontend"]},
        {"name": "db", "groups": ["backend"]},
        {"name": "kiosk"},
    ]
    return {"clients": clients, **extra}


def test_apply_dry_run_then_apply_then_nothing_to_do(lab: ApiLab) -> None:
    before = lab.store.document_version()
    dry = lab.http("POST", "/v1/apply", _apply_body(dry_run=True)).body
    assert (dry["added"], dry["changed"], dry["applied"]) == (["kiosk"], ["db"], False)
    assert "+ client kiosk" in dry["lines"] and lab.store.client("kiosk") is None
    done = lab.http("POST", "/v1/apply", _apply_body()).body
    assert done["applied"] is True and lab.store.client("kiosk") is not None
    assert lab.store.client("db").groups == ("backend",)  # type: ignore[union-attr]
    assert done["document_version"] == lab.store.document_version() >= before
    again = lab.http("POST", "/v1/apply", _apply_body()).body
    assert (again["added"], again["changed"], again["removed"], again["applied"]) == ([], [], [], False)
    pruned = lab.http("POST", "/v1/apply", {"clients": [{"name": "web"}], "prune": True}).body
    assert sorted(pruned["removed"]) == ["db", "kiosk"] and [c.name for c in lab.store.clients()] == ["web"]


def test_apply_refuses_changed_fixed_settings_and_bad_clients(lab: ApiLab) -> None:
    settings = {"name": "acme", "subnet": "10.32.0.0/16", "mesh_port": 5640}
    assert lab.http("POST", "/v1/apply", _apply_body(settings=settings, dry_run=True)).status == 200
    for changed, words in [
        ({"subnet": "10.9.0.0/16"}, "settings: network.subnet: cannot change under a live network"),
        ({"mesh_port": 6000}, "settings: network.mesh_port"),
        ({"name": "other"}, "settings: network.name"),
        ({"pops": [{"name": "master", "address": "10.0.0.1"}]}, "settings: pop: the PoPs cannot change"),
    ]:
        answer = lab.http("POST", "/v1/apply", _apply_body(settings={**settings, **changed}))
        assert answer.status == 400 and words in answer.body["error"], answer
    assert lab.store.client("kiosk") is None
    for clients, status, words in [
        ([{"name": "a"}, {"name": "a"}], 400, "a name is given twice"),
        ([{"name": "master"}], 409, "'master' is a PoP"),
        ([{"name": "a", "ip": "10.32.5.5"}, {"name": "b", "ip": "10.32.5.5"}], 400, "given to two"),
        ([{"name": "a", "ip": "10.32.0.1"}], 409, "taken by master"),
        ([{"name": "a", "ip": "10.0.0.9"}], 400, "not a host address of subnet"),
    ]:
        answer = lab.http("POST", "/v1/apply", {"clients": clients})
        assert (answer.status, words in answer.body["error"]) == (status, True), answer
    assert len(lab.store.clients()) == 2


def test_apply_of_many_clients_may_exceed_the_usual_body_limit(lab: ApiLab) -> None:
    clients = [{"name": f"client-number-{i:04d}", "groups": ["fleet", "edge"]} for i in range(400)]
    body = json.dumps({"clients": clients, "dry_run": True}).encode()
    assert len(body) > 16 * 1024
    answer = lab.http("POST", "/v1/apply", raw=body)
    assert answer.status == 200 and len(answer.body["added"]) == 400
    too_many = lab.http("POST", "/v1/apply", {"clients": [{"name": "x"}] * 4097})
    assert too_many.status == 400 and "clients: List should have at most 4096 items" in too_many.body["error"]


# -- errors -----------------------------------------------------------------------------------


CLIENTS, INVITATIONS, APPLY = "/v1/clients", "/v1/invitations", "/v1/apply"


@pytest.mark.parametrize(
    ("path", "raw", "words"),
    [
        (CLIENTS, b"{not json", "body is not JSON"),
        (CLIENTS, b"[" * 15_000, "body is not JSON"),
        (CLIENTS, b"\xff\xfe", "body is not JSON"),
        (CLIENTS, b"", "body is not JSON"),
        (CLIENTS, b"[]", "body: Input should be an object"),
        (CLIENTS, b'{"name": 7}', "name: Input should be a valid string"),
        (CLIENTS, b'{"name": "Web"}', "name: String should match pattern"),
        (CLIENTS, b'{"name": "a\\nb"}', "name: String should match pattern"),
        (CLIENTS, b'{"name": "a", "ip": "300.1.1.1"}', "ip: "),
        (CLIENTS, b'{"name": "a", "groups": ["x", 1]}', "groups[1]: "),
        (CLIENTS, b'{"name": "a", "owner": "me"}', "owner: Extra inputs are not permitted"),
        (INVITATIONS, b'{"client": "web", "ttl_seconds": "5"}', "ttl_seconds: Input should"),
        (INVITATIONS, b'{"client": "web", "ttl_seconds": 1e999}', "ttl_seconds"),
        (INVITATIONS, b'{"client": "web", "ttl_seconds": 99999999999}', "ttl_seconds"),
        (APPLY, b'{"clients": [{"name": "a"}], "prune": "yes"}', "prune: Input should"),
        (APPLY, b'{"clients": {"name": "a"}}', "clients: Input should be a valid array"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_field(
    lab: ApiLab, caplog: pytest.LogCaptureFixture, path: str, raw: bytes, words: str
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = lab.http("POST", path, raw=raw)
    assert answer.status == 400 and words in answer.body["error"], answer
    assert list(answer.body) == ["error"] and "\n" not in answer.body["error"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("GET", "/v1/clients/UPPER", 400, "name: String should match pattern"),
        ("GET", "/v1/clients/nobody", 404, "no client 'nobody'"),
        ("DELETE", "/v1/invitations/xyz", 400, "id: String should match pattern"),
        ("GET", "/v1/nothing-here", 404, "no such resource"),
        ("DELETE", "/v1/document", 405, "DELETE is not allowed here"),
    ],
)
def test_errors_of_paths_and_methods_are_json_too(
    lab: ApiLab, method: str, path: str, status: int, words: str
) -> None:
    answer = lab.http(method, path)
    assert answer.status == status and words in answer.body["error"], answer


def test_a_body_must_be_json_and_small(lab: ApiLab) -> None:
    plain = lab.http("POST", "/v1/clients", raw=b'{"name": "a"}', headers={"Content-Type": "text/plain"})
    assert plain.status == 415 and "application/json" in plain.body["error"]
    assert lab.http("DELETE", "/v1/document").headers["Allow"] == "GET"
    for path, size in [("/v1/clients", 16 * 1024 + 1), ("/v1/apply", 512 * 1024 + 1)]:
        status, answer = _headers_only(lab, "POST", path, size)
        assert status == 413 and "larger than" in answer["error"]
    assert lab.store.client("a") is None


def _headers_only(lab: ApiLab, method: str, path: str, length: int) -> tuple[int, dict[str, Any]]:
    """A request announcing ``length`` bytes of body and sending none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", lab.port, context=context, timeout=10)
    try:
        connection.putrequest(method, path)
        for name, value in [("Authorization", f"Bearer {lab.admin}"), ("Content-Type", JSON)]:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
