"""The PoPs' REST API: ``/v1/...`` beside enrollment, on the same HTTPS port and TLS key.

Theory of operation. One table, ``ROUTES``, says everything about every route: method,
path, role, the pydantic models (pop/api_schema.py) of its path parameters, its body and
its answer, and the use case that serves it. The server (``RestApi.mount``), the OpenAPI
document (``api_document``, served at ``/v1/openapi.json``) and the CLI
(``call_in_process`` on a PoP host, cli/remote.py over HTTPS) all read that table, so
what is documented is what is checked. A request, in order::

    route matched (else 404/405, as JSON)
    -> role "public"? straight to the use case (health, openapi.json)
    -> this source failed auth too often? 429 + Retry-After (the enrollment service's
       FailureLimiter: a failed auth spends one of its credits, like a bad invitation)
    -> Authorization: Bearer <token> -> control.members.token_role, in a thread
       (none or unknown: 401 + WWW-Authenticate; a read token on an admin route: 403)
    -> path parameters -> the params model                                   (else 400)
    -> body: Content-Type JSON (else 415), at most route.max_body bytes (else 413),
       within BODY_TIMEOUT (else 408), JSON of the body model (else 400 naming the field)
    -> the PoP agent's view (members' reach), read on the event loop
    -> the use case (control/), in a worker thread: it waits for the store
    -> the answer model as JSON, with route.status; a ControlError -> its .status

Every error is ``{"error": "<one line>"}``. The token is never logged: a request is
logged with its operation, path template, status, role, PoP and peer (writes at INFO,
reads at DEBUG). ``/v1/health`` is served by pop/server.py and only documented here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from naas.control import apply as applying
from naas.control import members
from naas.control import policy as policies
from naas.control.errors import ControlError, NotFound
from naas.control.network import PopNetwork
from naas.core.topology import Topology
from naas.model.document import parse_document_untrusted
from naas.model.ids import is_valid_name
from naas.model.policy import Policy
from naas.pop.api_schema import (
    JSON_TYPE,
    ApplyRequest,
    ApplyResult,
    Call,
    Client,
    ClientList,
    ClientRemoved,
    Document,
    GroupsChange,
    GroupsChanged,
    Health,
    InvitationCancelled,
    InvitationList,
    InvitationParams,
    IssuedInvitation,
    Member,
    MemberList,
    NameParams,
    NetworkPolicy,
    NewClient,
    NewInvitation,
    NewPolicy,
    OpenApi,
    PolicySet,
    Revoked,
    RevokedMember,
    Route,
    TraceRequest,
    TraceResult,
    openapi_document,
)
from naas.pop.api_schema import Invitation as InvitationRow
from naas.pop.limits import BODY_TIMEOUT, FailureLimiter, source_of
from naas.pop.store_control import ClientRecord

log = logging.getLogger("naas.pop.api")

MAX_APPLY_BYTES = 512 * 1024  # POST /v1/apply, PUT /v1/policy (admin, after auth): the most fits

# -- the use cases behind the routes (run in a worker thread) -------------------------------


def _client_of(record: ClientRecord, enrolled: bool) -> Client:
    ip = None if record.ip is None else str(record.ip)
    return Client(
        name=record.name,
        ip=ip,
        groups=list(record.groups),
        allowed_addresses=[str(network) for network in record.allowed_addresses],
        created_at=record.created_at,
        enrolled=enrolled,
    )


def _client(net: PopNetwork, name: str) -> Client:
    record = net.store.client(name)
    if record is None:
        raise NotFound(f"no client {name!r}")
    return _client_of(record, net.store.member(name) is not None)


def _list_clients(call: Call) -> ClientList:
    enrolled = {cert.name for cert in call.net.store.members()}
    return ClientList(clients=[_client_of(r, r.name in enrolled) for r in call.net.store.clients()])


def _create_client(call: Call) -> Client:
    new: NewClient = call.body
    members.create_client(call.net, new.name, new.ip, new.groups, new.allowed_addresses)
    return _client(call.net, new.name)


def _get_client(call: Call) -> Client:
    return _client(call.net, call.params.name)


def _delete_client(call: Call) -> ClientRemoved:
    cert = members.delete_client(call.net, call.params.name)
    version = call.net.store.document_version()
    return ClientRemoved(
        name=call.params.name, revoked_node_id=cert and cert.node_id, document_version=version
    )


def _list_invitations(call: Call) -> InvitationList:
    rows = []
    for record in members.invitations(call.net):
        expired = call.now >= record.expires_at
        rows.append(
            InvitationRow(
                id=members.invitation_id(record),
                client=record.client_name,
                state="used" if record.used_at is not None else "expired" if expired else "unused",
                created_at=record.created_at,
                expires_at=record.expires_at,
                used_at=record.used_at,
                used_by_pop=record.used_by_pop,
                node_id=record.node_id,
            )
        )
    return InvitationList(invitations=rows)


def _create_invitation(call: Call) -> IssuedInvitation:
    new: NewInvitation = call.body
    (issued,) = members.invite(call.net, [new.client], new.ttl_seconds)
    return IssuedInvitation(id=issued.id, client=issued.client, url=issued.url, expires_at=issued.expires_at)


def _cancel_invitation(call: Call) -> InvitationCancelled:
    members.cancel_invitation(call.net, call.params.id)
    return InvitationCancelled(id=call.params.id)


def _members(call: Call, only: str | None = None) -> MemberList:
    store = call.net.store
    latest = store.latest_document()
    document = parse_document_untrusted(latest[1])[0] if latest else None
    seen = {view.node_id: view for view in call.view.members} if call.view is not None else {}
    rows = []
    for cert in store.members():
        if only is not None and cert.name != only:
            continue
        view = seen.get(cert.node_id)
        rows.append(
            Member(
                name=cert.name,
                node_id=cert.node_id,
                ip=None if cert.ip is None else str(cert.ip.ip),
                groups=list(document.groups_of(cert.node_id, cert.groups) if document else cert.groups),
                is_pop=cert.is_pop,
                not_after=cert.not_after,
                reach=None if view is None else view.reach.value,
                rtt_ms=None if view is None else view.rtt_ms,
                endpoint=None if view is None else view.endpoint,
                document_version=None if view is None or not view.document_version else view.document_version,
            )
        )
    return MemberList(
        members=rows,
        revoked=[RevokedMember(node_id=r.node_id, name=r.name, until=r.until) for r in store.revocations()],
        document_version=latest[0] if latest else 0,
        agent_document_version=None if call.view is None else call.view.document_version,
    )


def _get_member(call: Call) -> Member:
    name = call.params.name
    found = _members(call, only=name)
    if not found.members:
        revoked = any(r.name == name for r in found.revoked)
        raise NotFound(f"member {name!r} is revoked" if revoked else f"no member {name!r}")
    return found.members[0]


def _set_groups(call: Call) -> GroupsChanged:
    record = members.set_groups(call.net, call.params.name, call.body.groups)
    version = call.net.store.document_version()
    return GroupsChanged(name=record.name, groups=list(record.groups), document_version=version)


def _revoke(call: Call) -> Revoked:
    cert = members.revoke(call.net, call.params.name)
    version = call.net.store.document_version()
    return Revoked(name=cert.name, node_id=cert.node_id, document_version=version)


def _document(call: Call) -> Document:
    latest = call.net.store.latest_document()
    if latest is None:
        raise NotFound("the network has no document yet")
    document = parse_document_untrusted(latest[1])[0]
    return Document(version=document.version, issued_at=document.issued_at, document=json.loads(latest[1]))


def _apply(call: Call) -> ApplyResult:
    request: ApplyRequest = call.body
    net, settings = call.net, request.settings
    if settings is not None:
        pops = None if settings.pops is None else [(p.name, p.address) for p in settings.pops]
        applying.check_fixed_settings(
            net, "settings", settings.name, settings.subnet, settings.mesh_port, pops
        )
    wanted = [
        applying.ClientSpec(c.name, c.ip, tuple(c.groups), tuple(c.allowed_addresses))
        for c in request.clients
    ]
    policy = None if request.policy is None else _parsed_policy(request.policy)
    chosen = applying.plan(net, wanted, prune=request.prune, policy=policy)
    applied = not (request.dry_run or chosen.empty)
    if applied:
        applying.apply(net, chosen)
    return ApplyResult(**chosen.to_dict(), applied=applied, document_version=net.store.document_version())


def _parsed_policy(body: NewPolicy) -> Policy:
    return policies.parse(body.raw())


def _policy_of(policy: Policy) -> NetworkPolicy:
    return NetworkPolicy.model_validate(policy.as_json())


def _get_policy(call: Call) -> NetworkPolicy:
    return _policy_of(policies.show(call.net))


def _put_policy(call: Call) -> PolicySet:
    body: NewPolicy = call.body
    done = policies.set_policy(call.net, body.raw())
    return PolicySet(
        policy=_policy_of(done.policy), changed=done.changed, document_version=done.document_version
    )


def _trace(call: Call) -> TraceResult:
    request: TraceRequest = call.body
    traced = policies.trace(
        call.net,
        request.source,
        request.destination,
        request.proto,
        request.port,
        src_ip=request.src_ip,
        dst_ip=request.dst_ip,
    )
    decision = traced.decision
    index = None if decision.index < 0 else decision.index
    return TraceResult(allow=decision.allow, rule=decision.rule, index=index, lines=list(traced.lines))


@functools.cache
def api_document() -> dict[str, Any]:
    """The OpenAPI document of ROUTES (served at /v1/openapi.json)."""
    return openapi_document(ROUTES)


def _openapi(_call: Call) -> OpenApi:
    return OpenApi.model_validate(api_document())


# -- the route table ------------------------------------------------------------------------

_MEMBER = "/v1/members/{name}"
ROUTES: tuple[Route, ...] = (
    Route("health", "GET", "/v1/health", "public", "service", "the PoP is up", Health, None),
    Route("openapi", "GET", "/v1/openapi.json", "public", "service", "this document", OpenApi, _openapi),
    Route("list_clients", "GET", "/v1/clients", "read", "clients", "every client", ClientList, _list_clients),
    Route(
        "create_client", "POST", "/v1/clients", "admin", "clients", "add a client", Client, _create_client,
        body=NewClient, status=201, errors=(409,),
    ),
    Route(
        "get_client", "GET", "/v1/clients/{name}", "read", "clients", "one client", Client, _get_client,
        params=NameParams,
    ),
    Route(
        "delete_client", "DELETE", "/v1/clients/{name}", "admin", "clients",
        "remove a client; its member, if enrolled, is revoked", ClientRemoved, _delete_client,
        params=NameParams,
    ),
    Route(
        "list_invitations", "GET", "/v1/invitations", "read", "invitations",
        "every invitation (no tokens)", InvitationList, _list_invitations,
    ),
    Route(
        "create_invitation", "POST", "/v1/invitations", "admin", "invitations",
        "a single-use invitation URL for a client (shown once)", IssuedInvitation, _create_invitation,
        body=NewInvitation, status=201, errors=(404,),
    ),
    Route(
        "cancel_invitation", "DELETE", "/v1/invitations/{id}", "admin", "invitations",
        "cancel an unused invitation", InvitationCancelled, _cancel_invitation,
        params=InvitationParams, errors=(409,),
    ),
    Route(
        "list_members", "GET", "/v1/members", "read", "members",
        "every member, with this PoP's view of it", MemberList, _members, agent_view=True,
    ),
    Route(
        "get_member", "GET", _MEMBER, "read", "members", "one member", Member, _get_member,
        params=NameParams, agent_view=True,
    ),
    Route(
        "set_member_groups", "PUT", _MEMBER + "/groups", "admin", "members",
        "replace a member's (or client's) groups: a new network document", GroupsChanged, _set_groups,
        params=NameParams, body=GroupsChange, errors=(409,),
    ),
    Route(
        "patch_member_groups", "PATCH", _MEMBER + "/groups", "admin", "members",
        "the same as PUT", GroupsChanged, _set_groups, params=NameParams, body=GroupsChange, errors=(409,),
    ),
    Route(
        "revoke_member", "POST", _MEMBER + "/revoke", "admin", "members",
        "cut a member off: a new network document", Revoked, _revoke, params=NameParams, errors=(409,),
    ),
    Route(
        "get_document", "GET", "/v1/document", "read", "network", "the newest network document",
        Document, _document, errors=(404,),
    ),
    Route(
        "apply", "POST", "/v1/apply", "admin", "network",
        "make the network's clients (and policy) these (naas apply)", ApplyResult, _apply,
        body=ApplyRequest, errors=(409,), max_body=MAX_APPLY_BYTES,
    ),
    Route(
        "get_policy", "GET", "/v1/policy", "read", "policy", "the network's policy", NetworkPolicy,
        _get_policy,
    ),
    Route(
        "set_policy", "PUT", "/v1/policy", "admin", "policy",
        "replace the network's policy: a new network document", PolicySet, _put_policy,
        body=NewPolicy, max_body=MAX_APPLY_BYTES,
    ),
    Route(
        "trace_policy", "POST", "/v1/policy/trace", "read", "policy",
        "why the policy allows or denies a flow between two members, rule by rule", TraceResult, _trace,
        body=TraceRequest, errors=(404,),
    ),
)  # fmt: skip
ROUTES_BY_OPERATION = {route.operation: route for route in ROUTES}

# -- validation and errors, shared by HTTP and the CLI ----------------------------------------


class ApiError(Exception):
    """A request answered with an error: ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    """Text that may hold what a client sent (a key, a value), fit for one line."""
    line = "".join(c if c.isprintable() else "?" for c in text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _validation_problem(exc: ValidationError, what: str) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"{what} is not JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return _one_line(f"{where or what}: {first['msg']}{more}")


def parse_params(route: Route, raw: Mapping[str, str]) -> Any:
    if route.params is None:
        return None
    try:
        return route.params.model_validate(dict(raw))
    except ValidationError as exc:
        raise ApiError(400, _validation_problem(exc, "path")) from None


def parse_body_untrusted(route: Route, raw: bytes) -> Any:
    if route.body is None:
        return None
    try:
        return route.body.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, _validation_problem(exc, "body")) from None


def call_in_process(
    net: PopNetwork, operation: str, params: Mapping[str, str] | None = None, body: Any = None
) -> dict[str, Any]:
    """Run a route's use case here, as the API would (the CLI on a PoP host): the same
    validation, the same answer as JSON, the same ApiError."""
    route = ROUTES_BY_OPERATION[operation]
    if route.run is None:
        raise ApiError(404, f"{route.path} is served by a running PoP only")
    parsed = parse_params(route, params or {})
    parsed_body = parse_body_untrusted(route, json.dumps(body).encode())
    try:
        answer = route.run(Call(net, parsed, parsed_body, None, net.clock()))
    except ControlError as exc:
        raise ApiError(exc.status, str(exc)) from None
    return answer.model_dump(mode="json")


def error_response(status: int, message: str, *, close: bool = False) -> web.Response:
    answer = web.json_response({"error": message}, status=status)
    if close:  # the body was not read: the connection cannot carry another request
        answer.force_close()
    return answer


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such path, method not allowed) as JSON, like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no such resource: {_one_line(request.path, 100)}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed here (allowed: {exc.headers.get('Allow', 'none')})"
        else:
            message = exc.reason
        answer = error_response(exc.status, message)
        for header in ("Allow", "Retry-After"):
            if header in exc.headers:
                answer.headers[header] = exc.headers[header]
        return answer


# -- the server -----------------------------------------------------------------------------


class RestApi:
    """The routes of ROUTES on an aiohttp application (pop/server.py mounts it)."""

    def __init__(
        self,
        net: PopNetwork,
        pop_name: str,
        *,
        agent_view: Callable[[], Topology] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._net = net
        self._pop_name = pop_name
        self._agent_view = agent_view
        self._clock = clock
        self._failures: FailureLimiter | None = None
        self._monotonic: Callable[[], float] = time.monotonic

    def mount(
        self,
        app: web.Application,
        *,
        failures: FailureLimiter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Add the routes; ``failures``: the enrollment service's limiter, which failed
        authentications spend."""
        self._failures, self._monotonic = failures, monotonic
        app.middlewares.append(json_errors)
        for route in ROUTES:
            if route.run is not None:
                app.router.add_route(route.method, route.path, functools.partial(self._serve, route))

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        role = "none"
        try:
            if route.role != "public":
                role = await self._authenticate(route, request)
            answer = await self._answer(route, request)
            response = web.json_response(answer.model_dump(mode="json"), status=route.status)
        except ApiError as exc:
            unread = not request.content.is_eof()  # aiohttp closes such a connection: say so
            response = error_response(exc.status, str(exc), close=unread)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="naas"'
            elif exc.status == 429:
                wait = (
                    self._failures.retry_after(source_of(request.remote), self._monotonic())
                    if self._failures
                    else 1
                )
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        except Exception:
            log.exception("api request failed operation=%s", route.operation)
            response = error_response(500, "internal error")
        name = request.match_info.get("name", "")
        named = f" name={_one_line(name)}" if is_valid_name(name) else ""  # never a token: it has "_"
        level = logging.DEBUG if route.method == "GET" else logging.INFO
        log.log(
            level,
            "api operation=%s path=%s%s status=%d role=%s pop=%s peer=%s",
            route.operation,
            route.path,
            named,
            response.status,
            role,
            self._pop_name,
            request.remote,
        )
        return response

    async def _authenticate(self, route: Route, request: web.Request) -> str:
        """The token's role, or ApiError 401/403/429. A failure spends a limiter credit."""
        source = source_of(request.remote)
        if self._failures is not None and self._failures.retry_after(source, self._monotonic()) > 0:
            raise ApiError(429, "too many failed attempts from this address")
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        role = await asyncio.to_thread(members.token_role, self._net, bearer) if bearer else None
        if role is None:
            if self._failures is not None:
                self._failures.failed(source, self._monotonic())
            if bearer:
                raise ApiError(401, "the token is not valid here")
            raise ApiError(401, "missing Authorization: Bearer <token> (`naas token create` makes one)")
        if route.role == "admin" and role != "admin":
            summary = route.summary.partition(":")[0].partition(";")[0]
            raise ApiError(403, f"a {role} token may not {summary} (this needs an admin token)")
        return role

    async def _answer(self, route: Route, request: web.Request) -> BaseModel:
        assert route.run is not None
        params = parse_params(route, request.match_info)
        body = None
        if route.body is not None:
            body = parse_body_untrusted(route, await self._read_body(route, request))
        view = None
        if route.agent_view and self._agent_view is not None:
            try:
                view = self._agent_view()
            except Exception:  # the agent is starting or stopping: the store's facts still hold
                log.debug("api: no agent view", exc_info=True)
        try:
            return await asyncio.to_thread(route.run, Call(self._net, params, body, view, self._clock()))
        except ControlError as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def _read_body(self, route: Route, request: web.Request) -> bytes:
        if request.content_type != JSON_TYPE:
            raise ApiError(415, f"Content-Type: expected {JSON_TYPE}")
        too_large = ApiError(413, f"request larger than {route.max_body} bytes")
        if request.content_length is not None and request.content_length > route.max_body:
            raise too_large
        try:
            reading = request.clone(client_max_size=route.max_body).read()
            return await asyncio.wait_for(reading, BODY_TIMEOUT)
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except TimeoutError:
            raise ApiError(408, f"request body not received within {BODY_TIMEOUT:g} s") from None
