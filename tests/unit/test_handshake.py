"""Noise IK handshake: published test vectors, round trips, and hostile input.

initiator (knows responder's s)              responder
  create_initiation(e_i, payload) -- msg 1 -->  consume_initiation  -> payload, rs
  consume_response   <-- msg 2 --  create_response(e_r, payload)    -> keys
  keys.send_key  == responder keys.receive_key   (Split() output 1)
  keys.receive_key == responder keys.send_key    (Split() output 2)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from naas.core import crypto
from naas.core.handshake import (
    HandshakeError,
    InitiatorHandshake,
    ResponderHandshake,
    TransportKeys,
)
from naas.core.wire import INITIATION_NOISE_MIN, RESPONSE_NOISE_MIN

VECTORS_FILE = Path(__file__).with_name("noise_vectors.json")
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]
PROLOGUE = b"naas/2 test-network"

# Curve25519 points of small order (u-coordinates, little endian): X25519 with any of
# them yields the all-zero secret, which must make the handshake fail.
LOW_ORDER_POINTS = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),  # order 4
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
]


def _vector_id(vector: dict[str, Any]) -> str:
    return str(vector["source"]).split(",")[0].removeprefix("github.com/")


def _keys(seed: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Initiator static, responder static, initiator ephemeral, responder ephemeral."""
    rng = random.Random(seed)
    return rng.randbytes(32), rng.randbytes(32), rng.randbytes(32), rng.randbytes(32)


def _pair(
    seed: int = 1, *, prologue: bytes = PROLOGUE
) -> tuple[InitiatorHandshake, ResponderHandshake, bytes, bytes]:
    init_static, resp_static, init_eph, resp_eph = _keys(seed)
    initiator = InitiatorHandshake(
        local_static_private=init_static,
        remote_static_public=crypto.x25519_public(resp_static),
        prologue=prologue,
    )
    responder = ResponderHandshake(local_static_private=resp_static, prologue=prologue)
    return initiator, responder, init_eph, resp_eph


def _handshake(
    seed: int = 1, payloads: tuple[bytes, bytes] = (b"hello", b"welcome")
) -> tuple[TransportKeys, TransportKeys]:
    initiator, responder, init_eph, resp_eph = _pair(seed)
    assert responder.consume_initiation(initiator.create_initiation(init_eph, payloads[0])) == (payloads[0])
    message, responder_keys = responder.create_response(resp_eph, payloads[1])
    payload, initiator_keys = initiator.consume_response(message)
    assert payload == payloads[1]
    return initiator_keys, responder_keys


def _flip(message: bytes, index: int) -> bytes:
    return message[:index] + bytes((message[index] ^ 0x01,)) + message[index + 1 :]


# -- (a) published test vectors -------------------------------------------------------------


def test_vector_file_holds_only_ik_aesgcm_sha256() -> None:
    assert len(VECTORS) >= 3
    for vector in VECTORS:
        assert vector["protocol_name"] == "Noise_IK_25519_AESGCM_SHA256"
        assert vector["source"].startswith("github.com/")


@pytest.mark.parametrize("vector", VECTORS, ids=_vector_id)
def test_published_vector(vector: dict[str, Any]) -> None:
    def h(name: str) -> bytes:
        return bytes.fromhex(vector[name])

    messages = [(bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in vector["messages"]]
    assert crypto.x25519_public(h("resp_static")) == h("init_remote_static")
    initiator = InitiatorHandshake(
        local_static_private=h("init_static"),
        remote_static_public=h("init_remote_static"),
        prologue=h("init_prologue"),
    )
    responder = ResponderHandshake(local_static_private=h("resp_static"), prologue=h("resp_prologue"))

    # Handshake message 1, byte for byte, and what the responder learns from it.
    payload, ciphertext = messages[0]
    message1 = initiator.create_initiation(h("init_ephemeral"), payload)
    assert message1.hex() == ciphertext.hex()
    assert responder.consume_initiation(message1) == payload
    assert responder.remote_static_public == crypto.x25519_public(h("init_static"))

    # Handshake message 2, byte for byte.
    payload, ciphertext = messages[1]
    message2, responder_keys = responder.create_response(h("resp_ephemeral"), payload)
    assert message2.hex() == ciphertext.hex()
    received, initiator_keys = initiator.consume_response(message2)
    assert received == payload

    # The handshake hash, as published.
    assert initiator_keys.handshake_hash == responder_keys.handshake_hash
    if "handshake_hash" in vector:
        published = h("handshake_hash")
        if vector["handshake_hash_is"] == "after_message_1":
            # Message 2 is e (MixHash) then the encrypted payload (MixHash): Noise 5.2.
            after_e = crypto.sha256(published + message2[:32])
            published = crypto.sha256(after_e + message2[32:])
        else:
            assert vector["handshake_hash_is"] == "final"
        assert initiator_keys.handshake_hash.hex() == published.hex()

    # Transport messages: initiator first, then alternating; counters 0, 1, ... per side.
    assert initiator_keys.send_key == responder_keys.receive_key
    assert initiator_keys.receive_key == responder_keys.send_key
    transport = messages[2:]
    assert len(transport) >= 2
    for number, (payload, ciphertext) in enumerate(transport):
        sender, receiver = (
            (initiator_keys, responder_keys) if number % 2 == 0 else (responder_keys, initiator_keys)
        )
        counter = number // 2
        sealed = crypto.Aead(sender.send_key).seal(counter, payload, b"")
        assert sealed.hex() == ciphertext.hex()
        assert crypto.Aead(receiver.receive_key).open(counter, ciphertext, b"") == payload


# -- (b) round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(0, 0), (1, 1), (96, 48), (1400, 0), (0, 1400)])
def test_round_trip(sizes: tuple[int, int]) -> None:
    rng = random.Random(sum(sizes))
    first, second = rng.randbytes(sizes[0]), rng.randbytes(sizes[1])
    initiator, responder, init_eph, resp_eph = _pair(seed=7)

    message1 = initiator.create_initiation(init_eph, first)
    assert len(message1) == INITIATION_NOISE_MIN + len(first)
    assert responder.consume_initiation(message1) == first
    message2, responder_keys = responder.create_response(resp_eph, second)
    assert len(message2) == RESPONSE_NOISE_MIN + len(second)
    received, initiator_keys = initiator.consume_response(message2)
    assert received == second

    assert initiator_keys.send_key == responder_keys.receive_key
    assert initiator_keys.receive_key == responder_keys.send_key
    assert initiator_keys.send_key != initiator_keys.receive_key
    assert initiator_keys.handshake_hash == responder_keys.handshake_hash
    for key in (initiator_keys.send_key, initiator_keys.receive_key):
        assert len(key) == 32
    to_responder = crypto.Aead(initiator_keys.send_key).seal(0, b"frame", b"hdr")
    assert crypto.Aead(responder_keys.receive_key).open(0, to_responder, b"hdr") == b"frame"
    to_initiator = crypto.Aead(responder_keys.send_key).seal(0, b"reply", b"")
    assert crypto.Aead(initiator_keys.receive_key).open(0, to_initiator, b"") == b"reply"


def test_responder_learns_initiator_static_key() -> None:
    init_static, resp_static, init_eph, _ = _keys(3)
    initiator = InitiatorHandshake(
        local_static_private=init_static,
        remote_static_public=crypto.x25519_public(resp_static),
        prologue=b"",
    )
    responder = ResponderHandshake(local_static_private=resp_static, prologue=b"")
    assert responder.remote_static_public is None
    responder.consume_initiation(initiator.create_initiation(init_eph, b""))
    assert responder.remote_static_public == crypto.x25519_public(init_static)


def test_fresh_ephemerals_give_fresh_keys() -> None:
    first, _ = _handshake(seed=1)
    second, _ = _handshake(seed=2)
    assert first.send_key != second.send_key
    assert first.handshake_hash != second.handshake_hash


def test_keys_are_not_in_repr() -> None:
    keys, _ = _handshake()
    assert keys.send_key.hex() not in repr(keys)
    assert repr(keys.send_key) not in repr(keys)


def test_call_order_is_enforced() -> None:
    initiator, responder, init_eph, resp_eph = _pair()
    with pytest.raises(RuntimeError):
        initiator.consume_response(bytes(RESPONSE_NOISE_MIN))
    with pytest.raises(RuntimeError):
        responder.create_response(resp_eph, b"")
    message1 = initiator.create_initiation(init_eph, b"")
    with pytest.raises(RuntimeError):
        initiator.create_initiation(init_eph, b"")
    responder.consume_initiation(message1)
    with pytest.raises(RuntimeError):
        responder.consume_initiation(message1)
    message2, _ = responder.create_response(resp_eph, b"")
    with pytest.raises(RuntimeError):
        responder.create_response(resp_eph, b"")
    initiator.consume_response(message2)
    with pytest.raises(RuntimeError):
        initiator.consume_response(message2)


def test_bad_key_lengths_are_our_bug() -> None:
    init_static, resp_static, init_eph, _ = _keys(4)
    with pytest.raises(ValueError):
        InitiatorHandshake(
            local_static_private=init_static[:31],
            remote_static_public=crypto.x25519_public(resp_static),
            prologue=b"",
        )
    with pytest.raises(ValueError):
        InitiatorHandshake(local_static_private=init_static, remote_static_public=b"\x01" * 33, prologue=b"")
    with pytest.raises(ValueError):
        ResponderHandshake(local_static_private=b"", prologue=b"")
    initiator, _, _, _ = _pair()
    with pytest.raises(ValueError):
        initiator.create_initiation(init_eph + b"\x00", b"")


# -- (c) hostile input --------------------------------------------------------------------------


def test_tampered_initiation_is_rejected_at_every_byte() -> None:
    initiator, _, init_eph, _ = _pair()
    message1 = initiator.create_initiation(init_eph, b"certificate and timestamp")
    for index in range(len(message1)):
        _, responder, _, _ = _pair()
        with pytest.raises(HandshakeError):
            responder.consume_initiation(_flip(message1, index))
        assert responder.remote_static_public is None


def test_tampered_response_is_rejected_at_every_byte() -> None:
    initiator, responder, init_eph, resp_eph = _pair()
    responder.consume_initiation(initiator.create_initiation(init_eph, b""))
    message2, _ = responder.create_response(resp_eph, b"certificate")
    for index in range(len(message2)):
        with pytest.raises(HandshakeError):
            initiator.consume_response(_flip(message2, index))
    # A rejected response leaves the initiator waiting: the genuine one still completes.
    payload, keys = initiator.consume_response(message2)
    assert payload == b"certificate"
    assert len(keys.send_key) == 32


def test_rejected_initiation_leaves_responder_usable() -> None:
    initiator, responder, init_eph, resp_eph = _pair()
    message1 = initiator.create_initiation(init_eph, b"hi")
    with pytest.raises(HandshakeError):
        responder.consume_initiation(_flip(message1, len(message1) - 1))
    assert responder.consume_initiation(message1) == b"hi"
    message2, _ = responder.create_response(resp_eph, b"")
    initiator.consume_response(message2)


@pytest.mark.parametrize("length", [0, 31, 32, INITIATION_NOISE_MIN - 1])
def test_short_initiation_is_rejected(length: int) -> None:
    initiator, responder, init_eph, _ = _pair()
    message1 = initiator.create_initiation(init_eph, b"")
    with pytest.raises(HandshakeError):
        responder.consume_initiation(message1[:length])


@pytest.mark.parametrize("length", [0, 32, RESPONSE_NOISE_MIN - 1])
def test_short_response_is_rejected(length: int) -> None:
    initiator, responder, init_eph, resp_eph = _pair()
    responder.consume_initiation(initiator.create_initiation(init_eph, b""))
    message2, _ = responder.create_response(resp_eph, b"")
    with pytest.raises(HandshakeError):
        initiator.consume_response(message2[:length])


def test_wrong_responder_static_key_is_rejected() -> None:
    init_static, resp_static, init_eph, _ = _keys(5)
    impostor_static = random.Random(99).randbytes(32)
    initiator = InitiatorHandshake(
        local_static_private=init_static,
        remote_static_public=crypto.x25519_public(resp_static),
        prologue=PROLOGUE,
    )
    impostor = ResponderHandshake(local_static_private=impostor_static, prologue=PROLOGUE)
    with pytest.raises(HandshakeError):
        impostor.consume_initiation(initiator.create_initiation(init_eph, b""))


def test_different_prologue_is_rejected() -> None:
    init_static, resp_static, init_eph, _ = _keys(6)
    initiator = InitiatorHandshake(
        local_static_private=init_static,
        remote_static_public=crypto.x25519_public(resp_static),
        prologue=b"naas/2 network-a",
    )
    responder = ResponderHandshake(local_static_private=resp_static, prologue=b"naas/2 network-b")
    with pytest.raises(HandshakeError):
        responder.consume_initiation(initiator.create_initiation(init_eph, b""))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p[:4].hex())
def test_low_order_initiator_ephemeral_is_rejected(point: bytes) -> None:
    initiator, responder, init_eph, _ = _pair()
    message1 = initiator.create_initiation(init_eph, b"")
    with pytest.raises(HandshakeError):
        responder.consume_initiation(point + message1[32:])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p[:4].hex())
def test_low_order_responder_ephemeral_is_rejected(point: bytes) -> None:
    initiator, responder, init_eph, resp_eph = _pair()
    responder.consume_initiation(initiator.create_initiation(init_eph, b""))
    message2, _ = responder.create_response(resp_eph, b"")
    with pytest.raises(HandshakeError):
        initiator.consume_response(point + message2[32:])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p[:4].hex())
def test_low_order_responder_static_is_rejected(point: bytes) -> None:
    init_static, _, init_eph, _ = _keys(8)
    initiator = InitiatorHandshake(
        local_static_private=init_static, remote_static_public=point, prologue=PROLOGUE
    )
    with pytest.raises(HandshakeError):
        initiator.create_initiation(init_eph, b"")
