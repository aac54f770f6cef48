#!/usr/bin/env python3
"""Independent generator of spec/vectors/session-ik.json (second implementation).

Written from spec/session.md only, on top of the `noiseprotocol` package (pip install
noiseprotocol), Python's hashlib/hmac, `cryptography` and `argon2-cffi` (pip install
noiseprotocol cryptography argon2-cffi). The Rust tests check the Rust
implementation against the JSON this script writes, so the two implementations must
agree byte for byte.

    python3 spec/vectors/session-gen.py > spec/vectors/session-ik.json
"""
import hashlib
import hmac
import json
import struct

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.connection import Keypair, NoiseConnection

PATTERN = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"


def h(b):
    return b.hex()


def prologue_peer(device_id):
    return b"sightwire-session" + bytes([1, 0x01]) + device_id


def prologue_rendezvous():
    return b"sightwire-session" + bytes([1, 0x02])


def blake2s_mac16(key, data):
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def labelled_key(label, static_public):
    return hashlib.blake2s(label + static_public).digest()


# --- XChaCha20-Poly1305 from ChaCha20-Poly1305 + HChaCha20 (RFC draft-irtf-cfrg-xchacha) ---
def _rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _qr(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key, nonce16):
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(
        struct.unpack("<4I", nonce16))
    for _ in range(10):
        _qr(s, 0, 4, 8, 12); _qr(s, 1, 5, 9, 13); _qr(s, 2, 6, 10, 14); _qr(s, 3, 7, 11, 15)
        _qr(s, 0, 5, 10, 15); _qr(s, 1, 6, 11, 12); _qr(s, 2, 7, 8, 13); _qr(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_encrypt(key, nonce24, plaintext, ad):
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\0" * 4 + nonce24[16:], plaintext, ad)


def tai64n(unix_nanos):
    """Timestamp of message 1: 2**62 + Unix seconds (u64 BE) || nanoseconds (u32 BE)."""
    return struct.pack(">QI", (1 << 62) + unix_nanos // 1_000_000_000, unix_nanos % 1_000_000_000)


def handshake(name, prologue, init_static, init_eph, resp_static, resp_eph, sender, receiver_hint,
              resp_index, attempt, unix_nanos, plaintexts):
    init = NoiseConnection.from_name(PATTERN)
    init.set_as_initiator()
    init.set_prologue(prologue)
    init.set_keypair_from_private_bytes(Keypair.STATIC, init_static)
    init.set_keypair_from_private_bytes(Keypair.EPHEMERAL, init_eph)
    resp = NoiseConnection.from_name(PATTERN)
    resp.set_as_responder()
    resp.set_prologue(prologue)
    resp.set_keypair_from_private_bytes(Keypair.STATIC, resp_static)
    resp.set_keypair_from_private_bytes(Keypair.EPHEMERAL, resp_eph)
    resp_public = resp.noise_protocol.keypairs["s"].public_bytes
    init.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, resp_public)
    init.start_handshake()
    resp.start_handshake()

    payload1 = struct.pack(">Q", attempt) + tai64n(unix_nanos)
    assert len(payload1) == 20
    msg1 = init.write_message(payload1)
    assert len(msg1) == 116
    body = bytes([0x01]) + struct.pack(">II", sender, receiver_hint) + msg1
    mac1 = blake2s_mac16(labelled_key(b"sightwire-session mac1 v1", resp_public), body)
    initiation = body + mac1 + b"\0" * 16
    assert len(initiation) == 157
    assert resp.read_message(msg1) == payload1

    msg2 = resp.write_message(b"")
    assert len(msg2) == 48
    response = bytes([0x02]) + struct.pack(">II", resp_index, sender) + msg2
    assert init.read_message(msg2) == b""
    hh = init.get_handshake_hash()
    assert hh == resp.get_handshake_hash()

    transports = []
    for counter, (direction, pt) in enumerate(plaintexts):
        # noiseprotocol keeps its own nonce per direction; vectors send one packet per
        # direction at counter 0, then more in order.
        if direction == "i2r":
            ct = init.encrypt(pt)
            receiver = resp_index
        else:
            ct = resp.encrypt(pt)
            receiver = sender
        n = sum(1 for d, _ in plaintexts[:counter] if d == direction)
        packet = bytes([0x04]) + struct.pack(">IQ", receiver, n) + ct
        transports.append({"direction": direction, "counter": n, "plaintext": h(pt), "packet": h(packet)})

    return {
        "name": name,
        "protocol_name": PATTERN.decode(),
        "prologue": h(prologue),
        "initiator_static_private": h(init_static),
        "initiator_static_public": h(init.noise_protocol.keypairs["s"].public_bytes),
        "initiator_ephemeral_private": h(init_eph),
        "responder_static_private": h(resp_static),
        "responder_static_public": h(resp_public),
        "responder_ephemeral_private": h(resp_eph),
        "initiator_index": sender,
        "receiver_index_in_initiation": receiver_hint,
        "responder_index": resp_index,
        "attempt": attempt,
        "unix_nanos": unix_nanos,
        "timestamp": h(tai64n(unix_nanos)),
        "initiation": h(initiation),
        "response": h(response),
        "handshake_hash": h(hh),
        "transport": transports,
    }


def fixed(byte):
    return bytes([byte]) * 32


device_id = bytes.fromhex("001a2b3c4d5e")
peer = handshake("peer", prologue_peer(device_id), fixed(0x11), fixed(0x22), fixed(0x33), fixed(0x44),
                 0x0A0B0C0D, 0, 0x01020304, 1, 1_767_225_600_123_456_789,
                 [("i2r", b""), ("i2r", b"hello camera"), ("r2i", b"hello viewer")])
rekey = handshake("peer-rekey", prologue_peer(device_id), fixed(0x11), fixed(0x55), fixed(0x33), fixed(0x66),
                  0x11111111, 0x01020304, 0x22222222, 7, 1_767_225_720_000_000_001, [("i2r", b"after rekey")])
rendezvous = handshake("rendezvous", prologue_rendezvous(), fixed(0x77), fixed(0x88), fixed(0x99), fixed(0xAA),
                       0xDEADBEEF, 0, 0x0BADF00D, 1, 1, [("i2r", b"register")])

# Cookie: the responder of the peer vector, under load, answers the peer initiation.
resp_public = bytes.fromhex(peer["responder_static_public"])
initiation = bytes.fromhex(peer["initiation"])
cookie_secret = fixed(0xC0)
source_v4 = ("198.51.100.20", 5000)
addr_bytes = bytes([198, 51, 100, 20]) + struct.pack(">H", 5000)
cookie = blake2s_mac16(cookie_secret, addr_bytes)
nonce = bytes(range(24))
mac1 = initiation[125:141]
enc = xchacha20poly1305_encrypt(labelled_key(b"sightwire-session cookie v1", resp_public), nonce, cookie, mac1)
cookie_reply = bytes([0x03]) + struct.pack(">I", peer["initiator_index"]) + nonce + enc
assert len(cookie_reply) == 61
with_mac2 = initiation[:141] + blake2s_mac16(cookie, initiation[:141])

password = b"correct horse battery staple"
salt = b"sightwire-password-v2" + device_id
password_key = hash_secret_raw(password, salt, time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, type=Type.ID, version=19)
proof = hmac.new(password_key, b"sightwire-auth-v1" + bytes.fromhex(peer["handshake_hash"]), "sha256").digest()

print(json.dumps({
    "description": "Sightwire session test vectors (spec/session.md). Generated by session-gen.py, an independent Python implementation; checked by crates/sightwire-session tests.",
    "device_id": h(device_id),
    "handshakes": [peer, rekey, rendezvous],
    "cookie": {
        "responder_static_public": h(resp_public),
        "initiation": peer["initiation"],
        "cookie_secret": h(cookie_secret),
        "source": f"{source_v4[0]}:{source_v4[1]}",
        "cookie": h(cookie),
        "nonce": h(nonce),
        "cookie_reply": h(cookie_reply),
        "initiation_with_mac2": h(with_mac2),
    },
    "auth": {
        "password": password.decode(),
        "device_id": h(device_id),
        "password_key": h(password_key),
        "handshake_hash": peer["handshake_hash"],
        "proof": h(proof),
        "request_password_remember": h(bytes([0x02, 0x01]) + proof),
    },
}, indent=2))
