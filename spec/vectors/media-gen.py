#!/usr/bin/env python3
"""Generates media-packets.json from the byte tables of spec/media.md.

Written independently of the Rust code (struct.pack from the spec's layouts), so the
vectors check the implementation against the document. Run: python3 media-gen.py
"""
import json
import struct

FRAGMENT = ">BBBBIIQIHH"  # type stream codec flags packet_seq frame_seq capture_us size index count
valid = []
invalid = []


def frag(name, stream, codec, flags, pseq, fseq, ts, size, idx, cnt, payload):
    pkt = struct.pack(FRAGMENT, 0x40, stream, codec, flags, pseq, fseq, ts, size, idx, cnt) + payload
    valid.append(dict(name=name, kind="fragment", hex=pkt.hex(), fields=dict(
        stream=stream, codec=codec, flags=flags, packet_seq=pseq, frame_seq=fseq,
        capture_time_us=ts, frame_size=size, fragment_index=idx, fragment_count=cnt,
        payload=payload.hex())))


def nack(name, seq, entries):
    pkt = struct.pack(">BHB", 0x41, seq, len(entries)) + b"".join(struct.pack(">BIHH", *e) for e in entries)
    valid.append(dict(name=name, kind="nack", hex=pkt.hex(), fields=dict(nack_seq=seq, entries=[
        dict(stream=e[0], frame_seq=e[1], first_fragment=e[2], fragment_count=e[3]) for e in entries])))


def report(name, ts, echo, interval, exp, rec, byt, jit):
    e = echo or (0, 0)
    pkt = struct.pack(">BBIIIIIIII", 0x43, 1 if echo else 0, ts, e[0], e[1], interval, exp, rec, byt, jit)
    valid.append(dict(name=name, kind="report", hex=pkt.hex(), fields=dict(
        timestamp_ms=ts, echo=None if not echo else dict(timestamp_ms=e[0], delay_ms=e[1]),
        interval_ms=interval, packets_expected=exp, packets_received=rec, bytes_received=byt,
        jitter_us=jit)))


def bad(name, pkt, err):
    invalid.append(dict(name=name, hex=pkt.hex(), error=err))


frag("single-fragment Opus frame", 1, 0x13, 0x01, 7, 42, 1_000_000, 5, 0, 1, bytes([0xfc, 1, 2, 3, 4]))
# A 10-byte frame in 4 fragments: ceil(10/4) = 3 bytes each, the last one 1 byte.
frag("last fragment of a 10-byte H.264 keyframe in 4 fragments", 0, 0x01, 0x03, 0xfffffffe, 0,
     0x0102030405060708, 10, 3, 4, bytes([0x99]))
frag("retransmitted middle fragment", 0, 0x02, 0x04, 100, 9, 33_333, 10, 1, 4, bytes([1, 2, 3]))
# SKIPPED (0x08): frames before this one were not sent; after a skipped reference frame the
# next frame is a keyframe (KEYFRAME | SKIPPED = 0x09).
frag("H.265 keyframe after frames the sender skipped", 0, 0x02, 0x09, 11, 12, 400_000, 3, 0, 1,
     bytes([0x26, 0x01, 0xaf]))
nack("NACK of a run and of a whole unseen frame", 3, [(0, 9, 5, 2), (0, 10, 0, 0xffff)])
valid.append(dict(name="keyframe request for video", kind="keyframe_request", hex=bytes([0x42, 0]).hex(),
                  fields=dict(stream=0)))
report("first report, no echo", 0, None, 0, 0, 0, 0, 0)
report("report with echo and 5 % loss", 1200, (1190, 3), 200, 200, 190, 228000, 1500)
message = b'{"ptz":"left"}'
valid.append(dict(name="control message", kind="control_data", hex=(struct.pack(">BI", 0x44, 5) + message).hex(),
                  fields=dict(seq=5, message=message.hex())))
valid.append(dict(name="control ack: 0..4 and 6 received", kind="control_ack",
                  hex=struct.pack(">BII", 0x45, 5, 1).hex(), fields=dict(cumulative=5, selective=1)))
# Feedback: packets base+0 at reference, base+3 at +1.2 ms, base+1 (reordered) at +2.5 ms; the
# base sequence number wraps (0xfffffffe + 3 = 1).
def feedback(name, base, ref, entries):
    pkt = struct.pack(">BIIH", 0x46, base, ref, len(entries))
    for off, t in entries:
        pkt += struct.pack(">HH", off, t)
    valid.append(dict(name=name, kind="feedback", hex=pkt.hex(),
                      fields=dict(base_seq=base, reference_us=ref,
                                  entries=[dict(packet_seq=(base + off) % 2**32,
                                                arrival_us=(ref + 100 * t) % 2**32) for off, t in entries])))


feedback("feedback across a sequence and clock wrap", 0xfffffffe, 0xffffff00, [(0, 0), (3, 12), (1, 25)])

bad("empty", b"", "Empty")
bad("unknown type", bytes([0x01, 0]), "UnknownType")
bad("fragment header truncated", bytes([0x40]) + bytes(20), "Truncated")
bad("stream id 16", struct.pack(FRAGMENT, 0x40, 16, 1, 0, 0, 0, 0, 1, 0, 1) + b"x", "InvalidStream")
bad("unknown codec", struct.pack(FRAGMENT, 0x40, 0, 0x7f, 0, 0, 0, 0, 1, 0, 1) + b"x", "UnknownCodec")
bad("reserved fragment flag", struct.pack(FRAGMENT, 0x40, 0, 1, 0x80, 0, 0, 0, 1, 0, 1) + b"x", "ReservedFlags")
bad("lowest reserved fragment flag (0x10)", struct.pack(FRAGMENT, 0x40, 0, 1, 0x10, 0, 0, 0, 1, 0, 1) + b"x",
    "ReservedFlags")
bad("fragment count larger than frame size", struct.pack(FRAGMENT, 0x40, 0, 1, 0, 0, 0, 0, 2, 0, 3) + b"x",
    "BadFragmentLayout")
bad("empty last fragment layout (10 bytes in 6)", struct.pack(FRAGMENT, 0x40, 0, 1, 0, 0, 0, 0, 10, 0, 6) + b"xx",
    "BadFragmentLayout")
bad("index past count", struct.pack(FRAGMENT, 0x40, 0, 1, 0, 0, 0, 0, 10, 4, 4) + b"x", "BadFragmentLayout")
bad("payload shorter than its slot", struct.pack(FRAGMENT, 0x40, 0, 1, 0, 0, 0, 0, 10, 0, 4) + b"xx",
    "BadFragmentLayout")
bad("frame size above protocol limit",
    struct.pack(FRAGMENT, 0x40, 0, 1, 0, 0, 0, 0, 16 * 1024 * 1024 + 1, 0, 1) + b"x", "BadFragmentLayout")
bad("NACK with zero entries", struct.pack(">BHB", 0x41, 0, 0), "BadNackCount")
bad("NACK with 129 entries", struct.pack(">BHB", 0x41, 0, 129) + bytes(9 * 129), "BadNackCount")
bad("NACK shorter than its count", struct.pack(">BHB", 0x41, 0, 2) + bytes(9), "Truncated")
bad("NACK entry with bad stream", struct.pack(">BHB", 0x41, 0, 1) + struct.pack(">BIHH", 200, 0, 0, 1),
    "InvalidStream")
bad("keyframe request with trailing byte", bytes([0x42, 0, 0]), "TrailingBytes")
bad("report with reserved flag", struct.pack(">BBIIIIIIII", 0x43, 2, 0, 0, 0, 0, 0, 0, 0, 0), "ReservedFlags")
bad("control message of 1001 bytes", struct.pack(">BI", 0x44, 0) + bytes(1001), "ControlMessageTooLong")
bad("feedback with zero entries", struct.pack(">BIIH", 0x46, 0, 0, 0), "BadFeedbackCount")
bad("feedback with 251 entries", struct.pack(">BIIH", 0x46, 0, 0, 251) + bytes(4 * 251), "BadFeedbackCount")
bad("feedback shorter than its count", struct.pack(">BIIH", 0x46, 0, 0, 2) + bytes(4), "Truncated")
bad("feedback with a trailing byte", struct.pack(">BIIH", 0x46, 0, 0, 1) + bytes(5), "TrailingBytes")
bad("control ack truncated", struct.pack(">BI", 0x45, 0), "Truncated")

with open("media-packets.json", "w") as out:
    json.dump(dict(description="Media packet test vectors (spec/media.md). 'valid' packets decode to "
                               "'fields' and re-encode to 'hex'; 'invalid' packets fail with the named "
                               "DecodeError variant. Generated by media-gen.py, independently of the Rust code.",
                   valid=valid, invalid=invalid), out, indent=1)
    out.write("\n")
