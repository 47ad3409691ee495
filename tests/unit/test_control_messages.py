"""Control messages (core/control_messages.py): every message type survives
encode_control -> decode_control_untrusted as canonical JSON behind the CONTROL kind byte,
and malformed or hostile payloads (hand-made and fuzzed) raise only
BadPacket(BAD_CONTROL).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from helpers import Authority
from naas.core.constants import MAX_CONTROL_BYTES, MAX_MEMBERS_PER_GOSSIP
from naas.core.control_messages import (
    MAX_DELTAS_PER_MESSAGE,
    MAX_DIGEST_ENTRIES,
    SUM_BYTES,
    ControlMessage,
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
from naas.core.routing import LinkStateDelta, encode_delta, sign_delta
from naas.core.wire import INNER_CONTROL, BadPacket, DropReason
from naas.model.codec import canonical_json, member_to_dict
from naas.model.ids import Endpoint
from naas.model.network import MemberRecord

KEY = b"\x11" * 32
HASH = bytes(range(SUM_BYTES))
FULL_DELTA = sign_delta(LinkStateDelta(1, 1, True, ((2, 1500), (3, 40_000))), KEY)
CHANGE_DELTA = sign_delta(LinkStateDelta(1, 2, False, ((2, 0), (4, 900))), KEY)
_AUTHORITY = Authority()
MEMBER = MemberRecord(
    _AUTHORITY.identity("alpha", 7, "10.77.0.7/16").certificate,
    (Endpoint("192.0.2.1", 5640), Endpoint("2001:db8::1", 5641)),
)
MEMBER_L2 = MemberRecord(_AUTHORITY.identity("beta", 8).certificate)

MESSAGES: list[ControlMessage] = [
    Probe(3, 1234.5),
    ProbeAck(3, 1234.5),
    Members(()),
    Members((MEMBER, MEMBER_L2)),
    LinkState((FULL_DELTA, CHANGE_DELTA)),
    LinkState((FULL_DELTA,), flooded=True),
    LinkStateRequest(0xFFFFFFFF),
    LinkStateDigest(((1, 5), (2, 9)), reply=False),
    LinkStateDigest(((1, 5),), reply=True),
    LinkStateDigest(()),
    LinkStateSum(HASH),
    MembersSum(HASH),
    MembersDigest(((7, 1_800_000_000),), reply=False),
    MembersDigest(((7, 1_800_000_000), (8, 1)), reply=True),
    LossReport(0, 0),
    LossReport(1234, 17),
    LossReport(0xFFFFFFFF, 0xFFFFFFFF),
]


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def reject(payload: bytes) -> BadPacket:
    with pytest.raises(BadPacket) as caught:
        decode_control_untrusted(payload)
    assert caught.value.reason is DropReason.BAD_CONTROL
    return caught.value


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: ControlMessage) -> None:
    encoded = encode_control(message)
    assert encoded[0] == INNER_CONTROL
    assert encoded[1:] == canonical_json(json.loads(encoded[1:]))
    assert decode_control_untrusted(encoded[1:]) == message


def test_wire_form_of_some_messages() -> None:
    assert encode_control(Probe(1, 2.5))[1:] == b'{"seq":1,"t":"probe","ts":2.5}'
    assert encode_control(LinkStateSum(HASH))[1:] == canonical_json({"t": "lsd_sum", "h": HASH.hex()})
    assert b"flood" not in encode_control(LinkState((FULL_DELTA,)))
    assert json.loads(encode_control(LinkState((FULL_DELTA,), flooded=True))[1:])["flood"] is True


def test_length_limit_is_inclusive() -> None:
    probe = encode_control(Probe(1, 2.0))[1:]
    fits = probe + b" " * (MAX_CONTROL_BYTES - len(probe))
    assert decode_control_untrusted(fits) == Probe(1, 2.0)
    assert "too long" in str(reject(fits + b" "))


def pair_list(count: int) -> list[list[int]]:
    return [[n, 1] for n in range(1, count + 1)]


REJECTED: dict[str, bytes] = {
    "empty": b"",
    "not JSON": b"probe 1",
    "invalid UTF-8": b'{"t": "probe\xff"}',
    "array": b"[1, 2]",
    "string": b'"probe"',
    "number": b"7",
    "no type": body(seq=1, ts=1),
    "unknown type": body(t="hello"),
    "type not a string": body(t=["probe"]),
    "probe without seq": body(t="probe", ts=1),
    "probe seq text": body(t="probe", seq="1", ts=1),
    "probe_ack ts text": body(t="probe_ack", seq=1, ts="now"),
    "probe seq boolean": body(t="probe", seq=True, ts=1),
    "probe seq negative": body(t="probe", seq=-1, ts=1),
    "probe ts NaN": b'{"t": "probe", "seq": 1, "ts": NaN}',
    "probe ts infinite": b'{"t": "probe", "seq": 1, "ts": Infinity}',
    "sum with spaces": body(t="lsd_sum", h="00 " * (SUM_BYTES - 1) + "00"),
    "sum upper case": body(t="lsd_sum", h="AB" * SUM_BYTES),
    "sum short": body(t="lsd_sum", h="00" * (SUM_BYTES - 1)),
    "sum long": body(t="members_sum", h="00" * (SUM_BYTES + 1)),
    "sum odd length": body(t="lsd_sum", h="0" * (2 * SUM_BYTES - 1)),
    "sum not hex": body(t="lsd_sum", h="zz" * SUM_BYTES),
    "sum not ASCII": body(t="members_sum", h="é" * (2 * SUM_BYTES)),
    "sum missing": body(t="members_sum"),
    "sum a number": body(t="lsd_sum", h=12),
    "digest missing": body(t="lsd_digest", reply=False),
    "digest not a list": body(t="members_digest", v={"1": 2}),
    "digest entry single": body(t="lsd_digest", seqs=[[1]]),
    "digest entry triple": body(t="lsd_digest", seqs=[[1, 2, 3]]),
    "digest entry flat": body(t="members_digest", v=[1, 2]),
    "digest entry object": body(t="lsd_digest", seqs=[{"1": 2}]),
    "digest entry text": body(t="lsd_digest", seqs=[[1, "2"]]),
    "digest entry float": body(t="members_digest", v=[[1.0, 2]]),
    "digest entry zero": body(t="lsd_digest", seqs=[[0, 1]]),
    "digest entry negative": body(t="members_digest", v=[[3, -1]]),
    "digest entry boolean": body(t="lsd_digest", seqs=[[True, 1]]),
    "digest entry boolean second": body(t="members_digest", v=[[1, True]]),
    "digest too many": body(t="lsd_digest", seqs=pair_list(MAX_DIGEST_ENTRIES + 1)),
    "members digest too many": body(t="members_digest", v=pair_list(MAX_DIGEST_ENTRIES + 1)),
    "reply number": body(t="lsd_digest", seqs=[], reply=1),
    "reply text": body(t="members_digest", v=[], reply="true"),
    "reply null": body(t="lsd_digest", seqs=[], reply=None),
    "flood number": body(t="lsd", deltas=[], flood=1),
    "flood text": body(t="lsd", deltas=[], flood="yes"),
    "deltas missing": body(t="lsd"),
    "deltas too many": body(t="lsd", deltas=[encode_delta(FULL_DELTA)] * (MAX_DELTAS_PER_MESSAGE + 1)),
    "delta not an object": body(t="lsd", deltas=[5]),
    "delta unsigned": body(t="lsd", deltas=[{**encode_delta(FULL_DELTA), "signature": ""}]),
    "delta seq zero": body(t="lsd", deltas=[{**encode_delta(FULL_DELTA), "seq": 0}]),
    "members not a list": body(t="members", members={}),
    "members too many": body(t="members", members=[{}] * (MAX_MEMBERS_PER_GOSSIP + 1)),
    "member empty": body(t="members", members=[{}]),
    "member bad endpoint": body(t="members", members=[{**member_to_dict(MEMBER), "endpoints": ["a:1"]}]),
    "member bad port": body(t="members", members=[{**member_to_dict(MEMBER), "endpoints": ["1.2.3.4:0"]}]),
    "origin missing": body(t="lsd_req"),
    "origin zero": body(t="lsd_req", origin=0),
    "origin negative": body(t="lsd_req", origin=-1),
    "origin too big": body(t="lsd_req", origin=2**32),
    "origin boolean": body(t="lsd_req", origin=True),
    "origin text": body(t="lsd_req", origin="1"),
    "loss without lost": body(t="loss", n=100),
    "loss without n": body(t="loss", lost=1),
    "loss negative": body(t="loss", n=100, lost=-1),
    "loss boolean": body(t="loss", n=True, lost=0),
    "loss float": body(t="loss", n=100.0, lost=1),
    "loss text": body(t="loss", n=100, lost="1"),
    "loss too big": body(t="loss", n=2**32, lost=0),
    "too long": b" " * (MAX_CONTROL_BYTES + 1),
}


@pytest.mark.parametrize("payload", REJECTED.values(), ids=REJECTED.keys())
def test_malformed_payload_is_rejected(payload: bytes) -> None:
    reject(payload)


def test_deeply_nested_json_is_rejected() -> None:
    reject(b'{"t": "members", "members": ' + b"[" * 5000)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few bit flips, or a truncation, of ``data``."""
    if rng.random() < 0.3:
        return data[: rng.randrange(len(data))]
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
    return bytes(mutated)


def test_fuzzed_payloads_raise_only_bad_packet() -> None:
    rng = random.Random(20240601)
    valid = [encode_control(message)[1:] for message in MESSAGES]
    payloads = [rng.randbytes(rng.randrange(64)) for _ in range(500)]
    payloads += [mutate(rng, rng.choice(valid)) for _ in range(500)]
    decoded = 0
    for payload in payloads:
        try:
            decode_control_untrusted(payload)
            decoded += 1
        except BadPacket as exc:
            assert exc.reason is DropReason.BAD_CONTROL
    assert decoded < len(payloads)
