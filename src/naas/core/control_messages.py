"""Control messages members exchange inside their encrypted sessions.

They ride in DATA packets with the inner kind CONTROL, so they are already
authenticated as coming from the session's peer; they are still parsed as untrusted
(a member may be buggy or compromised). JSON keeps them readable in captures of
decrypted traffic and in tests; they are rare next to data frames.

    probe      {"t": "probe", "seq": n, "ts": sender's clock}     -> answered by
    probe_ack  {"t": "probe_ack", "seq": n, "ts": echoed}            (RTT = now - ts)
    members    {"t": "members", "members": [member records]}       membership gossip
    lsd        {"t": "lsd", "deltas": [signed link-state deltas]}   routing (core/routing.py)
    lsd_req    {"t": "lsd_req", "origin": node id}                  "send me its history"
    lsd_sum    {"t": "lsd_sum", "h": hex}                           "my link state hashes to h"
    lsd_digest {"t": "lsd_digest", "seqs": [[origin, seq], ...], "reply": b}   anti-entropy
    members_sum    {"t": "members_sum", "h": hex}                   "my member table hashes to h"
    members_digest {"t": "members_digest", "v": [[node, not_before], ...], "reply": b}
    loss       {"t": "loss", "n": opened, "lost": lost}              "of your messages since my
                                                                     last report" (core/loss.py)
    doc        {"t": "doc", "d": base64url(zlib(body))}              the signed network document
                                                                     (core/network_document.py)

Anti-entropy is two-step so that it costs almost nothing at rest: a 16-byte hash
(``*_sum``) first, and the full list of versions (``*_digest``) only when the hashes
differ; the receiver of a digest sends what the sender lacks, and answers with its own
digest (``reply`` true, never answered) when it lacks something itself.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, TypeGuard

from naas.core.constants import MAX_CONTROL_BYTES, MAX_MEMBERS_PER_GOSSIP
from naas.core.network_document import pack_for_mesh, unpack_from_mesh_untrusted
from naas.core.routing import LinkStateDelta, decode_delta_untrusted, encode_delta
from naas.core.wire import INNER_CONTROL, BadPacket, DropReason
from naas.model.codec import CodecError, canonical_json, member_from_dict, member_to_dict
from naas.model.network import MemberRecord


@dataclass(frozen=True, slots=True)
class Probe:
    seq: int
    ts: float


@dataclass(frozen=True, slots=True)
class ProbeAck:
    seq: int
    ts: float


@dataclass(frozen=True, slots=True)
class LossReport:
    opened: int  # messages from the member opened since the last report
    lost: int  # messages from it that never arrived, in the same time


@dataclass(frozen=True, slots=True)
class Document:
    body: bytes  # the signed network document, not yet checked (core/network_document.py)


@dataclass(frozen=True, slots=True)
class Members:
    members: tuple[MemberRecord, ...]


@dataclass(frozen=True, slots=True)
class LinkState:
    deltas: tuple[LinkStateDelta, ...]
    flooded: bool = False  # passed on in a flood (the sender also sent it to its neighbours)


@dataclass(frozen=True, slots=True)
class LinkStateRequest:
    origin: int


@dataclass(frozen=True, slots=True)
class LinkStateDigest:
    seqs: tuple[tuple[int, int], ...]  # (origin, newest seq held)
    reply: bool = False


@dataclass(frozen=True, slots=True)
class LinkStateSum:
    hash: bytes  # SUM_BYTES


@dataclass(frozen=True, slots=True)
class MembersSum:
    hash: bytes  # SUM_BYTES


@dataclass(frozen=True, slots=True)
class MembersDigest:
    versions: tuple[tuple[int, int], ...]  # (node id, certificate not_before)
    reply: bool = False


MAX_DELTAS_PER_MESSAGE = 64
MAX_DIGEST_ENTRIES = 2048
SUM_BYTES = 16
_SUM_HEX = re.compile(f"[0-9a-f]{{{2 * SUM_BYTES}}}")


def sum_of_pairs(pairs: list[tuple[int, int]], domain: bytes) -> bytes:
    """The SUM_BYTES hash a ``*_sum`` message carries: of the sorted (id, version) pairs,
    under a per-table ``domain`` (at most 16 bytes)."""
    flat = ",".join(f"{key}:{version}" for key, version in pairs).encode()
    return blake2b(flat, digest_size=SUM_BYTES, person=domain).digest()


ControlMessage = (
    Probe
    | ProbeAck
    | Members
    | LinkState
    | LinkStateRequest
    | LinkStateDigest
    | LinkStateSum
    | MembersSum
    | MembersDigest
    | LossReport
    | Document
)


def encode_control(message: ControlMessage) -> bytes:
    """The inner payload (kind byte included) carrying ``message``."""
    body: dict[str, Any]
    if isinstance(message, Probe):
        body = {"t": "probe", "seq": message.seq, "ts": message.ts}
    elif isinstance(message, ProbeAck):
        body = {"t": "probe_ack", "seq": message.seq, "ts": message.ts}
    elif isinstance(message, Members):
        body = {"t": "members", "members": [member_to_dict(m) for m in message.members]}
    elif isinstance(message, LinkState):
        body = {"t": "lsd", "deltas": [encode_delta(d) for d in message.deltas]}
        if message.flooded:
            body["flood"] = True
    elif isinstance(message, LinkStateDigest):
        body = {"t": "lsd_digest", "seqs": [list(pair) for pair in message.seqs], "reply": message.reply}
    elif isinstance(message, LinkStateSum):
        body = {"t": "lsd_sum", "h": message.hash.hex()}
    elif isinstance(message, MembersSum):
        body = {"t": "members_sum", "h": message.hash.hex()}
    elif isinstance(message, MembersDigest):
        body = {"t": "members_digest", "v": [list(pair) for pair in message.versions], "reply": message.reply}
    elif isinstance(message, LossReport):
        body = {"t": "loss", "n": message.opened, "lost": message.lost}
    elif isinstance(message, Document):
        body = {"t": "doc", "d": pack_for_mesh(message.body)}
    else:
        body = {"t": "lsd_req", "origin": message.origin}
    return bytes((INNER_CONTROL,)) + canonical_json(body)


def decode_control_untrusted(payload: bytes) -> ControlMessage:
    """Parse a CONTROL inner payload (without its kind byte)."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise BadPacket(DropReason.BAD_CONTROL, "too long")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise BadPacket(DropReason.BAD_CONTROL, "not JSON") from None
    if not isinstance(body, dict):
        raise BadPacket(DropReason.BAD_CONTROL, "not an object")
    kind = body.get("t")
    try:
        if kind in ("probe", "probe_ack"):
            seq, ts = body.get("seq"), body.get("ts")
            if (
                not isinstance(seq, int)
                or isinstance(seq, bool)
                or seq < 0
                or not isinstance(ts, (int, float))
                or isinstance(ts, bool)
                or not math.isfinite(ts)
            ):
                raise BadPacket(DropReason.BAD_CONTROL, "bad probe")
            return Probe(seq, float(ts)) if kind == "probe" else ProbeAck(seq, float(ts))
        if kind == "members":
            raw = body.get("members")
            if not isinstance(raw, list) or len(raw) > MAX_MEMBERS_PER_GOSSIP:
                raise BadPacket(DropReason.BAD_CONTROL, "bad member list")
            return Members(tuple(member_from_dict(m) for m in raw))
        if kind == "lsd":
            raw = body.get("deltas")
            if not isinstance(raw, list) or len(raw) > MAX_DELTAS_PER_MESSAGE:
                raise BadPacket(DropReason.BAD_CONTROL, "bad delta list")
            flooded = body.get("flood", False)
            if not isinstance(flooded, bool):
                raise BadPacket(DropReason.BAD_CONTROL, "bad flood flag")
            return LinkState(tuple(decode_delta_untrusted(d) for d in raw), flooded)
        if kind in ("lsd_digest", "members_digest"):
            if kind == "lsd_digest":
                pairs = _int_pairs(body.get("seqs"), first_key=1)
            else:  # node 0: the network document's version
                pairs = _int_pairs(body.get("v"), first_key=0)
            reply = body.get("reply", False)
            if not isinstance(reply, bool):
                raise BadPacket(DropReason.BAD_CONTROL, "bad reply flag")
            return LinkStateDigest(pairs, reply) if kind == "lsd_digest" else MembersDigest(pairs, reply)
        if kind in ("lsd_sum", "members_sum"):
            raw_hash = body.get("h")
            if not isinstance(raw_hash, str) or not _SUM_HEX.fullmatch(raw_hash):
                raise BadPacket(DropReason.BAD_CONTROL, "bad sum")
            digest = bytes.fromhex(raw_hash)
            return LinkStateSum(digest) if kind == "lsd_sum" else MembersSum(digest)
        if kind == "loss":
            opened, lost = body.get("n"), body.get("lost")
            if not (_is_count(opened) and _is_count(lost)):
                raise BadPacket(DropReason.BAD_CONTROL, "bad loss report")
            return LossReport(opened, lost)
        if kind == "doc":
            return Document(unpack_from_mesh_untrusted(body.get("d")))
        if kind == "lsd_req":
            origin = body.get("origin")
            if not isinstance(origin, int) or isinstance(origin, bool) or not 0 < origin <= 0xFFFFFFFF:
                raise BadPacket(DropReason.BAD_CONTROL, "bad origin")
            return LinkStateRequest(origin)
    except CodecError as exc:
        raise BadPacket(DropReason.BAD_CONTROL, str(exc)) from None
    raise BadPacket(DropReason.BAD_CONTROL, f"unknown type {kind!r}")


def _is_count(value: object) -> TypeGuard[int]:
    """A message count as a report may carry: an int (not a bool) in 0 .. 2**32 - 1."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF


def _int_pairs(raw: Any, first_key: int) -> tuple[tuple[int, int], ...]:
    """A digest's list of [int >= first_key, positive int] pairs."""
    if not isinstance(raw, list) or len(raw) > MAX_DIGEST_ENTRIES:
        raise BadPacket(DropReason.BAD_CONTROL, "bad digest")
    pairs = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
            or item[0] < first_key
            or item[1] <= 0
        ):
            raise BadPacket(DropReason.BAD_CONTROL, "bad digest entry")
        pairs.append((item[0], item[1]))
    return tuple(pairs)
