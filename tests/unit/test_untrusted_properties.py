"""Every parser of hostile input, on any input: it returns, or raises its one documented
error (``BadPacket`` for the mesh's bytes), and nothing else (hypothesis).

    random bytes / JSON values ---\\
                                   >--> parse_*_untrusted --> a value, or its one error
    valid messages, mutated ------/     (anything else is a bug: it would escape the
    (bit flips, cuts, insertions,        drop counters, or the PoP's one-line answers)
     fields replaced in the JSON)

The parsers are found at run time: every function or method of the naas package whose
name ends in ``_untrusted``. ``test_every_parser_has_a_property_test`` fails while one
has no entry in ``CASES`` below, so a new parser comes with its property test. The
same is done end to end: garbage thrown at a NodeCore (one by one, as GRO runs, and at
the express lane) is counted as drops and never raises.

The examples are derandomized (the same every run, as CI wants); set
``NAAS_PROPERTY_EXAMPLES`` to a larger number to hunt with fresh random ones.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
import os
import pkgutil
import re
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import naas
from helpers import NETWORK, Authority
from naas.core import dhcp, offload, wire
from naas.core.arp import build_arp_reply, build_gratuitous_arp, parse_arp_untrusted
from naas.core.control_messages import (
    Document,
    LinkState,
    LinkStateDigest,
    LinkStateRequest,
    LinkStateSum,
    LossReport,
    Members,
    MembersDigest,
    MembersSum,
    Probe,
    ProbeAck,
    decode_control_untrusted,
    encode_control,
)
from naas.core.cookie import mac_key, with_macs
from naas.core.ethernet import ETHERTYPE_IPV4, build_frame
from naas.core.flow import Flow, parse_flow_untrusted
from naas.core.handshake import InitiatorHandshake
from naas.core.network_document import (
    make_document,
    open_document_untrusted,
    pack_for_mesh,
    unpack_from_mesh_untrusted,
)
from naas.core.routing import LinkStateDelta, decode_delta_untrusted, encode_delta, sign_delta
from naas.core.wire import HANDSHAKE_TIMESTAMP, PROLOGUE_PREFIX, BadPacket, DropReason
from naas.model.codec import CodecError, b64e, certificate_from_bytes_untrusted, certificate_to_bytes
from naas.model.document import DocumentError, NetworkDocument, Revocation, parse_document_untrusted
from naas.model.ids import BROADCAST_MAC, Endpoint
from naas.model.network import MemberRecord
from naas.model.policy import parse_policy
from naas.pop.api import ROUTES_BY_OPERATION, ApiError, parse_body_untrusted
from naas.pop.api_schema import ApplyRequest
from naas.pop.invitations import (
    PIN_PREFIX,
    InvitationError,
    build_url,
    make_token,
    parse_url_untrusted,
)
from naas.pop.server import EnrollmentService
from sim.test_node_core import build_mesh, ethernet
from unit.test_offload import ipv4_super, ipv6_super

RANDOM = "NAAS_PROPERTY_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("NAAS_PROPERTY_EXAMPLES", "200"))
PROPERTIES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,  # no .hypothesis/ directory left in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_RANDOM_BYTES = 400

# -- strategies ------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, valid: Sequence[bytes]) -> bytes:
    """One of ``valid`` with a few bytes flipped, overwritten, cut, inserted or removed."""
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "extend"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def hostile_bytes(valid: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=MAX_RANDOM_BYTES), mutated(valid))


# Characters for text: what parsers split on, controls, spaces, non-ASCII, a lone
# surrogate. An alphabet of our own also spares hypothesis its table of all of Unicode
# (seconds to build, in every run: its cache lives in the run's temporary directory).
ALPHABET = string.printable + "\x00\x1b\x7f\x85\xa0\xe9\u2028\u202e\ufeff\uffff\U0001f600\ud800"


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(ALPHABET), max_size=max_size)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2**32, 2**64, -(2**63), 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts(24)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts(10), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*path, index))
    return found


@st.composite
def mutated_json(draw: st.DrawFn, valid: Sequence[Any]) -> Any:
    """One of the JSON values ``valid`` with a few nodes replaced, removed or added."""
    value = copy.deepcopy(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        replacement = draw(JSON_VALUES)
        if not path:
            value = replacement
            continue
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "remove", "add"]))
        if op == "replace":
            parent[path[-1]] = replacement
        elif op == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(texts(10))] = replacement
        else:
            parent.insert(path[-1], replacement)
    return value


def json_text(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON text of ``values`` (NaN and Infinity included, as Python's json reads them)."""
    return values.map(lambda value: json.dumps(value).encode())


def json_inputs(valid: Sequence[Any]) -> st.SearchStrategy[bytes]:
    """Bytes for a JSON parser: random, mutated as bytes, or mutated as JSON; and
    nesting deep enough to exhaust the JSON decoder's recursion."""
    texts = [json.dumps(v).encode() for v in valid]
    return st.one_of(
        hostile_bytes(texts),
        json_text(mutated_json(valid)),
        json_text(JSON_VALUES),
        st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"[" * 5_000 + b"]" * 5_000]),
    )


# -- valid messages to start from ------------------------------------------------------------

AUTHORITY = Authority()
ALPHA = AUTHORITY.identity("alpha", 2, "10.77.1.2/16")
BRAVO = AUTHORITY.identity("bravo", 3, None, pop=True)
RECORDS = (
    MemberRecord(ALPHA.certificate, (Endpoint("192.0.2.2", 5640), Endpoint("2001:db8::2", 5640))),
    MemberRecord(BRAVO.certificate),
)
DELTAS = (
    sign_delta(LinkStateDelta(2, 7, True, ((3, 1500), (9, 60_000_000))), ALPHA.signing_private),
    sign_delta(LinkStateDelta(2, 8, False, ((3, 0),)), ALPHA.signing_private),
)
CONTROL_MESSAGES = (
    Probe(1, 1000.5),
    ProbeAck(2**40, 0),
    Members(RECORDS),
    LinkState(DELTAS, flooded=True),
    LinkStateRequest(2),
    LinkStateDigest(((2, 7), (3, 1)), reply=True),
    LinkStateSum(bytes(range(16))),
    MembersSum(bytes(16)),
    MembersDigest(((2, 1_799_999_990),)),
    LossReport(100, 3),
)
RENEW_BODIES = [
    {
        "network": "test-net",
        "certificate": json.loads(certificate_to_bytes(RECORDS[0].certificate)),
        "time": 1_800_000_000,
        "signature": b64e(bytes(64)),
    }
]
POLICY_JSON = {
    "default": "deny",
    "rule": [
        {"name": "ssh", "from": ["group:ops", "member:alpha"], "to": ["cidr:10.9.0.0/24"], "proto": "tcp",
         "ports": ["22", "8000-8100"], "action": "allow"},
        {"name": "frames", "proto": "ethertype:0x88b5", "action": "deny"},
    ],
}  # fmt: skip
DOCUMENTS = (
    make_document(
        AUTHORITY.private,
        network=NETWORK,
        version=7,
        issued_at=1_800_000_000,
        groups={2: ("db", "web"), 3: ()},
        revoked=(Revocation(9, "stolen-laptop", 1_830_000_000),),
        extra_sections={"rules": [{"from": "web", "to": "db", "port": 5432}]},
    ),
    make_document(AUTHORITY.private, network=NETWORK, version=1, issued_at=0, groups={}, revoked=()),
    make_document(
        AUTHORITY.private,
        network=NETWORK,
        version=8,
        issued_at=1_800_000_000,
        groups={},
        revoked=(),
        policy=parse_policy(POLICY_JSON),
        allowed_addresses={2: ("10.9.0.0/24", "192.168.1.7/32")},
    ),
)
CONTROL_MESSAGES = (*CONTROL_MESSAGES, Document(DOCUMENTS[0].body))
CONTROL_JSON = [json.loads(encode_control(message)[1:]) for message in CONTROL_MESSAGES]
MAC_A, MAC_B = bytes.fromhex("024e00000002"), bytes.fromhex("024e00000003")


def dhcp_frame(options: bytes, *, flags: int = 0x8000) -> bytes:
    """A client's BOOTREQUEST to port 67, as udhcpc broadcasts it."""
    zero = bytes(4)
    bootp = dhcp.BOOTP.pack(
        1, 1, 6, 0, 0x1234, 0, flags, zero, zero, zero, zero, MAC_A + bytes(10), bytes(64), bytes(128)
    )
    payload = bootp + dhcp.MAGIC_COOKIE + options + b"\xff"
    udp = dhcp.UDP_HEADER.pack(68, 67, dhcp.UDP_HEADER.size + len(payload), 0) + payload
    ip = dhcp.IPV4_HEADER.pack(0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, zero, b"\xff" * 4) + udp
    return build_frame(BROADCAST_MAC, MAC_A, ETHERTYPE_IPV4, ip)


DHCP_FRAMES = [
    dhcp_frame(b"\x35\x01\x01\x3d\x07\x01" + MAC_A + b"\x0c\x04host\x37\x03\x01\x03\x1a"),  # DISCOVER
    dhcp_frame(b"\x35\x01\x03\x32\x04\xac\x20\x01\x0b\x36\x04\xac\x20\x00\x01"),  # REQUEST (selecting)
    dhcp_frame(b"\x35\x01\x08", flags=0),  # INFORM
    dhcp_frame(b"\x34\x01\x03\x35\x01\x01"),  # options overloaded into file and sname (empty)
]
GRATUITOUS = build_gratuitous_arp(MAC_A, IPv4Address("10.77.1.2"))
ARP_FRAMES = [GRATUITOUS, build_arp_reply(parse_arp_untrusted(GRATUITOUS), MAC_B)]
NOISE = bytes(range(256)) * 2
WIRE_MESSAGES = [
    wire.pack_initiation(3, 2, 77, NOISE[: wire.INITIATION_NOISE_MIN + 100]),
    wire.pack_response(2, 3, 78, 77, NOISE[: wire.RESPONSE_NOISE_MIN]),
    wire.pack_cookie_reply(2, 3, 77, NOISE[: wire.COOKIE_REPLY_LEN - wire.OUTER.size - 4]),
]
PIN = PIN_PREFIX + b64e(bytes(range(32)))
TOKEN = make_token(bytes(range(1, 33)))
URLS = [
    build_url("test-net", [(Endpoint("192.0.2.1", 8443), PIN)], TOKEN),
    build_url("test-net", [(Endpoint("192.0.2.1", 8443), PIN), (Endpoint("2001:db8::1", 443), PIN)], TOKEN),
]
ENROLLMENT = SimpleNamespace(_config=SimpleNamespace(name="test-net"))  # all the parser reads of self
API_APPLY_BODIES = [
    {
        "clients": [{"name": "web", "ip": "10.0.0.5", "groups": ["a", "b"]}, {"name": "db"}],
        "prune": True,
        "settings": {"name": "test-net", "subnet": "10.0.0.0/16", "mesh_port": 5640, "pops": []},
        "policy": POLICY_JSON,
    }
]
ENROLL_BODIES = [
    {
        "network": "test-net",
        "token": TOKEN,
        "static_public": b64e(b"\x01" * 32),
        "signing_public": b64e(b"\x02" * 32),
    }
]
SUPER_FRAMES = [ipv4_super(bytes(3000), 1000), ipv6_super(bytes(2000), 700)]


def vnet_headers() -> st.SearchStrategy[bytes]:
    """virtio-net headers near the ones a TAP writes, and random ones."""
    fields = st.tuples(
        st.sampled_from([0, offload.VNET_NEEDS_CSUM, offload.VNET_DATA_VALID, 3, 4, 0xFF]),
        st.sampled_from([0, 1, 3, 4, 5, 0x80, 0x81, 0x84, 0xFF]),
        st.integers(0, 0xFFFF),
        st.sampled_from([0, 1, 47, 48, 1448, 0xFFFF]),
        st.sampled_from([0, 13, 14, 34, 54, 0xFFFF]) | st.integers(0, 0xFFFF),
        st.sampled_from([0, 6, 16, 0xFFFF]),
    )
    return fields.map(lambda f: offload.VNET_HDR.pack(*f)) | st.binary(max_size=12)


# -- the table: one entry per parser -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    call: Callable[[Any], object]  # the parser applied to one drawn input
    inputs: st.SearchStrategy[Any]
    errors: tuple[type[BaseException], ...]  # what its docstring says it raises
    results: tuple[type, ...] = (object,)  # what it may return


CASES: dict[str, Case] = {
    "naas.core.wire.parse_initiation_untrusted": Case(
        wire.parse_initiation_untrusted, hostile_bytes(WIRE_MESSAGES), (BadPacket,), (wire.Initiation,)
    ),
    "naas.core.wire.parse_response_untrusted": Case(
        wire.parse_response_untrusted, hostile_bytes(WIRE_MESSAGES), (BadPacket,), (wire.Response,)
    ),
    "naas.core.wire.parse_cookie_reply_untrusted": Case(
        wire.parse_cookie_reply_untrusted, hostile_bytes(WIRE_MESSAGES), (BadPacket,), (wire.CookieReply,)
    ),
    "naas.core.arp.parse_arp_untrusted": Case(parse_arp_untrusted, hostile_bytes(ARP_FRAMES), (BadPacket,)),
    "naas.core.flow.parse_flow_untrusted": Case(
        parse_flow_untrusted, hostile_bytes(ARP_FRAMES + DHCP_FRAMES), (BadPacket,), (Flow,)
    ),
    "naas.core.dhcp.parse_dhcp_untrusted": Case(
        dhcp.parse_dhcp_untrusted, hostile_bytes(DHCP_FRAMES), (BadPacket,), (dhcp.DhcpRequest, type(None))
    ),
    "naas.core.offload.check_vnet_untrusted": Case(
        lambda args: offload.check_vnet_untrusted(*args),
        st.tuples(vnet_headers(), st.integers(0, offload.MAX_SUPER_FRAME + 100)),
        (BadPacket,),
        (tuple,),
    ),
    "naas.core.control_messages.decode_control_untrusted": Case(
        decode_control_untrusted, json_inputs(CONTROL_JSON), (BadPacket,)
    ),
    "naas.core.routing.decode_delta_untrusted": Case(
        decode_delta_untrusted,
        st.one_of(JSON_VALUES, mutated_json([encode_delta(d) for d in DELTAS])),
        (BadPacket,),
        (LinkStateDelta,),
    ),
    "naas.model.document.parse_document_untrusted": Case(
        parse_document_untrusted, json_inputs([json.loads(d.body) for d in DOCUMENTS]), (DocumentError,)
    ),
    "naas.core.network_document.open_document_untrusted": Case(
        lambda body: open_document_untrusted(body, AUTHORITY.public, NETWORK),
        json_inputs([json.loads(d.body) for d in DOCUMENTS]),
        (DocumentError,),
        (NetworkDocument,),
    ),
    "naas.core.network_document.unpack_from_mesh_untrusted": Case(
        unpack_from_mesh_untrusted,
        st.one_of(
            JSON_LEAVES,
            texts(100),
            mutated([pack_for_mesh(d.body).encode() for d in DOCUMENTS]).map(lambda b: b.decode("latin-1")),
            hostile_bytes([zlib.compress(d.body) for d in DOCUMENTS]).map(b64e),
        ),
        (CodecError,),
        (bytes,),
    ),
    "naas.model.codec.certificate_from_bytes_untrusted": Case(
        certificate_from_bytes_untrusted,
        json_inputs([json.loads(certificate_to_bytes(r.certificate)) for r in RECORDS]),
        (CodecError,),
    ),
    "naas.pop.invitations.parse_url_untrusted": Case(
        parse_url_untrusted,
        st.one_of(
            texts(200),
            mutated([u.encode() for u in URLS]).map(lambda b: b.decode("latin-1")),
            st.builds(lambda url, junk: url + junk, st.sampled_from(URLS), texts(20)),
            JSON_LEAVES,  # not even text
        ),
        (InvitationError,),
    ),
    "naas.pop.api.parse_body_untrusted": Case(  # the REST API's biggest body: POST /v1/apply
        functools.partial(parse_body_untrusted, ROUTES_BY_OPERATION["apply"]),
        json_inputs(API_APPLY_BODIES),
        (ApiError,),
        (ApplyRequest,),
    ),
    "naas.pop.server.EnrollmentService._parse_request_untrusted": Case(
        functools.partial(EnrollmentService._parse_request_untrusted, ENROLLMENT),  # type: ignore[arg-type]
        json_inputs(ENROLL_BODIES),
        (),  # it never raises: a problem comes back as text
        (tuple, str),
    ),
    "naas.pop.server.EnrollmentService._parse_renew_untrusted": Case(
        functools.partial(EnrollmentService._parse_renew_untrusted, ENROLLMENT),  # type: ignore[arg-type]
        json_inputs(RENEW_BODIES),
        (),  # it never raises: a problem comes back as text
        (tuple, str),
    ),
}

# -- finding the parsers -----------------------------------------------------------------------


def discovered_parsers() -> set[str]:
    """Every function and method of the naas package whose name ends in ``_untrusted``."""
    found = set()
    for info in pkgutil.walk_packages(naas.__path__, "naas."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__:
                continue  # imported from elsewhere: found where it is defined
            if inspect.isfunction(value) and name.endswith("_untrusted"):
                found.add(f"{module.__name__}.{name}")
            elif inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if attribute.endswith("_untrusted") and callable(getattr(member, "__func__", member)):
                        found.add(f"{module.__name__}.{value.__qualname__}.{attribute}")
    return found


def test_every_parser_has_a_property_test() -> None:
    found = discovered_parsers()
    assert len(found) >= 10
    missing, stale = sorted(found - CASES.keys()), sorted(CASES.keys() - found)
    assert not missing, f"parsers of hostile input with no entry in CASES: {missing}"
    assert not stale, f"CASES names parsers that are gone: {stale}"


def test_every_untrusted_def_in_the_source_is_found() -> None:
    """A parser the import walk cannot see (a nested function, say) must not slip by."""
    found_names = {name.rpartition(".")[2] for name in discovered_parsers()}
    package = Path(naas.__file__).parent
    defined = {
        (str(path.relative_to(package)), name)
        for path in package.rglob("*.py")
        for name in re.findall(r"^\s*(?:async\s+)?def\s+(\w+_untrusted)\s*\(", path.read_text(), re.MULTILINE)
    }
    assert defined and not {(path, name) for path, name in defined if name not in found_names}


# -- the property ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_parser_returns_or_raises_its_one_error(name: str) -> None:
    case = CASES[name]

    @PROPERTIES
    @given(case.inputs)
    def holds(value: Any) -> None:
        try:
            result = case.call(value)
        except case.errors:
            return
        assert isinstance(result, case.results), result

    holds()


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_valid_messages_parse(name: str) -> None:
    """The mutations start from messages the parsers accept (else they test little)."""
    valid: dict[str, list[Any]] = {
        "naas.core.wire.parse_initiation_untrusted": WIRE_MESSAGES[:1],
        "naas.core.wire.parse_response_untrusted": WIRE_MESSAGES[1:2],
        "naas.core.wire.parse_cookie_reply_untrusted": WIRE_MESSAGES[2:],
        "naas.core.arp.parse_arp_untrusted": ARP_FRAMES,
        "naas.core.flow.parse_flow_untrusted": ARP_FRAMES + DHCP_FRAMES,
        "naas.core.dhcp.parse_dhcp_untrusted": DHCP_FRAMES,
        "naas.core.offload.check_vnet_untrusted": [(offload.PLAIN_VNET_HDR, 60)],
        "naas.core.control_messages.decode_control_untrusted": [json.dumps(v).encode() for v in CONTROL_JSON],
        "naas.core.routing.decode_delta_untrusted": [encode_delta(d) for d in DELTAS],
        "naas.model.codec.certificate_from_bytes_untrusted": [
            certificate_to_bytes(r.certificate) for r in RECORDS
        ],
        "naas.pop.invitations.parse_url_untrusted": URLS,
        "naas.model.document.parse_document_untrusted": [d.body for d in DOCUMENTS],
        "naas.core.network_document.open_document_untrusted": [d.body for d in DOCUMENTS],
        "naas.core.network_document.unpack_from_mesh_untrusted": [pack_for_mesh(d.body) for d in DOCUMENTS],
        "naas.pop.api.parse_body_untrusted": [json.dumps(body).encode() for body in API_APPLY_BODIES],
        "naas.pop.server.EnrollmentService._parse_request_untrusted": [
            json.dumps(body).encode() for body in ENROLL_BODIES
        ],
        "naas.pop.server.EnrollmentService._parse_renew_untrusted": [
            json.dumps(body).encode() for body in RENEW_BODIES
        ],
    }
    assert name in valid, f"give {name} its valid messages here too"
    for message in valid[name]:
        result = CASES[name].call(message)
        assert result is not None and not isinstance(result, str), result


@PROPERTIES
@given(
    st.sampled_from(SUPER_FRAMES).flatmap(
        lambda sup: st.tuples(
            st.one_of(st.just(sup.vnet), mutated([sup.vnet]), vnet_headers()),
            st.one_of(st.just(sup.frame), mutated([sup.frame])),
        )
    )
)
def test_software_offloads_of_a_peers_frame_return_frames_or_raise_bad_offload(
    vnet_and_frame: tuple[bytes, bytes],
) -> None:
    """A peer's OFFLOAD_FRAME (header and frame) reaches these after check_vnet_untrusted:
    "input that does not fit raises BadPacket(BAD_OFFLOAD) and nothing else" (core/offload.py)."""
    vnet, frame = vnet_and_frame
    for cut in (offload.software_segments, lambda v, f: offload.smaller_super_frames(v, f, 2)):
        try:
            pieces = cut(vnet, frame)
        except BadPacket as exc:
            assert exc.reason is DropReason.BAD_OFFLOAD
        else:
            assert all(isinstance(piece, bytes | bytearray) for piece in pieces)


# -- end to end: a NodeCore takes any datagram -----------------------------------------------------

STRANGER = ("198.51.100.66", 40000)


@functools.cache
def mesh() -> tuple[Any, list[bytes]]:
    """alpha, bravo and a PoP with sessions up; the datagrams that flew between them."""
    net, _ = build_mesh()
    net.run(3.0)
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"x" * 100)], net.now)
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"y" * 3000)], net.now)  # fragments
    net.pump()
    kinds = {datagram[0] for datagram in net.wire_log}
    assert {wire.TYPE_INITIATION, wire.TYPE_RESPONSE, wire.TYPE_DATA} <= kinds, kinds
    return net, list(dict.fromkeys(net.wire_log))


def datagrams() -> st.SearchStrategy[bytes]:
    return st.deferred(lambda: hostile_bytes(mesh()[1]))


def drained(core: Any) -> None:
    core.take_all_datagrams()
    core.take_frames()
    core.take_events()


@PROPERTIES
@given(st.lists(datagrams(), min_size=1, max_size=8))
def test_a_core_counts_any_datagrams_from_a_stranger_as_drops(batch: list[bytes]) -> None:
    net, _ = mesh()
    bravo = net.cores["bravo"]
    before = sum(bravo.drops.values())
    bravo.datagrams_received([(datagram, STRANGER) for datagram in batch], net.now)
    drained(bravo)
    assert sum(bravo.drops.values()) >= before + len(batch)  # every one a drop with a reason


@PROPERTIES
@given(st.lists(datagrams(), min_size=1, max_size=8))
def test_a_core_takes_any_datagrams_from_a_member_without_raising(batch: list[bytes]) -> None:
    net, _ = mesh()
    bravo = net.cores["bravo"]
    bravo.datagrams_received([(datagram, net.address_of("alpha")) for datagram in batch], net.now)
    drained(bravo)


@PROPERTIES
@given(st.lists(datagrams(), min_size=1, max_size=6), st.integers(1, 1500), st.booleans())
def test_a_core_takes_any_gro_run_without_raising(batch: list[bytes], segment: int, member: bool) -> None:
    net, _ = mesh()
    bravo = net.cores["bravo"]
    sender = net.address_of("alpha") if member else STRANGER
    bravo.runs_received([(b"".join(batch), sender, segment)], net.now)
    drained(bravo)


@PROPERTIES
@given(datagrams(), st.booleans())
def test_the_express_lane_takes_any_datagram_without_raising(datagram: bytes, member: bool) -> None:
    net, _ = mesh()
    bravo = net.cores["bravo"]
    frame = bravo.express_receive(datagram, net.address_of("alpha") if member else STRANGER, net.now)
    assert frame is None or isinstance(frame, bytes | bytearray | memoryview)
    drained(bravo)


def test_an_initiation_whose_certificate_nests_deep_is_a_bad_certificate() -> None:
    """Anyone with a member's public key can make an initiation that opens; the
    certificate inside is JSON, and 5,000 nested brackets once raised RecursionError out
    of ``datagrams_received`` (certificate_from_bytes_untrusted caught only ValueError)."""
    net, _ = mesh()
    bravo = net.cores["bravo"]
    handshake = InitiatorHandshake(
        local_static_private=bytes(range(32)),
        remote_static_public=bravo.identity.certificate.static_public,
        prologue=PROLOGUE_PREFIX + NETWORK.encode(),
    )
    payload = HANDSHAKE_TIMESTAMP.pack(10**13) + b"[" * 5000
    datagram = wire.pack_initiation(bravo.node_id, 4242, 1, handshake.create_initiation(bytes(32), payload))
    datagram = with_macs(datagram, mac_key(bravo.identity.certificate.static_public), None)[0]
    before = bravo.drops[DropReason.BAD_CERTIFICATE]
    bravo.datagrams_received([(datagram, STRANGER)], net.now)
    drained(bravo)
    assert bravo.drops[DropReason.BAD_CERTIFICATE] == before + 1


def test_the_mesh_still_works_after_the_garbage() -> None:
    net, _ = mesh()
    alpha, bravo = net.cores["alpha"], net.cores["bravo"]
    net.run(2.0)
    alpha.tap_frames_received([ethernet(bravo.mac, alpha.mac, b"still here")], net.now)
    net.pump()
    assert ethernet(bravo.mac, alpha.mac, b"still here") in net.delivered_frames["bravo"]
