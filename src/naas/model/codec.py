"""The one JSON mapping of the model: certificates, members, network descriptions.

Everything that crosses a process or host boundary as JSON (enrollment answers,
on-disk state, membership gossip, the control socket) goes through here, so there is
exactly one spelling of each field. Bytes are unpadded base64url. ``tbs_bytes`` is the
canonical form of a certificate that the CA signs: sorted keys, no spaces, UTF-8.

Decoders take untrusted input: anything malformed raises ``CodecError`` (a
``ValueError``) naming the field.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from naas.model.certificate import Certificate
from naas.model.ids import Endpoint, NodeId, is_valid_node_id
from naas.model.network import MemberRecord, NetworkInfo, PopInfo


class CodecError(ValueError):
    pass


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None, field: str = "value") -> bytes:
    if not isinstance(text, str):
        raise CodecError(f"{field}: expected base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise CodecError(f"{field}: not base64url") from None
    if length is not None and len(data) != length:
        raise CodecError(f"{field}: expected {length} bytes, got {len(data)}")
    return data


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise CodecError(f"{where}.{key}: missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CodecError(f"{where}.{key}: wrong type")
    return value


# -- certificates -------------------------------------------------------------------


def _certificate_fields(cert: Certificate) -> dict[str, Any]:
    return {
        "network": cert.network,
        "name": cert.name,
        "node_id": cert.node_id,
        "is_pop": cert.is_pop,
        "static_public": b64e(cert.static_public),
        "signing_public": b64e(cert.signing_public),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "ip": str(cert.ip) if cert.ip is not None else None,
        "groups": list(cert.groups),
    }


def tbs_bytes(cert: Certificate) -> bytes:
    """The bytes the CA signs: every field but the signature, canonical JSON."""
    return canonical_json({"naas-certificate": 1, **_certificate_fields(cert)})


def certificate_to_dict(cert: Certificate) -> dict[str, Any]:
    return {**_certificate_fields(cert), "signature": b64e(cert.signature)}


def certificate_from_dict(obj: Any, where: str = "certificate") -> Certificate:
    if not isinstance(obj, Mapping):
        raise CodecError(f"{where}: expected an object")
    node_id = _get(obj, "node_id", int, where)
    if not is_valid_node_id(node_id):
        raise CodecError(f"{where}.node_id: out of range")
    ip_text = obj.get("ip")
    try:
        if ip_text is not None and not isinstance(ip_text, str):
            raise ValueError("not text")
        ip = IPv4Interface(ip_text) if ip_text is not None else None
    except ValueError:
        raise CodecError(f"{where}.ip: not an IPv4 interface") from None
    groups = _get(obj, "groups", list, where)
    if not all(isinstance(g, str) for g in groups):
        raise CodecError(f"{where}.groups: expected strings")
    return Certificate(
        network=_get(obj, "network", str, where),
        name=_get(obj, "name", str, where),
        node_id=NodeId(node_id),
        is_pop=_get(obj, "is_pop", bool, where),
        static_public=b64d(_get(obj, "static_public", str, where), length=32, field=f"{where}.static_public"),
        signing_public=b64d(
            _get(obj, "signing_public", str, where), length=32, field=f"{where}.signing_public"
        ),
        not_before=_get(obj, "not_before", int, where),
        not_after=_get(obj, "not_after", int, where),
        ip=ip,
        groups=tuple(groups),
        signature=b64d(_get(obj, "signature", str, where), length=64, field=f"{where}.signature"),
    )


def certificate_to_bytes(cert: Certificate) -> bytes:
    return canonical_json(certificate_to_dict(cert))


def certificate_from_bytes_untrusted(data: bytes) -> Certificate:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise CodecError("certificate: not JSON") from None
    return certificate_from_dict(obj)


# -- members and networks -------------------------------------------------------------


def endpoint_from_text(text: Any, where: str) -> Endpoint:
    if not isinstance(text, str):
        raise CodecError(f"{where}: expected host:port")
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise CodecError(f"{where}: {exc}") from None


def member_to_dict(member: MemberRecord) -> dict[str, Any]:
    return {
        "certificate": certificate_to_dict(member.certificate),
        "endpoints": [str(e) for e in member.endpoints],
    }


def member_from_dict(obj: Any, where: str = "member") -> MemberRecord:
    cert = certificate_from_dict(_get(obj, "certificate", Mapping, where), f"{where}.certificate")
    endpoints = _get(obj, "endpoints", list, where)
    return MemberRecord(
        certificate=cert,
        endpoints=tuple(endpoint_from_text(e, f"{where}.endpoints") for e in endpoints[:8]),
    )


def pop_to_dict(pop: PopInfo) -> dict[str, Any]:
    return {
        "name": pop.name,
        "mesh_endpoint": str(pop.mesh_endpoint),
        "enrollment_endpoint": str(pop.enrollment_endpoint),
        "tls_pin": pop.tls_pin,
    }


def pop_from_dict(obj: Any, where: str = "pop") -> PopInfo:
    return PopInfo(
        name=_get(obj, "name", str, where),
        mesh_endpoint=endpoint_from_text(_get(obj, "mesh_endpoint", str, where), f"{where}.mesh_endpoint"),
        enrollment_endpoint=endpoint_from_text(
            _get(obj, "enrollment_endpoint", str, where), f"{where}.enrollment_endpoint"
        ),
        tls_pin=_get(obj, "tls_pin", str, where),
    )


def network_to_dict(net: NetworkInfo) -> dict[str, Any]:
    return {
        "name": net.name,
        "mesh_port": net.mesh_port,
        "ca_public": b64e(net.ca_public),
        "pops": [pop_to_dict(p) for p in net.pops],
        "subnet": str(net.subnet) if net.subnet is not None else None,
        "gateway": str(net.gateway) if net.gateway is not None else None,
    }


def network_from_dict(obj: Any, where: str = "network") -> NetworkInfo:
    subnet_text = obj.get("subnet") if isinstance(obj, Mapping) else None
    gateway_text = obj.get("gateway") if isinstance(obj, Mapping) else None
    try:
        subnet = IPv4Network(subnet_text) if subnet_text is not None else None
        gateway = IPv4Address(gateway_text) if gateway_text is not None else None
    except ValueError:
        raise CodecError(f"{where}: bad subnet or gateway") from None
    pops = _get(obj, "pops", list, where)
    return NetworkInfo(
        name=_get(obj, "name", str, where),
        mesh_port=_get(obj, "mesh_port", int, where),
        ca_public=b64d(_get(obj, "ca_public", str, where), length=32, field=f"{where}.ca_public"),
        pops=tuple(pop_from_dict(p, f"{where}.pops") for p in pops),
        subnet=subnet,
        gateway=gateway,
    )
