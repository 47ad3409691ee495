"""The only module that imports the crypto library (pyca/cryptography).

Primitives for the Noise IK handshake (X25519, AES-256-GCM, SHA-256, HMAC/HKDF as the
Noise spec defines them), Ed25519 for the CA and for members' signed control messages,
and certificate verification. Keys travel as raw bytes; the library's key objects stay
in here. ``Aead`` is built once per session key and reused for every packet: its nonce
is the Noise AESGCM nonce (4 zero bytes, 64-bit big-endian counter).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from naas.model.certificate import Certificate
from naas.model.codec import tbs_bytes

KEY_LEN = 32
HASH_LEN = 32
TAG_LEN = 16
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw
_NO_ENCRYPTION = serialization.NoEncryption()
_NONCE = struct.Struct(">4xQ")  # Noise AESGCM: 32 zero bits, then the counter big-endian


class AuthenticationError(Exception):
    """An AEAD tag or a signature did not verify."""


# -- X25519 ---------------------------------------------------------------------------


def x25519_private_from_seed(seed: bytes) -> bytes:
    """A private key from 32 random bytes (clamping happens inside X25519)."""
    if len(seed) != KEY_LEN:
        raise ValueError("X25519 seed must be 32 bytes")
    return seed


def x25519_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def x25519(private: bytes, public: bytes) -> bytes:
    """Diffie-Hellman; raises AuthenticationError on a low-order (all-zero) result."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        raise AuthenticationError("X25519 produced an all-zero secret") from None
    return shared


# -- Ed25519 --------------------------------------------------------------------------


def ed25519_public(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUBLIC)


def ed25519_sign(private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(message)


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- hashing (Noise section 4.3) -----------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs."""
    temp = hmac_sha256(chaining_key, input_key_material)
    first = hmac_sha256(temp, b"\x01")
    return first, hmac_sha256(temp, first + b"\x02")


def mac16(key: bytes, data: bytes) -> bytes:
    """A 16-byte keyed BLAKE2s (the MACs of handshake flood protection, core/cookie.py)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def mac16_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(a, b)


# -- AEAD -------------------------------------------------------------------------------


class Aead:
    """AES-256-GCM under one key; nonce = counter (Noise AESGCM layout)."""

    __slots__ = ("_aesgcm",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("AES-256-GCM key must be 32 bytes")
        self._aesgcm = AESGCM(key)

    def seal(self, counter: int, plaintext: bytes, aad: bytes) -> bytes:
        return self._aesgcm.encrypt(_NONCE.pack(counter), plaintext, aad)

    def open(self, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aesgcm.decrypt(_NONCE.pack(counter), ciphertext, aad)
        except InvalidTag:
            raise AuthenticationError("AEAD tag mismatch") from None


class CookieCipher:
    """AES-256-GCM with an explicit random nonce, for cookie replies (core/cookie.py).
    Few messages go under one key (cookie replies are rate-limited per source), so a
    random 96-bit nonce stays far from its collision bound."""

    __slots__ = ("_aesgcm",)

    def __init__(self, key: bytes) -> None:
        self._aesgcm = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aesgcm.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aesgcm.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong size
            raise AuthenticationError("AEAD tag mismatch") from None


# -- certificates -------------------------------------------------------------------------


def sign_certificate(ca_private: bytes, cert: Certificate) -> bytes:
    return ed25519_sign(ca_private, tbs_bytes(cert))


def certificate_problem(cert: Certificate, ca_public: bytes, network: str, unix_time: float) -> str | None:
    """Why ``cert`` must not be trusted, or None if it is good."""
    if cert.network != network:
        return f"certificate is for network {cert.network!r}"
    if not ed25519_verify(ca_public, cert.signature, tbs_bytes(cert)):
        return "certificate signature does not verify"
    if not cert.valid_at(unix_time):
        return "certificate is expired or not yet valid"
    return None
