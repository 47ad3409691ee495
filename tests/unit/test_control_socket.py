"""The agent's local control socket (daemon/control.py) on a real Unix socket: a request
it cannot read gets one "bad request" answer, and the socket goes on serving."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from naas.daemon import control


async def _status(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "cmd": request.get("cmd")}


def _ask(path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return answer


@pytest.mark.parametrize("line", [b"[" * 50_000, b"not json", b"[1, 2]", b'{"cmd": ' + b"[" * 30_000])
def test_unreadable_requests_get_bad_request_and_the_socket_serves_on(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "agent.sock"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        server = await control.serve(path, _status)
        try:
            bad = await asyncio.to_thread(_ask, path, line)
            good = await asyncio.to_thread(control.request, path, "status")
            return bad, good
        finally:
            server.close()
            await server.wait_closed()

    bad, good = asyncio.run(scenario())
    assert bad == {"ok": False, "error": "bad request"}
    assert good == {"ok": True, "cmd": "status"}
