#!/usr/bin/env python3
"""Writes nodes.json: homes and successors of device IDs over fixed node lists
(spec/multinode.md §3), computed independently of the Rust code.

weight(name, id) = first 8 bytes, big-endian, of BLAKE2s-256(len(name) || name || id);
home = highest (weight, name), successor = second highest.
"""
import hashlib, json, sys

def weight(name, device_id):
    data = bytes([len(name)]) + name.encode("ascii") + device_id
    return int.from_bytes(hashlib.blake2s(data).digest()[:8], "big")

def ranked(names, device_id):
    return sorted(names, key=lambda n: (weight(n, device_id), n), reverse=True)

LISTS = [
    ["rv1"],
    ["rv1", "rv2"],
    ["rv1", "rv2", "rv3"],
    ["eu-west-1.a", "eu-west-1.b", "us-east-1.a", "ap-south-1.a", "node_5"],
]
IDS = [
    "1cc316abcdef", "000000000001", "02ffffffffff", "1cc316000000", "a0b1c2d3e4f5",
    "00163e123456", "b827eb000001", "3c5ab4010203", "f0f1f2f3f4f5", "5254000a0b0c",
]

vectors = []
for names in LISTS:
    for hex_id in IDS:
        device_id = bytes.fromhex(hex_id)
        order = ranked(names, device_id)
        vectors.append({
            "nodes": names,
            "device_id": hex_id,
            "weights": {n: format(weight(n, device_id), "016x") for n in names},
            "home": order[0],
            "successor": order[1] if len(order) > 1 else None,
        })

json.dump({"hash": "blake2s-256(len(name) || name || id)[0..8] big-endian",
           "vectors": vectors}, sys.stdout, indent=1)
sys.stdout.write("\n")
