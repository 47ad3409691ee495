"""The REST API's schema: the models of requests and answers, the ``Route`` a table of
routes is made of, and the OpenAPI 3.1 document built from such a table (pop/api.py
holds the table, ``ROUTES``, and serves it).

Requests are strict (no extra keys, no coercion: ``"5"`` is not an integer) and are
validated from the JSON text itself. ``openapi_document(routes)`` takes each route's
models and asks pydantic for their JSON schemas (``model_json_schema`` with
``ref_template=REF``); every schema, and every ``$defs`` entry in it, becomes one of
``components.schemas``, and paths, parameters, request bodies and responses come from
the route's fields: what the document says is what the server checks. cli/remote.py
checks the answers it receives with the same models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from naas import __version__
from naas.control import members
from naas.control.network import PopNetwork
from naas.core.topology import Topology
from naas.model.config import Name, Port
from naas.model.document import MAX_ALLOWED_ADDRESSES, MAX_GROUPS_PER_MEMBER
from naas.model.policy import MAX_PORT_RANGES, MAX_RULES, MAX_SELECTORS
from naas.pop.limits import MAX_REQUEST_BYTES

MAX_APPLY_CLIENTS = 4096
REF = "#/components/schemas/{model}"
JSON_TYPE = "application/json"

# -- the models: requests (strict, nothing extra) and answers -------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Groups = Annotated[list[Name], Field(max_length=MAX_GROUPS_PER_MEMBER)]
AllowedAddresses = Annotated[
    list[IPv4Network],
    Field(
        max_length=MAX_ALLOWED_ADDRESSES,
        description="networks the member may send from besides its own address (routers, bridged hosts)",
    ),
]
Action = Literal["allow", "deny"]
Selectors = Annotated[
    list[Annotated[str, Field(max_length=80)]],
    Field(
        min_length=1, max_length=MAX_SELECTORS, description="group:NAME, member:NAME, any or cidr:A.B.C.D/N"
    ),
]
Proto = Annotated[str, Field(max_length=32, description="tcp, udp, icmp, any or ethertype:0xNNNN")]


class NameParams(_Request):
    name: Name


class InvitationParams(_Request):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$", description="the invitation's 16-hex id")]


class NewClient(_Request):
    name: Name
    ip: IPv4Address | None = Field(None, description="a fixed overlay address; else one from the range")
    groups: Groups = []
    allowed_addresses: AllowedAddresses = []


class NewInvitation(_Request):
    client: Name
    ttl_seconds: int = Field(members.DEFAULT_TTL, ge=1, le=members.MAX_TTL)


class GroupsChange(_Request):
    groups: Groups


class ApplyClient(_Request):
    name: Name
    ip: IPv4Address | None = None
    groups: Groups = []
    allowed_addresses: AllowedAddresses = []


class NewRule(_Request):
    """One rule of a policy (model/policy.py): tried in order, the first that matches decides."""

    name: Name
    sources: Selectors = Field(["any"], alias="from")
    destinations: Selectors = Field(["any"], alias="to")
    proto: Proto = "any"
    ports: Annotated[
        list[Annotated[str, Field(max_length=11)] | Annotated[int, Field(ge=1, le=65535)]],
        Field(
            max_length=MAX_PORT_RANGES, description='tcp/udp destination ports or ranges: "22", "8000-8100"'
        ),
    ] = []
    action: Action


class NewPolicy(_Request):
    """The network's policy: PUT /v1/policy, and the [policy] table of naas.toml."""

    default: Action = Field("allow", description="what no rule matches gets")
    rule: Annotated[list[NewRule], Field(max_length=MAX_RULES)] = []

    def raw(self) -> dict[str, Any]:
        """The JSON shape model/policy.py parse_policy reads."""
        return self.model_dump(mode="json", by_alias=True)


class TraceRequest(_Request):
    source: Name = Field(alias="from", description="the sending member (or client)")
    destination: Name = Field(alias="to", description="the receiving member (or client)")
    proto: Proto
    port: int = Field(0, ge=0, le=65535, description="the destination port (tcp and udp)")
    src_ip: IPv4Address | None = Field(None, description="the flow's source; default: the sender's address")
    dst_ip: IPv4Address | None = Field(None, description="its destination; default: the receiver's")


class FixedPop(_Request):
    name: Name
    address: Annotated[str, Field(max_length=64)]


class FixedSettings(_Request):
    """naas.toml's settings that cannot change under a live network; a difference is a 400."""

    name: Name
    subnet: IPv4Network | None
    mesh_port: Port
    pops: list[FixedPop] | None = Field(None, max_length=64)


class ApplyRequest(_Request):
    clients: Annotated[list[ApplyClient], Field(max_length=MAX_APPLY_CLIENTS)]
    prune: bool = False
    dry_run: bool = False
    settings: FixedSettings | None = None
    policy: NewPolicy | None = Field(None, description="the network's policy; left out: as it is")


class Error(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    network: str
    pop: str


class OpenApi(BaseModel):
    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


class Client(BaseModel):
    name: str
    ip: str | None
    groups: list[str]
    allowed_addresses: list[str]  # networks it may send from besides its own address
    created_at: int
    enrolled: bool  # a member of this name is in the store


class ClientList(BaseModel):
    clients: list[Client]


class ClientRemoved(BaseModel):
    name: str
    revoked_node_id: int | None  # its member, if it had enrolled
    document_version: int


class IssuedInvitation(BaseModel):
    id: str
    client: str
    url: str  # holds the token: shown once, never stored
    expires_at: int


class Invitation(BaseModel):
    id: str
    client: str
    state: Literal["unused", "used", "expired"]
    created_at: int
    expires_at: int
    used_at: int | None
    used_by_pop: str | None
    node_id: int | None


class InvitationList(BaseModel):
    invitations: list[Invitation]


class InvitationCancelled(BaseModel):
    id: str


class Member(BaseModel):
    name: str
    node_id: int
    ip: str | None
    groups: list[str]  # the newest network document's, else the certificate's
    is_pop: bool
    not_after: int
    reach: str | None  # as this PoP's own agent sees it (core/topology.py); None: not known
    rtt_ms: float | None
    endpoint: str | None
    document_version: int | None  # of the network document it holds, as this PoP's agent knows it


class RevokedMember(BaseModel):
    node_id: int
    name: str
    until: int


class MemberList(BaseModel):
    members: list[Member]
    revoked: list[RevokedMember]
    document_version: int  # the store's newest
    agent_document_version: int | None  # the one this PoP's agent holds


class GroupsChanged(BaseModel):
    name: str
    groups: list[str]
    document_version: int


class Revoked(BaseModel):
    name: str
    node_id: int
    document_version: int


class Document(BaseModel):
    version: int
    issued_at: int
    document: dict[str, Any]  # the signed body, as members receive it


class ApplyResult(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]
    kept: list[str]  # not in the request, kept (no prune)
    policy_changed: bool
    lines: list[str]
    applied: bool
    document_version: int


class PolicyRule(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)
    name: str
    sources: list[str] = Field(alias="from")
    destinations: list[str] = Field(alias="to")
    proto: str
    ports: list[str]
    action: Action


class NetworkPolicy(BaseModel):
    """The policy as PUT /v1/policy takes it (GET, edit, PUT)."""

    default: Action
    rule: list[PolicyRule]


class PolicySet(BaseModel):
    policy: NetworkPolicy
    changed: bool  # false: it was the policy already (no new document)
    document_version: int


class TraceResult(BaseModel):
    allow: bool
    rule: str  # the deciding rule's name, or "default"
    index: int | None  # its position in the policy (0-based); null for the default
    lines: list[str]  # each rule looked at and why it matches or not, then the verdict


# -- a route, and what its use case gets ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One validated request, as a route's use case gets it."""

    net: PopNetwork
    params: Any  # the route's params model, or None
    body: Any  # the route's body model, or None
    view: Topology | None  # the PoP agent's view of the mesh (routes with agent_view)
    now: float


Role = Literal["public", "read", "admin"]


@dataclass(frozen=True, slots=True)
class Route:
    operation: str  # the OpenAPI operationId; the CLI calls routes by it
    method: str
    path: str  # aiohttp and OpenAPI write parameters alike: /v1/clients/{name}
    role: Role  # public: no token; read: any token; admin: an admin token
    tag: str
    summary: str
    answer: type[BaseModel]
    run: Callable[[Call], BaseModel] | None  # None: served by pop/server.py, documented here
    params: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()  # what the use case may answer besides the checks' errors
    max_body: int = MAX_REQUEST_BYTES
    agent_view: bool = False  # the use case reads the PoP agent's view of the mesh


# -- the OpenAPI document, built from the table ---------------------------------------------

_ERROR_TEXT = {
    400: "malformed request: the message names the field",
    401: "no token, or not one of ours",
    403: "the token's role may not do this",
    404: "no such thing",
    408: "the body came too slowly",
    409: "contradicts the network's state",
    413: "body too large",
    415: "the body must be application/json",
    429: "too many failed attempts from this address: wait Retry-After seconds",
}


def error_statuses(route: Route) -> list[int]:
    """Every status but the route's own the route may answer."""
    found = set(route.errors)
    if route.role != "public":
        found |= {401, 429}
    if route.role == "admin":
        found.add(403)
    if route.params is not None:
        found |= {400, 404}
    if route.body is not None:
        found |= {400, 408, 413, 415}
    return sorted(found)


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``: paths from the table, schemas from its models."""
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            if schemas.setdefault(name, sub) != sub:
                raise RuntimeError(f"two different schemas are named {name}")
        return {"$ref": REF.format(model=model.__name__)}

    def content(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        return {JSON_TYPE: {"schema": ref(model, mode)}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        responses: dict[str, Any] = {
            str(route.status): {
                "description": route.summary,
                "content": content(route.answer, "serialization"),
            }
        }
        for status in error_statuses(route):
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": content(Error, "serialization"),
            }
        if route.role != "public":
            responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            responses["429"]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.tag],
            "x-naas-role": route.role,
            "security": [] if route.role == "public" else [{"bearer": []}],
            "responses": responses,
        }
        if route.params is not None:
            properties = route.params.model_json_schema()["properties"]
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": _untitled(schema)}
                for name, schema in properties.items()
            ]
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": content(route.body, "validation")}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "NaaS PoP API",
            "version": __version__,
            "description": "Clients, invitations, members and the network document of one NaaS network "
            "(docs/api.md). Served by every PoP on its enrollment port; the TLS key is pinned.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `naas token create`",
                }
            },
        },
    }


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "title"}
