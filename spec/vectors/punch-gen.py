#!/usr/bin/env python3
"""Generates spec/vectors/punch-probes.json independently of the Rust code.

Run from the repository root: python3 spec/vectors/punch-gen.py
"""
import hashlib
import hmac
import ipaddress
import json

KEY = bytes(range(32))
DOMAIN = b"sightwire punch v1"
TX = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabac")


def tag(body):
    return hmac.new(KEY, DOMAIN + body, hashlib.sha256).digest()[:16]


def pkt(kind, flags, fourth, txid, extra=b""):
    body = bytes([kind, 1, flags, fourth]) + txid + extra
    return body + tag(body)


def v4(addr, port):
    return 4, port.to_bytes(2, "big") + ipaddress.IPv4Address(addr).packed


def v6(addr, port):
    return 6, port.to_bytes(2, "big") + ipaddress.IPv6Address(addr).packed


valid = [
    dict(name="request-nominate-from-controlling", kind="request", nominate=True,
         sender="controlling", transaction=TX.hex(), packet=pkt(0x20, 0x03, 0, TX).hex()),
    dict(name="request-from-controlled", kind="request", nominate=False,
         sender="controlled", transaction=TX.hex(), packet=pkt(0x20, 0x00, 0, TX).hex()),
]
fam, extra = v4("203.0.113.7", 40000)
valid.append(dict(name="response-ipv4", kind="response", observed="203.0.113.7:40000",
                  sender="controlled", transaction=TX.hex(),
                  packet=pkt(0x21, 0x00, fam, TX, extra).hex()))
fam, extra = v6("2001:db8::1", 5000)
valid.append(dict(name="response-ipv6", kind="response", observed="[2001:db8::1]:5000",
                  sender="controlling", transaction=TX.hex(),
                  packet=pkt(0x21, 0x02, fam, TX, extra).hex()))
valid.append(dict(name="open", kind="open", sender="controlling", transaction=TX.hex(),
                  packet=pkt(0x22, 0x02, 0, TX).hex()))

good = bytes.fromhex(valid[0]["packet"])
bad_tag = bytearray(good)
bad_tag[-1] ^= 1
resp = bytes.fromhex(valid[2]["packet"])
invalid = [
    dict(name="empty", packet="", error="Empty"),
    dict(name="session-byte", packet="01", error="NotPunch"),
    dict(name="unknown-punch-type", packet="2f01000000", error="UnknownType"),
    dict(name="short-header", packet="2001", error="Truncated"),
    dict(name="version-2", packet="20020000" + "00" * 28, error="UnsupportedVersion"),
    dict(name="bad-address-family", packet="21010005" + "00" * 34, error="UnknownAddressFamily"),
    dict(name="truncated-request", packet=good[:-1].hex(), error="Truncated"),
    dict(name="trailing-byte", packet=(good + b"\x00").hex(), error="TrailingBytes"),
    dict(name="flipped-tag-bit", packet=bytes(bad_tag).hex(), error="BadTag"),
    dict(name="response-trailing", packet=(resp + b"\x00").hex(), error="TrailingBytes"),
    dict(name="nominate-flag-on-open", packet=pkt(0x22, 0x01, 0, TX).hex(), error="InvalidFlags"),
    dict(name="undefined-flag-bit", packet=pkt(0x20, 0x80, 0, TX).hex(), error="InvalidFlags"),
    dict(name="reserved-byte-set", packet=pkt(0x20, 0x00, 0x09, TX).hex(), error="ReservedNotZero"),
]
doc = {
    "description": "Punch probe vectors (spec/punch.md). Tags computed independently with "
                   "Python's hmac module: HMAC-SHA256(key, 'sightwire punch v1' || body)[:16].",
    "key": KEY.hex(),
    "valid": valid,
    "invalid": invalid,
}
with open("spec/vectors/punch-probes.json", "w") as f:
    f.write(json.dumps(doc, indent=2) + "\n")
