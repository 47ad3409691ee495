"""Two PoPs on one PostgreSQL store, each in a namespace of its own, with real processes.

    onprem 10.100.1.0/24         aws 10.100.2.0/24         alibaba 10.100.3.0/24
      master .10 (naas pop)        slave .10 (naas pop)      store .10 (PostgreSQL 15)
      desktop .11, .100 and up           |                        |
         |  HTTPS :5641                  |  TCP :5432 (password)   |
         +-------- underlay router ------+------------------------+

The PoPs reach PostgreSQL over the underlay; the test process reads the store through
the cluster's unix socket (tests/pg.py). The enrollment requests come from desktop,
each round or client from an address of its own (.100 and up), so that the PoPs'
per-source failure limit (10 in a row) never answers 429 in place of a verdict. One lab,
one cluster and one `naas init` serve the three tests: the same invitation at both PoPs
at once (50 rounds), a PoP killed (SIGKILL) in the middle of many enrollments, and
PostgreSQL restarted under both PoPs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import requires_root
from naas.core.crypto import certificate_problem, ed25519_public, x25519_public
from naas.lab.netns import Lab, LabHost
from naas.lab.story import DEMO_SITES, DHCP_RANGE, NETWORK, POPS, SUBNET, Story
from naas.model.certificate import Certificate
from naas.model.codec import b64e, certificate_from_dict
from naas.model.ids import Endpoint
from naas.pop.client import EnrollmentResult, client_ssl_context, enroll
from naas.pop.invitations import ENROLL_PATH, Invitation, parse_url_untrusted
from naas.pop.store import PopStore
from pg import PostgresCluster, unavailable_reason

pytestmark = [pytest.mark.netns, requires_root]

HOSTS = {"master": "onprem", "desktop": "onprem", "slave": "aws", "store": "alibaba"}
ENROLLMENT_PORT = 5641
ROUNDS = 50  # test a: one invitation at both PoPs at once, this many times
RUSH = 40  # test b: enrollments running at the PoP that is killed
KILL_AFTER = 8  # ... once this many of them were answered
ROUND_CLIENTS = [f"round-{n:02d}" for n in range(ROUNDS)]
RUSH_CLIENTS = [f"rush-{n:02d}" for n in range(RUSH)]
LATE_CLIENTS = [f"late-{n}" for n in range(4)]  # test c
FIRST_SOURCE = 100  # desktop's extra addresses: .100 .. .199 of onprem
ROUND_SOURCES = [f"10.100.1.{FIRST_SOURCE + n}" for n in range(ROUNDS)]
RUSH_SOURCES = [f"10.100.1.{FIRST_SOURCE + ROUNDS + n}" for n in range(RUSH)]

Keys = tuple[bytes, bytes]  # (static, signing) public keys
Answer = tuple[int | None, dict[str, Any]]  # (HTTP status or None: no answer, JSON body)


@dataclass
class Mesh:
    lab: Lab
    story: Story
    cluster: PostgresCluster
    store: PopStore  # the test's own view of the store, through the unix socket
    ca_public: bytes

    @property
    def desktop(self) -> LabHost:
        return self.lab.host("desktop")

    def pops_running(self) -> None:
        """Start again whichever PoP an earlier test left dead."""
        for pop in POPS:
            process = self.story.pop_processes.get(pop)
            if process is None or process.poll() is not None:
                self.story.start_pop(pop)

    def invite(self, clients: list[str]) -> dict[str, Invitation]:
        """One `naas invite --json` for ``clients``: their parsed invitations."""
        urls = self.story.invite(*clients)
        return {client: parse_url_untrusted(url) for client, url in urls.items()}

    def pop(self, invitation: Invitation, name: str) -> tuple[Endpoint, str]:
        """The (endpoint, pin) of PoP ``name`` in ``invitation``."""
        address = str(self.lab.host(name).address)
        return next(pop for pop in invitation.pops if pop[0].host == address)

    def post(self, invitation: Invitation, pop: str, keys: Keys, source: str) -> Answer:
        """POST /v1/enroll of ``invitation`` at PoP ``pop`` from ``source`` (an address of the
        calling thread's namespace).

        The pin is not checked: the lab is ours. No answer at all (refused, reset, cut) is
        (None, {"error": why})."""
        endpoint, _pin = self.pop(invitation, pop)
        static_public, signing_public = (b64e(key) for key in keys)
        body = json.dumps(
            {
                "network": NETWORK,
                "token": invitation.token,
                "static_public": static_public,
                "signing_public": signing_public,
            }
        )
        connection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=30, context=client_ssl_context(), source_address=(source, 0)
        )
        try:
            connection.request("POST", ENROLL_PATH, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return None, {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            connection.close()


def _config_text(lab: Lab) -> str:
    lines = [
        "[network]",
        f'name = "{NETWORK}"',
        "mesh_port = 5640",
        f"enrollment_port = {ENROLLMENT_PORT}",
        f'subnet = "{SUBNET}"',
        f'dhcp_range = "{DHCP_RANGE}"',
    ]
    for pop in POPS:
        lines += ["", "[[pop]]", f'name = "{pop}"', f'address = "{lab.host(pop).address}"']
    for client in ROUND_CLIENTS + RUSH_CLIENTS + LATE_CLIENTS:
        lines += ["", "[[client]]", f'name = "{client}"']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    """The lab, PostgreSQL in ``store``, `naas init --store`, both PoPs running."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with contextlib.ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="naas-e2e-pg-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        lab = Lab(hosts=HOSTS, sites=DEMO_SITES)
        cleanup.callback(lab.close)
        lab.start()
        store_host = lab.host("store")
        cluster = PostgresCluster(host=str(store_host.address), namespace=store_host)
        cleanup.callback(cluster.close)
        cluster.start()
        story = Story(lab, workdir)
        cleanup.callback(story.close)
        story.store_url = cluster.url()
        story.config_path.write_text(_config_text(lab))
        story.init()
        for pop in POPS:
            story.start_pop(pop)
        sources = "".join(f"address add {source}/24 dev eth0\n" for source in ROUND_SOURCES + RUSH_SOURCES)
        lab.host("desktop").run(["ip", "-batch", "-"], input=sources, check=True)
        store = cleanup.enter_context(PopStore(cluster.socket_url()))
        ca_public = (story.state_dir("master") / NETWORK / "ca.pub").read_bytes()
        yield Mesh(lab, story, cluster, store, ca_public)


# -- the client side -------------------------------------------------------------------------


def _keys(label: str) -> Keys:
    seed = hashlib.sha256(label.encode()).digest()
    return x25519_public(seed), ed25519_public(seed)


class Running:
    """Calls running in threads inside ``host``'s namespace, started together (a barrier)."""

    def __init__(self, host: LabHost, calls: Sequence[Callable[[], Any]]) -> None:
        self.results: list[list[Any]] = [[] for _ in calls]  # [result or exception] once done
        start = threading.Barrier(len(calls))

        def run(call: Callable[[], Any], result: list[Any]) -> None:
            with host.entered():
                start.wait()
                try:
                    result.append(call())
                except Exception as exc:
                    result.append(exc)

        pairs = zip(calls, self.results, strict=True)
        self.threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in pairs]
        for thread in self.threads:
            thread.start()

    def done(self) -> list[Any]:
        """The results so far."""
        return [result[0] for result in self.results if result]

    def join(self, timeout: float = 60) -> list[Any]:
        """Every result, in the order of the calls."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), "an enrollment thread hangs"
        return [result[0] for result in self.results]


def _answer_cert(answer: dict[str, Any]) -> Certificate:
    return certificate_from_dict(answer["certificate"])


# -- what the store must hold whatever happened ----------------------------------------------


def _check_store(mesh: Mesh) -> dict[str, Certificate]:
    """Every member is whole and CA-signed, every used invitation has its member and every
    client member its used invitation, no node id or address twice. Returns the clients
    by name."""
    now = time.time()
    members = mesh.store.members()  # parses every row: a torn row would raise here
    for cert in members:
        assert certificate_problem(cert, mesh.ca_public, NETWORK, now) is None, cert.name
    clients = {cert.name: cert for cert in members if not cert.is_pop}
    assert len(clients) == len(members) - len(POPS)
    node_ids = [cert.node_id for cert in members]
    addresses = [cert.ip for cert in members if cert.ip is not None]
    assert len(set(node_ids)) == len(node_ids), sorted(node_ids)
    assert len(set(addresses)) == len(addresses), sorted(map(str, addresses))
    assert all(cert.ip is not None for cert in clients.values())
    used = {(r.client_name, r.node_id) for r in mesh.store.invitations() if r.used_at is not None}
    assert used == {(name, cert.node_id) for name, cert in clients.items()}
    return clients


# -- the tests ----------------------------------------------------------------------------------


def test_one_invitation_at_both_pops_at_once_is_redeemed_once(mesh: Mesh) -> None:
    mesh.pops_running()
    invitations = mesh.invite(ROUND_CLIENTS)
    assert sorted(invitations) == ROUND_CLIENTS
    for client, source in zip(ROUND_CLIENTS, ROUND_SOURCES, strict=True):
        invitation = invitations[client]
        keys = {pop: _keys(f"{client}/{pop}") for pop in POPS}
        calls = [partial(mesh.post, invitation, pop, keys[pop], source) for pop in POPS]
        answers: dict[str, Answer] = dict(zip(POPS, Running(mesh.desktop, calls).join(), strict=True))
        statuses = sorted(status or 0 for status, _ in answers.values())
        assert statuses == [200, 403], (client, answers)
        winner = next(pop for pop, (status, _) in answers.items() if status == 200)
        loser = next(pop for pop in POPS if pop != winner)
        assert answers[loser][1] == {"error": "invitation already used"}
        cert = _answer_cert(answers[winner][1])
        assert (cert.name, (cert.static_public, cert.signing_public)) == (client, keys[winner])
        assert mesh.store.member(client) == cert
    clients = _check_store(mesh)
    assert set(ROUND_CLIENTS) <= set(clients)
    used = [r for r in mesh.store.invitations() if r.client_name in ROUND_CLIENTS]
    assert len(used) == ROUNDS and all(r.used_at is not None for r in used)
    assert {r.used_by_pop for r in used} <= set(POPS)


def test_a_pop_killed_in_the_middle_of_enrollments_leaves_no_half_member(mesh: Mesh) -> None:
    mesh.pops_running()
    invitations = mesh.invite(RUSH_CLIENTS)
    keys = {client: _keys(f"{client}/rush") for client in RUSH_CLIENTS}
    slave = mesh.story.pop_processes["slave"]
    rush = Running(
        mesh.desktop,
        [
            partial(mesh.post, invitations[client], "slave", keys[client], source)
            for client, source in zip(RUSH_CLIENTS, RUSH_SOURCES, strict=True)
        ],
    )
    deadline = time.monotonic() + 30
    while sum(1 for status, _ in rush.done() if status == 200) < KILL_AFTER:
        assert time.monotonic() < deadline, rush.done()
        time.sleep(0.005)
    os.kill(slave.pid, signal.SIGKILL)
    assert slave.wait(10) == -signal.SIGKILL
    answers: dict[str, Answer] = dict(zip(RUSH_CLIENTS, rush.join(), strict=True))
    enrolled = {client: _answer_cert(body) for client, (status, body) in answers.items() if status == 200}
    failed = [client for client, (status, _) in answers.items() if status != 200]
    assert all(status is None for client, (status, _) in answers.items() if client in failed), answers
    assert len(enrolled) >= KILL_AFTER and failed, "the PoP was killed while enrollments ran"

    # Whatever the kill cut, the store is whole; an answered enrollment is stored as answered.
    clients = _check_store(mesh)
    for client, cert in enrolled.items():
        assert clients[client] == cert and cert.signature == clients[client].signature
    committed = {client: clients[client] for client in failed if client in clients}  # answers lost

    # Restarted, the PoP enrolls everyone who got no answer, one after the other (they share
    # desktop's address): the same invitation, the same keys, the real client; whose
    # enrollment was committed gets its certificate again.
    mesh.story.start_pop("slave")

    def retry(client: str) -> EnrollmentResult | Exception:
        invitation = invitations[client]
        at_slave = Invitation(NETWORK, invitation.token, (mesh.pop(invitation, "slave"),))
        try:
            return enroll(at_slave, *keys[client], attempts=1)
        except Exception as exc:
            return exc

    (retries,) = Running(mesh.desktop, [lambda: {client: retry(client) for client in failed}]).join()
    for client, result in retries.items():
        assert isinstance(result, EnrollmentResult), (client, result)
        cert = result.certificate
        assert (cert.name, (cert.static_public, cert.signing_public)) == (client, keys[client])
        if client in committed:
            assert cert == committed[client] and cert.signature == committed[client].signature
    clients = _check_store(mesh)
    assert set(RUSH_CLIENTS) <= set(clients)
    assert {client: clients[client] for client in failed} == {
        client: result.certificate for client, result in retries.items()
    }


def test_pops_enroll_right_after_postgresql_restarted(mesh: Mesh) -> None:
    mesh.pops_running()
    invitations = mesh.invite(LATE_CLIENTS)
    source = str(mesh.desktop.address)

    def enroll_at(client: str, pop: str) -> Answer:
        call = partial(mesh.post, invitations[client], pop, _keys(client), source)
        answer: Answer = Running(mesh.desktop, [call]).join()[0]
        return answer

    # Both PoPs hold pooled connections that just worked ...
    for client, pop in zip(LATE_CLIENTS[:2], POPS, strict=True):
        assert enroll_at(client, pop)[0] == 200
    before = {pop: mesh.story.pop_processes[pop].pid for pop in POPS}
    mesh.cluster.restart()  # ... and that the restart cuts
    for client, pop in zip(LATE_CLIENTS[2:], POPS, strict=True):
        status, body = enroll_at(client, pop)
        assert status == 200, (pop, body)
        assert mesh.store.member(client) == _answer_cert(body)
    assert {pop: process.pid for pop, process in mesh.story.pop_processes.items()} == before
    assert all(process.poll() is None for process in mesh.story.pop_processes.values())
    assert set(LATE_CLIENTS) <= set(_check_store(mesh))
