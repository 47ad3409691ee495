"""A PoP in a process of its own (uvloop, as ``naas pop`` runs it), killed with SIGKILL
in the middle of an enrollment, or held to 1,024 file descriptors:

    client --(1) POST--> child PoP "master": COMMIT, then hangs: SIGKILL, no answer
           --(2) POST--> slave (in this process), same store: same certificate, 200

    127.0.0.2 --1100 idle TCP connections--> child PoP (RLIMIT_NOFILE 1024)
    127.0.0.1 --enroll---------------------> child PoP: 200

(The child holds ~30 descriptors of its own, the real PoP more (TAP, UDP, control
socket): 1,100 connections are what makes the code before the connection cap fail here,
"EOF occurred in violation of protocol" at the 1,024th descriptor.)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_enrollment_http import CA_PRIVATE, CONFIG, NOW, Lab, _keys, open_lab

from naas.model.ids import Endpoint
from naas.pop.client import EnrollmentError, EnrollmentResult, enroll
from naas.pop.invitations import Invitation
from naas.pop.limits import MAX_CONNECTIONS_PER_SOURCE
from naas.pop.store import sqlite_url
from naas.pop.tls import make_tls_material, write_tls_material

CHILD = """
import asyncio, pickle, sys, time
import uvloop
from naas.control.network import PopNetwork
from naas.pop.server import EnrollmentService, start_enrollment_site
from naas.pop.tls import server_ssl_context
from naas.pop.store import PopStore

args = pickle.loads(open(sys.argv[1], "rb").read())

def enrolled(cert):
    if args["hang_after_commit"]:
        time.sleep(600)  # committed; the answer is never sent

async def main():
    net = PopNetwork(
        args["config"], PopStore(args["store"]), None, args["ca_private"],
        clock=lambda: args["now"], known_info=args["info"],
    )
    service = EnrollmentService(net, "master", enrolled)
    context = server_ssl_context(args["cert"], args["key"])
    runner, port = await start_enrollment_site(service, "127.0.0.1", 0, context)
    print(port, flush=True)
    await asyncio.sleep(600)

uvloop.run(main())
"""


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    endpoint: Endpoint
    pin: str


@contextmanager
def spawn_pop(lab: Lab, *, hang_after_commit: bool = False, nofile: int | None = None) -> Iterator[Child]:
    """PoP "master" of the lab's network and store, in a child process."""
    tls = make_tls_material("child")
    cert, key = lab.path / "child.crt", lab.path / "child.key"
    write_tls_material(tls, cert, key)
    args = {
        "config": CONFIG,
        "store": sqlite_url(lab.path / "pop.db"),
        "ca_private": CA_PRIVATE,
        "info": lab.info,
        "now": NOW,
        "cert": cert,
        "key": key,
        "hang_after_commit": hang_after_commit,
    }
    args_path = lab.path / "child.pickle"
    args_path.write_bytes(pickle.dumps(args))

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with (lab.path / "child.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(args_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=limit,
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            pytest.fail(f"child PoP did not start: {(lab.path / 'child.log').read_text()[-2000:]}")
        yield Child(process, Endpoint("127.0.0.1", int(line)), tls.pin)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _in_thread(call: Callable[[], EnrollmentResult]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_pop_killed_between_commit_and_answer_the_retry_gets_the_same_certificate(tmp_path: Path) -> None:
    with open_lab(tmp_path) as lab, spawn_pop(lab, hang_after_commit=True) as child:
        token = lab.invite("web")
        static_public, signing_public = _keys()
        pops = ((child.endpoint, child.pin), (lab.slave.endpoint, lab.slave.tls.pin))
        lines: list[str] = []
        thread, outcome = _in_thread(
            lambda: enroll(
                Invitation("acme", token, pops), static_public, signing_public, notify=lines.append
            )
        )
        deadline = time.monotonic() + 20
        while lab.store.invitations()[0].used_at is None:  # committed by the child
            assert time.monotonic() < deadline, "the child never committed"
            time.sleep(0.02)
        os.kill(child.process.pid, signal.SIGKILL)
        assert child.process.wait(10) == -signal.SIGKILL
        thread.join(30)
        assert not thread.is_alive()
        result = outcome.get("result")
        assert isinstance(result, EnrollmentResult), outcome
        stored = lab.store.member("web")
        assert result.certificate == stored and stored is not None
        assert result.certificate.signature == stored.signature and result.pop == lab.slave.endpoint
        assert lab.store.invitations()[0].used_by_pop == "master"
        assert (lab.slave.service.enrolled, lab.slave.service.enrolled_again) == (0, 1)
        assert lab.slave.enrolled == [stored], "the answering PoP tells its mesh too"
        (line,) = lines
        assert line.startswith(f"enrollment: PoP {child.endpoint}: ") and "trying PoP 127.0.0.1:" in line
        assert token not in line
        # Someone else with the URL (other keys) is still refused.
        with pytest.raises(EnrollmentError, match="invitation already used"):
            enroll(lab.invitation(token, lab.slave), *_keys(), attempts=1)


def test_pop_with_1024_descriptors_enrolls_despite_1100_idle_connections(tmp_path: Path) -> None:
    with open_lab(tmp_path) as lab, spawn_pop(lab, nofile=1024) as child:
        held: list[socket.socket] = []
        try:
            started = time.monotonic()
            address = ("127.0.0.1", child.endpoint.port)
            for _ in range(1100):
                with contextlib.suppress(ConnectionResetError):  # refused so fast that connect() saw it
                    held.append(socket.create_connection(address, timeout=5, source_address=("127.0.0.2", 0)))
                assert time.monotonic() - started < 60
            invitation = Invitation("acme", lab.invite("web"), ((child.endpoint, child.pin),))
            result = enroll(invitation, *_keys(), attempts=1)
            assert result.certificate.name == "web"
            open_fds = len(os.listdir(f"/proc/{child.process.pid}/fd"))
            assert MAX_CONNECTIONS_PER_SOURCE < open_fds < 100, f"the child holds {open_fds} descriptors"
        finally:
            for sock in held:
                sock.close()
