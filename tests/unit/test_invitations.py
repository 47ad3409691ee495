"""Invitation URLs: tokens, pins, building and parsing hostile text."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from naas.model.codec import b64e
from naas.model.ids import Endpoint
from naas.pop.invitations import (
    Invitation,
    InvitationError,
    build_url,
    is_well_formed_token,
    make_token,
    parse_url_untrusted,
    spki_pin,
    token_hash,
)
from naas.pop.tls import make_tls_material

TOKEN = make_token(bytes(range(32)))
PIN_A = "sha256:" + b64e(b"\x01" * 32)
PIN_B = "sha256:" + b64e(b"\x02" * 32)
MASTER = Endpoint("192.0.2.1", 5641)
SLAVE = Endpoint("2001:db8::2", 5641)


def test_token_is_32_bytes_of_unpadded_base64url() -> None:
    token = make_token(b"\xff" * 32)
    assert len(token) == 43 and "=" not in token and "+" not in token and "/" not in token
    assert is_well_formed_token(token)
    with pytest.raises(ValueError):
        make_token(b"\x00" * 16)


def test_token_hash_is_hex_sha256_of_the_text() -> None:
    assert token_hash(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert len(token_hash(TOKEN)) == 64
    assert token_hash(TOKEN) != token_hash(make_token(b"\x01" * 32))


def test_non_canonical_token_spelling_is_rejected() -> None:
    # 43 characters hold 258 bits: the last one has 2 spare bits, one spelling is right.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(TOKEN[-1])
    variants = [TOKEN[:-1] + alphabet[last ^ spare] for spare in (1, 2, 3)]
    assert not any(is_well_formed_token(v) for v in variants)


def test_spki_pin_hashes_the_subject_public_key_info() -> None:
    material = make_tls_material("master")
    cert = x509.load_pem_x509_certificate(material.cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = spki_pin(cert.public_bytes(serialization.Encoding.DER))
    assert pin == "sha256:" + b64e(hashlib.sha256(spki).digest())
    assert pin == material.pin
    with pytest.raises(ValueError):
        spki_pin(b"not a certificate")


def test_round_trip_one_pop() -> None:
    url = build_url("acme", [(MASTER, PIN_A)], TOKEN)
    assert url == f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}"
    assert parse_url_untrusted(url) == Invitation("acme", TOKEN, ((MASTER, PIN_A),))


def test_round_trip_ipv6_and_second_pop() -> None:
    url = build_url("acme", [(SLAVE, PIN_B), (MASTER, PIN_A)], TOKEN)
    assert url.startswith("naas://[2001:db8::2]:5641/acme?")
    parsed = parse_url_untrusted(url)
    assert parsed.pops == ((SLAVE, PIN_B), (MASTER, PIN_A))
    back = build_url("acme", [(MASTER, PIN_A), (SLAVE, PIN_B)], TOKEN)
    assert "pop=%5B2001:db8::2%5D:5641," in back
    assert parse_url_untrusted(back).pops == ((MASTER, PIN_A), (SLAVE, PIN_B))


def test_pasted_url_with_whitespace_and_literal_brackets() -> None:
    url = f"  naas://[::1]:5641/acme?token={TOKEN}&pin={PIN_A}&pop=[::2]:7000,{PIN_B}\n"
    parsed = parse_url_untrusted(url)
    assert parsed.pops == ((Endpoint("::1", 5641), PIN_A), (Endpoint("::2", 7000), PIN_B))


def test_repr_hides_the_token() -> None:
    invitation = parse_url_untrusted(build_url("acme", [(MASTER, PIN_A)], TOKEN))
    assert TOKEN not in repr(invitation)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"https://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}", "wrong scheme"),
        (f"192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}", "scheme"),
        (f"naas://192.0.2.1:5641/acme?pin={PIN_A}", "token is missing"),
        (f"naas://192.0.2.1:5641/acme?token=&pin={PIN_A}", "token is missing"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN[:-3]}&pin={PIN_A}", "token is not 32 bytes"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}x&pin={PIN_A}", "token is not 32 bytes"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}", "pin is missing"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin=md5:abc", "pin"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A[:-1]}", "pin"),
        (f"naas://192.0.2.1/acme?token={TOKEN}&pin={PIN_A}", "not HOST:PORT"),
        (f"naas://192.0.2.1:99999/acme?token={TOKEN}&pin={PIN_A}", "not HOST:PORT"),
        (f"naas://pop.example:5641/acme?token={TOKEN}&pin={PIN_A}", "not HOST:PORT"),
        (f"naas://[::1/acme?token={TOKEN}&pin={PIN_A}", "invitation:"),
        (f"naas://192.0.2.1:5641/?token={TOKEN}&pin={PIN_A}", "network name is missing"),
        (f"naas://192.0.2.1:5641/Bad_Name?token={TOKEN}&pin={PIN_A}", "not a valid network"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}&x=1", "unknown parameter"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&token={TOKEN}&pin={PIN_A}", "twice"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}&pop=10.0.0.1:1", "HOST:PORT,PIN"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN}&pin={PIN_A}&pop=x:1,{PIN_B}", "not HOST:PORT"),
        (f"naas://192.0.2.1:5641/acme?token={TOKEN} &pin={PIN_A}", "spaces"),
        ("naas://" + "1" * 5000, "too long"),
    ],
)
def test_bad_urls_name_the_problem(url: str, words: str) -> None:
    with pytest.raises(InvitationError) as info:
        parse_url_untrusted(url)
    message = str(info.value)
    assert words in message
    assert "\n" not in message
    assert TOKEN not in message or "not 32 bytes" not in words


def test_build_url_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        build_url("acme", [], TOKEN)
    with pytest.raises(ValueError):
        build_url("acme", [(MASTER, "nope")], TOKEN)
    with pytest.raises(ValueError):
        build_url("acme", [(MASTER, PIN_A)], "short")
