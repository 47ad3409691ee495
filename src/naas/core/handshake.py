"""The Noise IK handshake that opens every session: Noise_IK_25519_AESGCM_SHA256.

Theory of operation
-------------------
The pattern (Noise spec rev 34, section 7.5) is::

    IK:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se

The initiator already knows the responder's static key (``<- s``, a pre-message: both
sides hash it before the first message). Two messages follow:

1. ``create_initiation`` (initiator) / ``consume_initiation`` (responder)::

       e   send the initiator's fresh ephemeral public key in clear; MixHash(e)
       es  MixKey(DH(e_init, s_resp)): from here on everything is encrypted
       s   EncryptAndHash(initiator's static public key): 32 + 16 bytes
       ss  MixKey(DH(s_init, s_resp)): binds both long-term identities
           EncryptAndHash(payload)

   The responder learns who is calling only from the decrypted ``s``; the caller must
   then check that key against the certificate carried in the payload.

2. ``create_response`` (responder) / ``consume_response`` (initiator)::

       e   the responder's fresh ephemeral public key in clear; MixHash(e)
       ee  MixKey(DH(e_init, e_resp)): forward secrecy
       se  MixKey(DH(s_init, e_resp)): proves the initiator holds its static key
           EncryptAndHash(payload)

   Both sides then Split() the chaining key into two transport keys: the first
   encrypts initiator -> responder, the second responder -> initiator (Noise 5.2).

The building blocks are the Noise objects of section 5: a CipherState (key k and nonce n,
section 5.1) and a SymmetricState (chaining key ck, handshake hash h, section 5.2). The
cipher functions are those of section 12: X25519 (12.1), AES-256-GCM whose 96-bit nonce is
32 zero bits then n big-endian (12.4, ``crypto.Aead``), and SHA-256 with the HKDF of
section 4.3 (``crypto.hkdf2``). The prologue (section 6) is hashed first, so two nodes of
different networks, or of different protocol versions, never agree on a key.

Hostile input: a message that is too short, whose tag does not verify, or that carries a
low-order public key (all-zero DH output, rejected as WireGuard does) raises
``HandshakeError``. Consuming is transactional: the work is done on a copy of the
symmetric state and committed only on success, so a forged or corrupted message cannot
spoil a handshake that the genuine message would still complete. Calling the methods out
of order is our own bug and raises ``RuntimeError``.

This module is pure: ephemeral private keys come from the caller, and there is no clock,
no randomness and no I/O here. It is checked against the published Noise test vectors
(tests/unit/noise_vectors.json).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from naas.core import crypto
from naas.core.wire import (
    INITIATION_NOISE_MIN,
    NOISE_KEY_LEN,
    NOISE_TAG_LEN,
    PROTOCOL_NAME,
    RESPONSE_NOISE_MIN,
)

# -- spec constants (Noise section 12) ----------------------------------------------------

DH_LEN = NOISE_KEY_LEN  # X25519 public keys and shared secrets
HASH_LEN = 32  # SHA-256
TAG_LEN = NOISE_TAG_LEN  # AES-GCM
_ENCRYPTED_STATIC_LEN = DH_LEN + TAG_LEN


class HandshakeError(Exception):
    """A handshake message could not be consumed (length, tag or low-order key)."""


@dataclass(frozen=True, slots=True)
class TransportKeys:
    """What a completed handshake yields to one side."""

    send_key: bytes = field(repr=False)  # 32 bytes, for the messages this side sends
    receive_key: bytes = field(repr=False)  # 32 bytes, for the messages it receives
    handshake_hash: bytes  # h at the end of the handshake: the same on both sides


# -- Noise objects (section 5) ----------------------------------------------------------------


class _CipherState:
    """Noise 5.1: an optional key k and a 64-bit nonce n."""

    __slots__ = ("_aead", "_n")

    def __init__(self) -> None:
        self._aead: crypto.Aead | None = None
        self._n = 0

    def copy(self) -> _CipherState:
        twin = _CipherState()
        twin._aead = self._aead  # stateless: the nonce is passed on every call
        twin._n = self._n
        return twin

    def initialize_key(self, key: bytes) -> None:
        self._aead = crypto.Aead(key)
        self._n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        ciphertext = self._aead.seal(self._n, plaintext, ad)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Raises crypto.AuthenticationError; n advances only on success."""
        if self._aead is None:
            return ciphertext
        plaintext = self._aead.open(self._n, ciphertext, ad)
        self._n += 1
        return plaintext


class _SymmetricState:
    """Noise 5.2: chaining key ck, handshake hash h and a CipherState."""

    __slots__ = ("_cipher", "_ck", "_h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LEN:
            h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            h = crypto.sha256(protocol_name)
        self._ck = h
        self._h = h
        self._cipher = _CipherState()

    def copy(self) -> _SymmetricState:
        twin = _SymmetricState.__new__(_SymmetricState)
        twin._ck = self._ck
        twin._h = self._h
        twin._cipher = self._cipher.copy()
        return twin

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    def mix_hash(self, data: bytes) -> None:
        self._h = crypto.sha256(self._h + data)

    def mix_key(self, input_key_material: bytes) -> None:
        # HASHLEN is 32, so temp_k needs no truncation to the 32-byte cipher key.
        self._ck, temp_k = crypto.hkdf2(self._ck, input_key_material)
        self._cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return crypto.hkdf2(self._ck, b"")


# -- helpers ----------------------------------------------------------------------------------


class _Step(enum.Enum):
    START = "start"
    INITIATION_SENT = "initiation_sent"  # initiator only
    INITIATION_CONSUMED = "initiation_consumed"  # responder only
    DONE = "done"


# action -> (step it requires, step it leads to)
_TRANSITIONS: dict[str, tuple[_Step, _Step]] = {
    "create_initiation": (_Step.START, _Step.INITIATION_SENT),
    "consume_response": (_Step.INITIATION_SENT, _Step.DONE),
    "consume_initiation": (_Step.START, _Step.INITIATION_CONSUMED),
    "create_response": (_Step.INITIATION_CONSUMED, _Step.DONE),
}


def _check_step(current: _Step, action: str) -> _Step:
    """The step after ``action``; RuntimeError if ``action`` is not allowed now."""
    required, following = _TRANSITIONS[action]
    if current is not required:
        raise RuntimeError(f"{action}() called in step {current.value!r}")
    return following


def _check_key(name: str, key: bytes) -> None:
    if len(key) != DH_LEN:
        raise ValueError(f"{name} must be {DH_LEN} bytes, got {len(key)}")


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return crypto.x25519(private, public)
    except crypto.AuthenticationError:
        raise HandshakeError("low-order public key") from None


def _initial_state(prologue: bytes, responder_static_public: bytes) -> _SymmetricState:
    state = _SymmetricState(PROTOCOL_NAME)
    state.mix_hash(prologue)
    state.mix_hash(responder_static_public)  # pre-message "<- s"
    return state


def _split_keys(state: _SymmetricState, *, initiator: bool) -> TransportKeys:
    first, second = state.split()  # first: initiator -> responder
    if initiator:
        return TransportKeys(first, second, state.handshake_hash)
    return TransportKeys(second, first, state.handshake_hash)


# -- the two roles ------------------------------------------------------------------------------


class InitiatorHandshake:
    """The side that knows the peer's static key and speaks first."""

    __slots__ = ("_ephemeral_private", "_remote_static", "_state", "_static_private", "_step")

    def __init__(self, *, local_static_private: bytes, remote_static_public: bytes, prologue: bytes) -> None:
        _check_key("local_static_private", local_static_private)
        _check_key("remote_static_public", remote_static_public)
        self._static_private = local_static_private
        self._remote_static = remote_static_public
        self._ephemeral_private = b""
        self._state = _initial_state(prologue, remote_static_public)
        self._step = _Step.START

    def create_initiation(self, ephemeral_private: bytes, payload: bytes) -> bytes:
        """Noise message 1: ``e, es, s, ss`` then the encrypted payload."""
        following = _check_step(self._step, "create_initiation")
        _check_key("ephemeral_private", ephemeral_private)
        state = self._state.copy()
        ephemeral_public = crypto.x25519_public(ephemeral_private)
        state.mix_hash(ephemeral_public)  # e
        state.mix_key(_dh(ephemeral_private, self._remote_static))  # es
        encrypted_static = state.encrypt_and_hash(crypto.x25519_public(self._static_private))
        state.mix_key(_dh(self._static_private, self._remote_static))  # ss
        encrypted_payload = state.encrypt_and_hash(payload)
        self._state, self._ephemeral_private, self._step = state, ephemeral_private, following
        return ephemeral_public + encrypted_static + encrypted_payload

    def consume_response(self, message: bytes) -> tuple[bytes, TransportKeys]:
        """Noise message 2: ``e, ee, se`` then the payload; returns (payload, keys)."""
        following = _check_step(self._step, "consume_response")
        if len(message) < RESPONSE_NOISE_MIN:
            raise HandshakeError(f"response of {len(message)} bytes is too short")
        state = self._state.copy()
        remote_ephemeral = bytes(message[:DH_LEN])
        state.mix_hash(remote_ephemeral)  # e
        state.mix_key(_dh(self._ephemeral_private, remote_ephemeral))  # ee
        state.mix_key(_dh(self._static_private, remote_ephemeral))  # se
        try:
            payload = state.decrypt_and_hash(bytes(message[DH_LEN:]))
        except crypto.AuthenticationError:
            raise HandshakeError("response payload does not authenticate") from None
        keys = _split_keys(state, initiator=True)
        self._state, self._ephemeral_private, self._step = state, b"", following
        return payload, keys


class ResponderHandshake:
    """The side that is called; it learns the caller's static key from message 1."""

    __slots__ = (
        "_remote_ephemeral",
        "_remote_static",
        "_state",
        "_static_private",
        "_step",
        "remote_static_public",
    )

    def __init__(self, *, local_static_private: bytes, prologue: bytes) -> None:
        _check_key("local_static_private", local_static_private)
        self._static_private = local_static_private
        self._state = _initial_state(prologue, crypto.x25519_public(local_static_private))
        self._remote_ephemeral = b""
        self._remote_static = b""
        self._step = _Step.START
        self.remote_static_public: bytes | None = None

    def consume_initiation(self, message: bytes) -> bytes:
        """Noise message 1; returns its payload and sets ``remote_static_public``."""
        following = _check_step(self._step, "consume_initiation")
        if len(message) < INITIATION_NOISE_MIN:
            raise HandshakeError(f"initiation of {len(message)} bytes is too short")
        state = self._state.copy()
        remote_ephemeral = bytes(message[:DH_LEN])
        static_end = DH_LEN + _ENCRYPTED_STATIC_LEN
        state.mix_hash(remote_ephemeral)  # e
        state.mix_key(_dh(self._static_private, remote_ephemeral))  # es
        try:
            remote_static = state.decrypt_and_hash(bytes(message[DH_LEN:static_end]))  # s
        except crypto.AuthenticationError:
            raise HandshakeError("initiator static key does not authenticate") from None
        state.mix_key(_dh(self._static_private, remote_static))  # ss
        try:
            payload = state.decrypt_and_hash(bytes(message[static_end:]))
        except crypto.AuthenticationError:
            raise HandshakeError("initiation payload does not authenticate") from None
        self._state, self._remote_ephemeral, self._step = state, remote_ephemeral, following
        self._remote_static = self.remote_static_public = remote_static
        return payload

    def create_response(self, ephemeral_private: bytes, payload: bytes) -> tuple[bytes, TransportKeys]:
        """Noise message 2: ``e, ee, se`` then the encrypted payload; returns (message, keys)."""
        following = _check_step(self._step, "create_response")
        _check_key("ephemeral_private", ephemeral_private)
        state = self._state.copy()
        ephemeral_public = crypto.x25519_public(ephemeral_private)
        state.mix_hash(ephemeral_public)  # e
        state.mix_key(_dh(ephemeral_private, self._remote_ephemeral))  # ee
        state.mix_key(_dh(ephemeral_private, self._remote_static))  # se
        encrypted_payload = state.encrypt_and_hash(payload)
        keys = _split_keys(state, initiator=False)
        self._state, self._step = state, following
        return ephemeral_public + encrypted_payload, keys
