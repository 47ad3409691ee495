"""The PoP's HTTPS enrollment service (aiohttp).

A new member POSTs ``/v1/enroll`` with its invitation token and its two public keys
over TLS. The PoP's TLS certificate is self-signed: clients authenticate it by the pin
in the invitation URL, not by a PKI. The path of one connection and one enrollment::

    accept -> ConnectionTable: too many open from this source, or in all? close (RST)
    -> TLS handshake within TLS_HANDSHAKE_TIMEOUT
    -> complete request headers within HEADER_TIMEOUT        (else the connection is cut)
    -> FailureLimiter: this source failed too often? 429 + Retry-After, body unread
    -> body within BODY_TIMEOUT (else 408) and MAX_REQUEST_BYTES (else 413)
    -> JSON shape -> network name -> token form -> key forms                  (else 400)
    -> control/enrollment.py, in a worker thread: store.redeem (one SQL transaction)
         issues the certificate: address, groups from the store, CA signature
    -> 200 {certificate, network, members, document}, then on_enrolled(certificate)
    -> the next request's headers within KEEPALIVE_TIMEOUT, or the connection is cut;
       no connection outlives CONNECTION_LIFETIME, whatever it does

An unusable invitation is a 403 (``invitation unknown``, ``invitation already used``,
``invitation expired``) and an exhausted address pool a 503. Every 400, 403, 408 and
413 spends one credit of the source's failure bucket; a redemption retried with the
same token and keys gets its certificate again (store.py) and spends nothing. Every
refusal, of a request or of a connection, is counted by reason (``refusals``). Bytes
that are not HTTP (a request line or header over MAX_HEADER_LINE, more than MAX_HEADERS
fields) get aiohttp's 400 and one debug line, never a traceback.

The limiter and the connection table are pure (``now`` is passed in); the aiohttp side
only calls them. The token is never logged, not even hashed; an enrollment logs the
member's name and node id. ``GET /v1/health`` answers without touching the store.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from naas.control.enrollment import enroll, member_document, renew
from naas.control.errors import ControlError, Forbidden, NotFound
from naas.control.network import PopNetwork
from naas.model.certificate import Certificate
from naas.model.codec import (
    CodecError,
    b64d,
    certificate_from_dict,
    certificate_to_dict,
    member_to_dict,
    network_to_dict,
)
from naas.model.network import MemberRecord
from naas.pop.addresses import AddressPoolExhausted
from naas.pop.invitations import (
    ENROLL_PATH,
    MEMBER_DOCUMENT_PATH,
    RENEW_PATH,
    is_well_formed_token,
    token_hash,
)
from naas.pop.limits import (
    ACCEPT_RETRY_DELAY,
    LISTEN_BACKLOG,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_BYTES,
    SHUTDOWN_GRACE,
    TLS_SHUTDOWN_TIMEOUT,
    ConnectionTable,
    EnrollmentLimits,
    FailureLimiter,
    Refusal,
    source_of,
)
from naas.pop.store import RedeemError

log = logging.getLogger("naas.pop.server")

HEALTH_PATH = "/v1/health"
T = TypeVar("T")

# -- the service ----------------------------------------------------------------------------


class EnrollmentService:
    """Redeems invitations for one PoP; ``app()`` is the aiohttp application."""

    def __init__(
        self,
        net: PopNetwork,
        pop_name: str,
        on_enrolled: Callable[[Certificate], None],
        *,
        limits: EnrollmentLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        net.config.pop(pop_name)  # raises ConfigError for an unknown PoP
        self._net = net
        self._config = net.config
        self._pop_name = pop_name
        self._network_info = net.info
        self._monotonic = monotonic  # the failure limiter's clock
        self._on_enrolled = on_enrolled
        self._pop_endpoints = {pop.name: (pop.mesh_endpoint,) for pop in net.info.pops}
        self.limits = limits or EnrollmentLimits()
        self.failures = FailureLimiter(
            self.limits.failure_burst, self.limits.failure_refill_seconds, self.limits.max_tracked_sources
        )
        self.enroll_requests = 0  # POSTs that reached the handler (tests, status)
        self.enrolled = 0
        self.enrolled_again = 0  # retries answered with the certificate already issued
        self.refusals: Counter[Refusal] = Counter()
        self.api: Any = None  # pop/api.py's RestApi, mounted beside enrollment by app()

    def status(self) -> dict[str, Any]:
        """The counters, for ``naas status`` of a PoP."""
        return {
            "enrolled": self.enrolled,
            "enrolled_again": self.enrolled_again,
            "enroll_requests": self.enroll_requests,
            "refusals": dict(sorted((reason.value, n) for reason, n in self.refusals.items())),
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(ENROLL_PATH, self._handle_enroll)
        app.router.add_post(RENEW_PATH, self._handle_renew)
        app.router.add_post(MEMBER_DOCUMENT_PATH, self._handle_member_document)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        if self.api is not None:
            self.api.mount(app, failures=self.failures, monotonic=self._monotonic)  # a bad token spends
        return app

    async def _handle_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "network": self._config.name, "pop": self._pop_name})

    async def _handle_enroll(self, request: web.Request) -> web.Response:
        self.enroll_requests += 1
        source = source_of(request.remote)
        body = await self._limited_body(request, source)
        if isinstance(body, web.Response):
            return body
        parsed = self._parse_request_untrusted(body)
        if isinstance(parsed, str):
            log.info("enrollment rejected problem=%r peer=%s", parsed, request.remote)
            return self._failed(source, Refusal.BAD_REQUEST, parsed)
        token, static_public, signing_public = parsed
        try:
            done = await asyncio.to_thread(
                enroll, self._net, self._pop_name, token_hash(token), static_public, signing_public
            )
        except RedeemError as exc:
            log.info("enrollment refused reason=%s peer=%s", exc.reason, request.remote)
            return self._failed(source, Refusal(f"invitation_{exc.reason}"), str(exc))
        except AddressPoolExhausted as exc:
            log.warning("enrollment failed: %s", exc)
            return _error(503, "no free overlay address left")
        except Exception:
            log.exception("enrollment failed peer=%s", request.remote)
            return _error(500, "internal error")
        cert, again = done.certificate, not done.issued
        if again:
            self.enrolled_again += 1
        else:
            self.enrolled += 1
        log.info(
            "enrolled%s name=%s node_id=%d ip=%s pop=%s peer=%s",
            " again (same invitation, same keys: the certificate already issued)" if again else "",
            cert.name,
            cert.node_id,
            cert.ip,
            self._pop_name,
            request.remote,
        )
        answer = {
            "certificate": certificate_to_dict(cert),
            "network": network_to_dict(self._network_info),
            "members": [member_to_dict(self._record(c)) for c in done.members],
        }
        if done.document is not None:
            answer["document"] = done.document.decode()
        try:
            self._on_enrolled(cert)  # again too: this PoP may not know the member yet
        except Exception:
            log.exception("on_enrolled hook failed name=%s", cert.name)
        return web.json_response(answer)

    async def _handle_renew(self, request: web.Request) -> web.Response:
        """A member renews its certificate (control/enrollment.py renew)."""
        done = await self._member_request(request, renew, "renewal")
        if isinstance(done, web.Response):
            return done
        log.info("renewed name=%s node_id=%d until=%d", done.name, done.node_id, done.not_after)
        try:
            self._on_enrolled(done)  # the PoP's agent spreads the new certificate at once
        except Exception:
            log.exception("on_enrolled hook failed name=%s", done.name)
        return web.json_response({"certificate": certificate_to_dict(done)})

    async def _handle_member_document(self, request: web.Request) -> web.Response:
        """The newest network document, for a member (an agent starting; a revoked one
        learns so from it)."""
        done = await self._member_request(request, member_document, "document request")
        if isinstance(done, web.Response):
            return done
        return web.json_response({"document": done.decode()})

    async def _member_request(
        self, request: web.Request, use_case: Callable[[PopNetwork, Certificate, int, bytes], T], what: str
    ) -> T | web.Response:
        """A request a member authenticates with its certificate and a signature of its own
        (no token): limited like enrollments, parsed, then ``use_case`` in a thread."""
        source = source_of(request.remote)
        body = await self._limited_body(request, source)
        if isinstance(body, web.Response):
            return body
        parsed = self._parse_renew_untrusted(body)
        if isinstance(parsed, str):
            return self._failed(source, Refusal.BAD_REQUEST, parsed)
        cert, unix_time, signature = parsed
        try:
            return await asyncio.to_thread(use_case, self._net, cert, unix_time, signature)
        except Forbidden as exc:
            log.info("%s refused name=%s node_id=%d: %s", what, cert.name, cert.node_id, exc)
            return self._failed(source, Refusal.RENEWAL_REFUSED, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except ControlError as exc:
            return self._failed(source, Refusal.BAD_REQUEST, str(exc))
        except Exception:
            log.exception("%s failed peer=%s", what, request.remote)
            return _error(500, "internal error")

    def _parse_renew_untrusted(self, body: bytes) -> tuple[Certificate, int, bytes] | str:
        """(certificate, time, signature) of a renewal request, or the problem as text."""
        try:
            obj: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "body is not JSON"
        if not isinstance(obj, dict):
            return "expected a JSON object"
        if obj.get("network") != self._config.name:
            return "network: missing, or another network"
        unix_time = obj.get("time")
        if not isinstance(unix_time, int) or isinstance(unix_time, bool) or not 0 <= unix_time < 2**53:
            return "time: expected Unix seconds"
        try:
            cert = certificate_from_dict(obj.get("certificate"))
            signature = b64d(obj.get("signature"), length=64, field="signature")  # type: ignore[arg-type]
        except CodecError as exc:
            return str(exc)
        return cert, unix_time, signature

    async def _limited_body(self, request: web.Request, source: str) -> bytes | web.Response:
        """The request's body, or the refusal to answer: 429 before reading it if the
        source failed too often, 413 or 408 if it is too large or too slow."""
        wait = self.failures.retry_after(source, self._monotonic())
        if wait > 0:  # before the body is even read
            self.refusals[Refusal.RATE_LIMITED] += 1
            log.debug("request refused reason=rate_limited path=%s peer=%s", request.path, request.remote)
            limited = _error(429, "too many failed attempts from this address", close=True)
            limited.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return limited
        try:
            return await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return self._failed(source, Refusal.TOO_LARGE, f"request larger than {MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            message = f"request body not received within {self.limits.body_timeout:g} s"
            return self._failed(source, Refusal.BODY_TIMEOUT, message)

    def _failed(self, source: str, reason: Refusal, message: str) -> web.Response:
        """A failed attempt: counted, charged to the source, answered on one line."""
        self.refusals[reason] += 1
        self.failures.failed(source, self._monotonic())
        status = _FAILURE_STATUS[reason]
        return _error(status, message, close=status in (408, 413))

    def _parse_request_untrusted(self, body: bytes) -> tuple[str, bytes, bytes] | str:
        """(token, static_public, signing_public), or the problem as text."""
        try:
            obj: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...
            return "body is not JSON"
        if not isinstance(obj, dict):
            return "expected a JSON object"
        network = obj.get("network")
        if not isinstance(network, str):
            return "network: missing"
        if network != self._config.name:
            return "network: this PoP serves another network"
        token = obj.get("token")
        if token is None:
            return "token: missing"
        if not is_well_formed_token(token):
            return "token: malformed"
        static_text: Any = obj.get("static_public")
        signing_text: Any = obj.get("signing_public")
        try:
            static_public = b64d(static_text, length=32, field="static_public")
            signing_public = b64d(signing_text, length=32, field="signing_public")
        except CodecError as exc:
            return str(exc)
        if static_public == bytes(32) or signing_public == bytes(32):
            return "public keys must not be all zero"
        return token, static_public, signing_public

    def _record(self, cert: Certificate) -> MemberRecord:
        endpoints = self._pop_endpoints.get(cert.name, ()) if cert.is_pop else ()
        return MemberRecord(certificate=cert, endpoints=endpoints)


_FAILURE_STATUS = {
    Refusal.BAD_REQUEST: 400,
    Refusal.INVITATION_UNKNOWN: 403,
    Refusal.INVITATION_USED: 403,
    Refusal.INVITATION_EXPIRED: 403,
    Refusal.RENEWAL_REFUSED: 403,
    Refusal.BODY_TIMEOUT: 408,
    Refusal.TOO_LARGE: 413,
}


def _error(status: int, message: str, *, close: bool = False) -> web.Response:
    answer = web.json_response({"error": message}, status=status)
    if close:  # the body was not read (all of it): the connection cannot carry another request
        answer.force_close()
    return answer


# -- connections: admission, TLS and deadlines around aiohttp --------------------------------


class _Guard(asyncio.Protocol):
    """One admitted connection once TLS is up: aiohttp's protocol inside, our deadlines
    around it. The deadline is for the next request's headers (HEADER_TIMEOUT, then
    KEEPALIVE_TIMEOUT after each answer) and is off while a request is handled."""

    def __init__(self, site: _EnrollmentSite, source: str) -> None:
        self._site = site
        self.source = source
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._lifetime: asyncio.TimerHandle | None = None
        self._released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._site.limits
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._site.guards[transport] = self
        loop = asyncio.get_running_loop()
        self._lifetime = loop.call_later(limits.connection_lifetime, self._expired, Refusal.LIFETIME)
        self._arm(limits.header_timeout, Refusal.HEADER_TIMEOUT)
        self._inner = self._site.new_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._deadline, self._lifetime):
            if handle is not None:
                handle.cancel()
        if self._transport is not None:
            self._site.guards.pop(self._transport, None)
        self.release()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def release(self) -> None:
        """Give the connection's place in the table back (once)."""
        if not self._released:
            self._released = True
            self._site.table.release(self.source)

    def request_started(self) -> None:
        """A request's headers are complete."""
        self._arm(None, Refusal.HEADER_TIMEOUT)

    def request_answered(self) -> None:
        """The answer is handed to aiohttp; the next request's headers must follow."""
        self._arm(self._site.limits.keepalive_timeout, Refusal.IDLE_TIMEOUT)

    def _arm(self, seconds: float | None, reason: Refusal) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        if seconds is not None:
            self._deadline = asyncio.get_running_loop().call_later(seconds, self._expired, reason)

    def _expired(self, reason: Refusal) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reason is Refusal.IDLE_TIMEOUT and transport.get_write_buffer_size() > 0:
            self._arm(self._site.limits.keepalive_timeout, reason)  # the answer is still going out
            return
        self._site.refusals[reason] += 1
        log.debug("enrollment connection cut reason=%s peer=%s", reason.value, self.source)
        transport.abort()


_CLIENT_GONE = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)  # accept(2): try the next one


class _EnrollmentSite(web.BaseSite):
    """An HTTPS site that accepts connections itself, so that it can count them per
    source before any TLS work, and that holds every connection to deadlines."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        service: EnrollmentService,
        guards: dict[asyncio.BaseTransport, _Guard],
    ) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host, self._port, self._tls = host, port, tls
        self.limits = service.limits
        self.refusals = service.refusals
        self.table = ConnectionTable(self.limits.max_connections_per_source, self.limits.max_connections)
        self.guards = guards
        self.handshakes: set[asyncio.Task[None]] = set()
        self.accepting: asyncio.Task[None] | None = None
        self.listener: socket.socket | None = None  # ours, not an asyncio server: _server stays None
        server = runner.server
        assert server is not None
        self.new_handler: Callable[[], asyncio.Protocol] = server

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1]) if self.listener is not None else self._port

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self.listener = socket.create_server((self._host, self._port), family=family, backlog=self._backlog)
        self.listener.setblocking(False)
        self.accepting = asyncio.get_running_loop().create_task(self._accept(self.listener))

    async def stop(self) -> None:
        """Stop accepting and drop the handshakes in progress; aiohttp (runner.cleanup)
        shuts the established connections down."""
        if self.accepting is not None:
            self.accepting.cancel()
        for task in list(self.handshakes):
            task.cancel()
        if self.listener is not None:
            self.listener.close()
        await super().stop()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self.refusals[Refusal.ACCEPT_FAILED] += 1  # EMFILE...: the backlog waits meanwhile
                log.warning("enrollment accept failed: %s; pausing %g s", exc.strerror, ACCEPT_RETRY_DELAY)
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            source = source_of(peer[0] if isinstance(peer, tuple) else None)
            refusal = self.table.admit(source)
            if refusal is not None:
                self.refusals[refusal] += 1
                log.debug("enrollment connection refused reason=%s peer=%s", refusal.value, source)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # at once, with a reset: the descriptor is free again
                continue
            task = loop.create_task(self._handshake(sock, _Guard(self, source)))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, sock: socket.socket, guard: _Guard) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: guard,
                sock,
                ssl=self._tls,
                ssl_handshake_timeout=self.limits.tls_handshake_timeout,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            )
        except asyncio.CancelledError:
            sock.close()
            guard.release()
            raise
        except Exception as exc:  # hostile or slow bytes: counted, never a traceback
            self.refusals[Refusal.TLS_HANDSHAKE_FAILED] += 1
            log.debug("enrollment TLS handshake failed peer=%s: %s", guard.source, type(exc).__name__)
            sock.close()
            guard.release()


class _HttpLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, where a request that is not HTTP (hostile bytes: too long,
    too many headers, garbage) is one debug line, not an error with a traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            first_line = (exc_info.message.strip().splitlines() or [""])[0]
            self.debug("enrollment request is not HTTP: %s", first_line)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _deadline_middleware(guards: dict[asyncio.BaseTransport, _Guard]) -> Middleware:
    """Tells each connection's guard when a request starts and when it is answered."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = guards.get(request.transport) if request.transport is not None else None
        if guard is not None:
            guard.request_started()
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_answered()

    return middleware


async def start_enrollment_site(
    service: EnrollmentService, host: str, port: int, ssl_context: ssl.SSLContext
) -> tuple[web.AppRunner, int]:
    """Serve ``service`` over HTTPS; returns the runner (``await runner.cleanup()``
    to stop) and the bound port (useful with port 0)."""
    guards: dict[asyncio.BaseTransport, _Guard] = {}
    app = service.app()
    app.middlewares.append(_deadline_middleware(guards))
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=_HttpLog(logging.getLogger("aiohttp.server")),
        shutdown_timeout=SHUTDOWN_GRACE,
        # aiohttp's own idle timer, behind the guards' (which count what they cut):
        keepalive_timeout=max(service.limits.header_timeout, service.limits.keepalive_timeout) + 1.0,
        lingering_time=0,  # an unread body is not drained: the connection closes
        max_line_size=MAX_HEADER_LINE,
        max_field_size=MAX_HEADER_LINE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    site = _EnrollmentSite(runner, host, port, ssl_context, service, guards)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.port
