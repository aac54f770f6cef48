#!/usr/bin/env python3
"""Writes spec/vectors/cert-*.json and spec/vectors/signal-*.json.

An independent implementation of the wire formats (Python `cryptography` for Ed25519,
ChaCha20-Poly1305 for relay grants, the standard library for HMAC and a hand-written
protobuf encoder), so that the Rust
tests, which load these files, check the Rust code against something it did not write.
Run from the repository root: python3 crates/sightwire-signal/vectors/generate.py
"""
import hashlib
import hmac
import json
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

OUT = "spec/vectors/"
CERT_CONTEXT = b"sightwire id certificate v1"
GRANT_CONTEXT = b"sightwire relay grant v2"
GRANT_VERSION = 2


def seal_grant(grant_key, nonce, allocation_id, rest):
    """header = version || allocation_id[0:8]; token = header || nonce ||
    ChaCha20-Poly1305(HKDF-Expand(key, context, 32), nonce, allocation_id[8:16] || rest || 0^4, context || header)."""
    sealing = hmac.new(grant_key, GRANT_CONTEXT + bytes([1]), hashlib.sha256).digest()
    header = bytes([GRANT_VERSION]) + allocation_id[:8]
    sealed = ChaCha20Poly1305(sealing).encrypt(nonce, allocation_id[8:] + rest + bytes(4), GRANT_CONTEXT + header)
    return header + nonce + sealed


def raw_public(private):
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def issuer(seed):
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = raw_public(private)
    return private, public, hashlib.sha256(public).digest()[:8]


def cert(private, issuer_id, device_id, device_key, not_before, not_after, serial, version=1):
    signed = bytes([version]) + device_id + device_key + struct.pack(">QQQ", not_before, not_after, serial) + issuer_id
    return signed + private.sign(CERT_CONTEXT + signed)


def write(name, value):
    with open(OUT + name, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def certificates():
    seed = bytes(range(1, 33))
    private, public, issuer_id = issuer(seed)
    other_private, other_public, other_id = issuer(bytes([0xEE] * 32))
    device_id = bytes.fromhex("1cc316abcdef")
    device_key = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    nb, na = 1_767_225_600, 2_082_758_400  # 2026-01-01 .. 2036-01-01
    good = cert(private, issuer_id, device_id, device_key, nb, na, 1)
    second = cert(private, issuer_id, bytes.fromhex("0200000000ff"), bytes([0x42] * 32), 0, 2**64 - 1, 2**64 - 1)
    header = {
        "issuer_seed": seed.hex(),
        "issuer_public_key": public.hex(),
        "issuer_id": issuer_id.hex(),
        "signature_context": CERT_CONTEXT.decode(),
    }
    write("cert-valid.json", dict(header, description="ID certificates that verify under the issuer at verify_at (Unix seconds)", vectors=[
        dict(name="typical", device_id=device_id.hex(), device_key=device_key.hex(), not_before=nb, not_after=na,
             serial=1, verify_at=1_800_000_000, certificate=good.hex()),
        dict(name="validity-boundary-start", device_id=device_id.hex(), device_key=device_key.hex(), not_before=nb,
             not_after=na, serial=1, verify_at=nb, certificate=good.hex()),
        dict(name="validity-boundary-end", device_id=device_id.hex(), device_key=device_key.hex(), not_before=nb,
             not_after=na, serial=1, verify_at=na, certificate=good.hex()),
        dict(name="extreme-fields", device_id="0200000000ff", device_key=(bytes([0x42] * 32)).hex(), not_before=0,
             not_after=2**64 - 1, serial=2**64 - 1, verify_at=2**64 - 1, certificate=second.hex()),
    ]))
    flipped_sig = bytearray(good)
    flipped_sig[100] ^= 1
    flipped_key = bytearray(good)
    flipped_key[7] ^= 1
    swapped_validity = cert(private, issuer_id, device_id, device_key, na, nb, 1)
    bad_version = cert(private, issuer_id, device_id, device_key, nb, na, 1, version=2)
    # Signed by the trusted issuer, but the six octets are no device ID (spec/id.md §1):
    # refused when decoded, before the signature is looked at.
    multicast_id = cert(private, issuer_id, bytes.fromhex("01005e0000fb"), device_key, nb, na, 1)
    zero_id = cert(private, issuer_id, bytes(6), device_key, nb, na, 1)
    write("cert-invalid.json", dict(header, description="inputs that MUST be rejected, with the error", vectors=[
        dict(name="empty", certificate="", verify_at=1_800_000_000, error="wrong_length"),
        dict(name="truncated", certificate=good[:-1].hex(), verify_at=1_800_000_000, error="wrong_length"),
        dict(name="trailing-byte", certificate=(good + b"\0").hex(), verify_at=1_800_000_000, error="wrong_length"),
        dict(name="version-2", certificate=bad_version.hex(), verify_at=1_800_000_000, error="unsupported_version"),
        dict(name="empty-validity", certificate=swapped_validity.hex(), verify_at=1_800_000_000, error="empty_validity"),
        dict(name="signature-bit-flipped", certificate=bytes(flipped_sig).hex(), verify_at=1_800_000_000, error="bad_signature"),
        dict(name="device-key-bit-flipped", certificate=bytes(flipped_key).hex(), verify_at=1_800_000_000, error="bad_signature"),
        dict(name="other-issuer", certificate=cert(other_private, other_id, device_id, device_key, nb, na, 1).hex(),
             verify_at=1_800_000_000, error="unknown_issuer"),
        dict(name="other-issuer-claiming-our-id", certificate=cert(other_private, issuer_id, device_id, device_key, nb, na, 1).hex(),
             verify_at=1_800_000_000, error="bad_signature"),
        dict(name="not-yet-valid", certificate=good.hex(), verify_at=nb - 1, error="not_yet_valid"),
        dict(name="expired", certificate=good.hex(), verify_at=na + 1, error="expired"),
        dict(name="device-id-multicast", certificate=multicast_id.hex(), verify_at=1_800_000_000, error="invalid_device_id"),
        dict(name="device-id-all-zeros", certificate=zero_id.hex(), verify_at=1_800_000_000, error="invalid_device_id"),
    ]))
    return good


# ---- minimal protobuf encoder ------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value) if value else b""


def field_bytes(number, value, keep_empty=False):
    return varint(number << 3 | 2) + varint(len(value)) + value if (value or keep_empty) else b""


def field_fixed64(number, value):
    return varint(number << 3 | 1) + struct.pack("<Q", value) if value else b""


def envelope(request_id, body_number, body, padding=b""):
    return field_varint(1, 1) + field_varint(2, request_id) + field_bytes(body_number, body, keep_empty=True) + field_bytes(3, padding)


def address(ip, port):
    return field_bytes(1, ip) + field_varint(2, port)


def candidate(kind, ip, port, priority):
    return field_varint(1, kind) + field_bytes(2, address(ip, port)) + field_varint(3, priority)


def candidate_set(generation, *candidates):
    return field_varint(1, generation) + b"".join(field_bytes(2, c) for c in candidates)


def signaling(good_cert):
    v4 = bytes([203, 0, 113, 7])
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    grant_key = bytes([0x5A] * 32)
    rest = (bytes([2]) + struct.pack(">Q", 1_800_000_300) + bytes.fromhex("1cc316abcdef")
            + bytes([0x11] * 32) + bytes([0x22] * 32))
    nonce = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaab")
    token = seal_grant(grant_key, nonce, bytes(range(16)), rest)
    assert len(token) == 128
    write("signal-relay-grant.json", dict(
        description="relay grant tokens (version 2): header = 0x02 || allocation_id[0:8]; token = header || "
                    "nonce[12] || ChaCha20-Poly1305(key = HKDF-Expand(grant_key, context, 32), nonce, "
                    "plaintext = allocation_id[8:16] || role || expires_at || device_id || device_key || viewer_key || 0^4, "
                    "aad = context || header)",
        key_context=GRANT_CONTEXT.decode(), vectors=[dict(
            name="viewer-grant", key=grant_key.hex(), allocation_id=bytes(range(16)).hex(), role=2,
            expires_at=1_800_000_300, device_id="1cc316abcdef", device_key=(bytes([0x11] * 32)).hex(),
            viewer_key=(bytes([0x22] * 32)).hex(), nonce=nonce.hex(), verify_at=1_800_000_000,
            token=token.hex())]))
    punch = field_bytes(1, bytes([0x33] * 32)) + field_varint(2, 250)
    messages = [
        ("keepalive", envelope(7, 12, b"")),
        ("keepalive-ack-ipv4", envelope(7, 13, field_bytes(1, address(v4, 40000)))),
        ("register", envelope(1, 10, field_bytes(1, good_cert) + field_bytes(2, candidate_set(
                                    0, candidate(1, bytes([192, 168, 1, 20]), 5000, 100), candidate(1, v6, 5000, 90))))),
        ("register-ack", envelope(1, 11, field_bytes(1, address(v4, 40000)) + field_varint(2, 20_000) + field_varint(3, 60_000))),
        ("connect-request-padded", envelope(2, 14, field_bytes(1, bytes.fromhex("1cc316abcdef"))
                                            + field_bytes(2, candidate_set(0, candidate(1, bytes([10, 0, 0, 2]), 6000, 100))) + field_varint(3, 1),
                                            padding=bytes(40))),
        ("connect-response", envelope(2, 15, field_fixed64(1, 0x0123456789ABCDEF) + field_bytes(2, good_cert)
                                      + field_bytes(3, candidate_set(3, candidate(2, v4, 40000, 50))) + field_bytes(4, punch)
                                      + field_bytes(5, address(v6, 6000)))),
        ("connect-offer", envelope(0, 16, field_fixed64(1, 0x0123456789ABCDEF) + field_bytes(2, bytes([0x22] * 32))
                                   + field_bytes(3, candidate_set(0, candidate(1, bytes([10, 0, 0, 2]), 6000, 100))) + field_bytes(4, punch)
                                   + field_bytes(5, address(v4, 40000)))),
        ("connect-offer-ack-requested", envelope(0, 16, field_fixed64(1, 0x0123456789ABCDEF) + field_bytes(2, bytes([0x22] * 32))
                                   + field_bytes(3, candidate_set(0, candidate(1, bytes([10, 0, 0, 2]), 6000, 100))) + field_bytes(4, punch)
                                   + field_bytes(5, address(v4, 40000)) + field_varint(6, 1))),
        ("offer-ack", envelope(0, 24, field_fixed64(1, 0x0123456789ABCDEF))),
        ("keepalive-probe", envelope(5, 12, field_varint(1, 14_000))),
        ("candidate-update", envelope(0, 17, field_fixed64(1, 5) + field_bytes(2, candidate_set(1, candidate(3, v4, 40001, 70))))),
        ("relay-request", envelope(3, 18, field_fixed64(1, 5))),
        ("relay-grant", envelope(3, 19, field_fixed64(1, 5) + field_bytes(2, address(v4, 3478)) + field_bytes(3, token))),
        ("close-registration", envelope(0, 20, field_varint(2, 4))),
        ("error-rate-limited", envelope(2, 21, field_varint(1, 9) + field_varint(2, 1) + field_varint(3, 1500))),
    ]
    write("signal-envelopes.json", dict(
        description="canonical encodings of signaling envelopes (protocol version 1); decoding then re-encoding MUST give the same bytes",
        vectors=[dict(name=name, encoded=data.hex()) for name, data in messages]))
    bad = [
        ("version-2", field_varint(1, 2) + field_varint(2, 9) + field_bytes(12, b"", keep_empty=True), "unsupported_version"),
        ("no-body", field_varint(1, 1) + field_varint(2, 9), "missing_field"),
        ("truncated-varint", bytes([0x08, 0x81]), "protobuf"),
        ("oversized", envelope(1, 12, b"", padding=bytes(1100)), "too_large"),
        ("ip-5-bytes", envelope(7, 13, field_bytes(1, address(bytes(5), 1))), "invalid_field"),
        ("port-0", envelope(7, 13, field_bytes(1, address(v4, 0))), "invalid_field"),
        ("port-65536", envelope(7, 13, field_bytes(1, address(v4, 65536))), "invalid_field"),
        ("device-id-5-bytes", envelope(2, 14, field_bytes(1, bytes(5))), "wrong_length"),
        ("seventeen-candidates", envelope(2, 14, field_bytes(1, bytes.fromhex("1cc316abcdef")) + field_bytes(2, candidate_set(0, *[candidate(1, v4, 1, 1)] * 17))), "too_many_candidates"),
        # Six octets that are no device ID (spec/id.md §1): a typed error of its own,
        # which a rendezvous answers like an unknown ID (spec/signaling.md §4.5).
        ("device-id-all-zeros", envelope(2, 14, field_bytes(1, bytes(6))), "not_a_device_id"),
        ("device-id-broadcast", envelope(2, 14, field_bytes(1, bytes([0xFF] * 6))), "not_a_device_id"),
        ("device-id-multicast", envelope(2, 14, field_bytes(1, bytes.fromhex("01005e0000fb"))), "not_a_device_id"),
        ("connect-id-0", envelope(3, 18, b""), "invalid_field"),
        ("offer-ack-connect-id-0", envelope(0, 24, b""), "invalid_field"),
        ("certificate-truncated", envelope(1, 10, field_bytes(1, good_cert[:-1])), "certificate"),
        ("unknown-candidate-kind", envelope(0, 17, field_fixed64(1, 5) + field_bytes(2, candidate_set(0, candidate(9, v4, 1, 1)))), "invalid_field"),
    ]
    write("signal-invalid.json", dict(
        description="inputs that MUST be rejected, with the error", vectors=[dict(name=n, encoded=d.hex(), error=e) for n, d, e in bad]))


signaling(certificates())
