"""The admin commands' two ways to a network: here, on a PoP host (its store, in this
process), or at a PoP's REST API from anywhere (``--api https://HOST:PORT --token T
--pin sha256:...``, or $NAAS_API, $NAAS_API_TOKEN, $NAAS_API_PIN).

Both ways speak the API's operations (pop/api.py ``ROUTES``, named by operation id),
with the same validation, the same answers (JSON objects) and the same errors, so each
command of cli/manage.py is written once and prints the same whichever way it went.
One remote call::

    TCP + TLS handshake (no chain or hostname check: the PoP's key is self-signed)
    -> SPKI pin of the PoP's certificate == --pin?    no: one line, exit 1, token unsent
    -> METHOD /v1/... with Authorization: Bearer <token> (and a JSON body)
    -> the answer, checked with the route's answer model (pop/api_schema.py)
    -> 2xx: the answer; 4xx: ``naas: <the API's error>``, exit 2; 5xx, no answer or a
       malformed one: exit 1

The token is in no message; prefer $NAAS_API_TOKEN to --token (the process list).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import http.client
import json
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from naas.cli.admin import opened_network
from naas.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, BadInput, CliError
from naas.control.network import PopNetwork
from naas.pop.api import ROUTES_BY_OPERATION, ApiError, call_in_process
from naas.pop.client import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    client_ssl_context,
    describe_failure,
    pin_or_none,
)
from naas.pop.invitations import PIN_PREFIX, is_well_formed_pin

ENV_API = "NAAS_API"
ENV_TOKEN = "NAAS_API_TOKEN"
ENV_PIN = "NAAS_API_PIN"
DEFAULT_API_PORT = 5641  # a PoP's enrollment port unless naas.toml says otherwise
JSON_TYPE = "application/json"
Params = Mapping[str, str] | None  # a route's path parameters


class Api(Protocol):
    def call(
        self, operation: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        """The answer of ``operation`` (a route's operation id) as JSON; a refusal raises
        CliError: exit 2 for a 4xx, 1 otherwise."""
        ...


def _failure(status: int, message: str) -> CliError:
    return CliError(message, EXIT_BAD_INPUT if 400 <= status < 500 else EXIT_FAILURE)


@dataclass
class LocalApi:
    """The operations run here, on the PoP host's store (pop/api.py call_in_process)."""

    net: PopNetwork

    def call(
        self, operation: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        try:
            return call_in_process(self.net, operation, params, body)
        except ApiError as exc:
            raise _failure(exc.status, str(exc)) from None


@dataclass(frozen=True)
class RemoteApi:
    """The operations at a PoP's API over pinned HTTPS, one connection per call."""

    host: str
    port: int
    token: str
    pin: str
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:  # the token is a secret: keep it out of tracebacks
        return f"RemoteApi(host={self.host!r}, port={self.port}, token=<hidden>, pin={self.pin!r})"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def call(
        self, operation: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        route = ROUTES_BY_OPERATION[operation]
        path = route.path.format(**{key: quote(value, safe="") for key, value in (params or {}).items()})
        data = None if route.body is None else json.dumps(body).encode()
        status, raw = self._exchange(route.method, path, data)
        try:
            answer: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            answer = None
        if status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(message, str):
                message = f"HTTP {status} from the API at {self.url}"
            raise _failure(status, "".join(c for c in message[:300] if c.isprintable()))
        try:
            if status != route.status:
                raise ValueError(f"HTTP {status}")
            return route.answer.model_validate(answer).model_dump(mode="json")
        except (ValueError, ValidationError):
            raise CliError(
                f"the API at {self.url} sent a malformed answer to {route.method} {path}"
            ) from None

    def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=client_ssl_context()
        )
        try:
            try:
                connection.connect()
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"cannot reach the API at {self.url}: {describe_failure(exc)}") from None
            sock = connection.sock
            der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
            seen = pin_or_none(der)
            if seen is None or not hmac.compare_digest(seen, self.pin):
                raise CliError(
                    f"the PoP at {self.url} does not hold the pinned key (expected {self.pin}, got "
                    f"{seen or 'no usable certificate'}): wrong --pin, or someone is in the way; "
                    "the token was not sent"
                )
            headers = {"Authorization": f"Bearer {self.token}", "Accept": JSON_TYPE}
            if data is not None:
                headers["Content-Type"] = JSON_TYPE
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read(MAX_ANSWER_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise CliError(f"no answer from the API at {self.url}: {describe_failure(exc)}") from None
        finally:
            connection.close()
        if len(raw) > MAX_ANSWER_BYTES:
            raise CliError(f"the API at {self.url} sent an oversized answer")
        return response.status, raw


def parse_api_url(text: str) -> tuple[str, int]:
    """(host, port) of ``--api https://HOST[:PORT]``; BadInput naming the problem."""
    problem = BadInput(f"--api: expected https://HOST:PORT (e.g. https://192.0.2.1:5641), got {text!r}")
    try:
        parts = urlsplit(text.strip())
        port = parts.port or DEFAULT_API_PORT
    except ValueError:
        raise problem from None
    if parts.scheme.lower() != "https" or not parts.hostname or parts.username or parts.password:
        raise problem
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise problem
    return parts.hostname, port


def remote_api(args: argparse.Namespace) -> RemoteApi | None:
    """The API ``--api`` (or $NAAS_API) names, checked; None: work here."""
    url = args.api or os.environ.get(ENV_API)
    if not url:
        return None
    for option, value in (("--store", args.store), ("--state-dir", args.state_dir)):
        if value:
            raise BadInput(f"{option}: not used with --api (the PoP uses its own store)")
    host, port = parse_api_url(url)
    token = args.token or os.environ.get(ENV_TOKEN) or ""
    if not token:
        raise BadInput(f"--api needs a token: --token, or ${ENV_TOKEN} (`naas token create` makes one)")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise BadInput("--token: not a token (printable ASCII without spaces)")
    pin = args.pin or os.environ.get(ENV_PIN) or ""
    if not is_well_formed_pin(pin):
        shown = f"got {pin!r}" if pin else f"give --pin or ${ENV_PIN}"
        raise BadInput(
            f"--pin: expected {PIN_PREFIX}<43 base64url characters>, the pin `naas init` and "
            f"`naas token create` print ({shown})"
        )
    return RemoteApi(host, port, token, pin)


@contextlib.contextmanager
def api_for(args: argparse.Namespace, *, reads_config: bool = False) -> Iterator[Api]:
    """The API at ``--api``, else the operations on this PoP host's store (``--config``).
    ``reads_config``: the command reads --config itself, with --api too (apply)."""
    remote = remote_api(args)
    if remote is not None:
        if args.config and not reads_config:
            raise BadInput("--config: not used with --api (the PoP has its own)")
        yield remote
        return
    if not args.config:
        raise BadInput("--config: required (or --api https://HOST:PORT to work at a PoP's API)")
    with opened_network(args) as net:
        yield LocalApi(net)


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """--api, --token, --pin: work at a PoP's REST API instead of on a PoP host."""
    parser.add_argument(
        "--api",
        metavar="URL",
        help=f"work at this PoP's REST API: https://HOST:PORT (default ${ENV_API}; none: on this PoP host)",
    )
    parser.add_argument(
        "--token", help=f"the API's bearer token (default ${ENV_TOKEN}, which keeps it out of ps)"
    )
    parser.add_argument(
        "--pin",
        help=f"the PoP's TLS key pin, sha256:... (default ${ENV_PIN}); checked before the token is sent",
    )
