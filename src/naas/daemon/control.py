"""The agent's local control socket: one JSON request, one JSON answer, per line.

    {"cmd": "status"}    -> {"ok": true, "status": {...NodeCore.status()...}}
    {"cmd": "shutdown"}  -> {"ok": true}; the agent then stops

The socket lives in the node's state directory (mode 0600, root only), so the CLI
gets live state without scraping logs. ``request()`` is the synchronous client.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MAX_REQUEST = 4096

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The agent is not running or did not answer."""


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    path.unlink(missing_ok=True)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            try:
                request = json.loads(line[:MAX_REQUEST])
                if not isinstance(request, dict):
                    raise ValueError
                answer = await handler(request)
            except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
                answer = {"ok": False, "error": "bad request"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connection, path=str(path))
    finally:
        os.umask(old_umask)
    return server


def request(path: Path, cmd: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to the agent listening at ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"the agent is not running (no answer at {path})") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the agent at {path}: {exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise ControlError("the agent gave an unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError("the agent gave an unreadable answer")
    return answer
