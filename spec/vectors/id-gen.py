#!/usr/bin/env python3
"""Independent generator of spec/vectors/id.json (second implementation).

Written from spec/id.md only, with the Python standard library (its `unicodedata` for
NFKC). Every vector below states the outcome it is meant to have; the script computes
the outcome with its own reading of the spec and stops if the two differ, so a vector
cannot silently test something else. The Rust tests check crates/sightwire-id against
the JSON this script writes.

    python3 spec/vectors/id-gen.py > spec/vectors/id.json

Inputs are written with every non-ASCII character as a JSON escape (`\\uXXXX`; a
character beyond U+FFFF as its UTF-16 surrogate pair, as JSON does), so the file shows
each invisible or look-alike character by its code point.
"""
import hashlib
import json
import sys
import unicodedata

# --- spec/id.md §2 -----------------------------------------------------------------

MAX_INPUT_LEN = 256

# §2.1 step 2: Unicode White_Space.
WHITE_SPACE = set(range(0x09, 0x0E)) | {0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F,
                                         0x205F, 0x3000} | set(range(0x2000, 0x200B))

# §2.1 step 2: Default_Ignorable_Code_Point, inclusive ranges.
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]
RIGHT_TO_LEFT_OVERRIDE = 0x202E

# §2.1 step 4.
SEPARATORS = {ord(c) for c in ":-."} | set(range(0x2010, 0x2016)) | {
    0x2212, 0x30FC, 0xFF70, 0x3002, 0xFF61}

# §2.2: look-alike letters and what they resemble.
CONFUSABLES = {
    "I": "1", "O": "0", "l": "1", "o": "0",
    "\u017F": "f", "\u0184": "b", "\u0196": "1", "\u01A7": "2", "\u01B7": "3",
    "\u01BC": "5", "\u01C0": "1", "\u021C": "3", "\u0222": "8", "\u0223": "8",
    "\u0251": "a", "\u0391": "A", "\u0392": "B", "\u0395": "E", "\u0399": "1",
    "\u039F": "0", "\u03B1": "a", "\u03BF": "0", "\u03C3": "0", "\u03DC": "F",
    "\u03F2": "c", "\u03F9": "C", "\u0406": "1", "\u0410": "A", "\u0412": "B",
    "\u0415": "E", "\u0417": "3", "\u041E": "0", "\u0421": "C", "\u042C": "b",
    "\u0430": "a", "\u0431": "6", "\u0435": "e", "\u043E": "0", "\u0441": "c",
    "\u04BD": "e", "\u04C0": "1", "\u04E0": "3", "\u0501": "d", "\u1D04": "c",
    "\u1D0F": "0", "\u1D11": "0", "\u1E9D": "f", "\uA644": "2", "\uA75A": "2",
    "\uA76A": "3", "\uA76E": "9", "\uA798": "F", "\uA799": "f", "\uA7AB": "3",
    "\uA7B4": "B", "\uAB32": "e", "\uAB35": "f", "\uAB3D": "0",
}

HEX = "0123456789abcdefABCDEF"


class Refused(Exception):
    def __init__(self, error, **fields):
        super().__init__(error)
        self.vector = {"error": error, **fields}


def is_removed(cp):
    if cp in WHITE_SPACE:
        return True
    return cp != RIGHT_TO_LEFT_OVERRIDE and any(lo <= cp <= hi for lo, hi in DEFAULT_IGNORABLE)


def fold_width(cp):
    return cp - 0xFEE0 if 0xFF01 <= cp <= 0xFF5E else cp


def look_alike(ch, folded):
    if chr(folded) in CONFUSABLES:
        return CONFUSABLES[chr(folded)]
    normal = unicodedata.normalize("NFKC", ch)
    if len(normal) != 1 or normal == ch:
        return None
    if normal in HEX or ord(normal) in SEPARATORS:
        return normal
    return CONFUSABLES.get(normal)


def digits_of(text):
    """§2.1: the hex digit values the input holds, or Refused."""
    if len(text.encode()) > MAX_INPUT_LEN:
        raise Refused("too-long", len=len(text.encode()))
    digits = []
    for index, ch in enumerate(text):
        position = index + 1
        cp = ord(ch)
        if is_removed(cp):
            continue
        folded = fold_width(cp)
        if folded in SEPARATORS:
            continue
        if chr(folded) in HEX:
            digits.append(int(chr(folded), 16))
            if len(digits) > 14:
                raise Refused("wrong-length", digits=15)
            continue
        resembles = look_alike(ch, folded)
        if resembles is not None:
            raise Refused("look-alike", ch=ch, position=position, looks_like=resembles)
        raise Refused("invalid-character", ch=ch, position=position)
    return digits


def crc8(data):
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07 if crc & 0x80 else crc << 1) & 0xFF
    return crc


def octets_of(digits):
    return bytes(digits[i] << 4 | digits[i + 1] for i in range(0, len(digits), 2))


def parse(text, checked=False):
    """§2: the canonical display of the ID `text` names, or Refused."""
    digits = digits_of(text)
    if len(digits) == 0:
        raise Refused("empty")
    if len(digits) == 12 and checked:
        raise Refused("missing-check")
    if len(digits) == 14:
        if crc8(octets_of(digits)) != 0:
            raise Refused("check-mismatch")
        digits = digits[:12]
    elif len(digits) != 12:
        raise Refused("wrong-length", digits=len(digits))
    octets = octets_of(digits)
    if octets == bytes(6):
        raise Refused("all-zeros")
    if octets == b"\xff" * 6:
        raise Refused("broadcast")
    if octets[0] & 1:
        raise Refused("multicast", first_octet=octets[0])
    return ":".join(f"{o:02X}" for o in octets)


def checked_form(canonical):
    octets = bytes.fromhex(canonical.replace(":", ""))
    hexits = octets.hex().upper() + f"{crc8(octets):02X}"
    return "-".join([hexits[0:4], hexits[4:8], hexits[8:12], hexits[12:14]])


# --- §5, §6 --------------------------------------------------------------------------

def fingerprint(public_key):
    return hashlib.sha256(b"sightwire key fingerprint v1" + public_key).digest()[:16].hex()


def parse_uri(text):
    if len(text.encode()) > 512:
        raise Refused("too-long")
    start, end = 0, len(text)
    while start < end and is_removed(ord(text[start])):
        start += 1
    while end > start and is_removed(ord(text[end - 1])):
        end -= 1
    text = text[start:end]
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "sightwire":
        raise Refused("wrong-scheme")
    rest = rest.split("#", 1)[0]
    id_part, _, query = rest.partition("?")
    try:
        canonical = parse(id_part)
    except Refused:
        raise Refused("invalid-id")
    fp = None
    if query:
        for component in query.split("&"):
            name, eq, value = component.partition("=")
            if not eq or not name:
                raise Refused("malformed-parameter")
            if name.lower() == "fp":
                if fp is not None:
                    raise Refused("duplicate-parameter")
                if len(value) != 32 or any(c not in HEX for c in value):
                    raise Refused("invalid-fingerprint")
                fp = value.lower()
    if fp is None:
        raise Refused("missing-fingerprint")
    return canonical, fp


# --- the vectors ---------------------------------------------------------------------

ID = "1C:C3:16:AB:CD:EF"
WIDE_ID = "１ＣＣ３１６ＡＢＣＤＥＦ"  # 12 full-width digits, 36 bytes

ACCEPT = [
    # Spellings of §2.
    (None, "1C:C3:16:AB:CD:EF", ID),
    (None, "1c-c3-16-ab-cd-ef", ID),
    (None, "1CC3.16AB.CDEF", ID),
    (None, "1cc316abcdef", ID),
    (None, "  1C C3 16 AB CD EF  ", ID),
    (None, "1CC3-16AB-CDEF-BC", ID),
    (None, "1cc316abcdefbc", ID),
    (None, "02:00:00:00:00:01", "02:00:00:00:00:01"),
    # §2.1: what phones type.
    ("full-width digits, letters and colons (CJK input method)",
     "１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ", ID),
    ("full-width lower case and hyphens", "１ｃｃ３－１６ａｂ－ｃｄｅｆ", ID),
    ("full-width full stops", "１ＣＣ３．１６ＡＢ．ＣＤＥＦ", ID),
    ("full-width checked form", "１ＣＣ３－１６ＡＢ－ＣＤＥＦ－ＢＣ", ID),
    ("ideographic spaces", "\u3000１Ｃ\u3000Ｃ３\u3000１６\u3000ＡＢ\u3000ＣＤ\u3000ＥＦ\u3000", ID),
    ("full-width and ASCII mixed", "1c：Ｃ3-16.ａB cd\u3000ef", ID),
    ("Japanese input: prolonged sound mark for -", "１ＣＣ３ー１６ＡＢーＣＤＥＦ", ID),
    ("Japanese input: ideographic full stop for .", "1CC3。16AB。CDEF", ID),
    ("half-width prolonged sound mark and ideographic full stop", "1CC3ｰ16AB｡CDEF", ID),
    ("hyphen, non-breaking hyphen, figure dash, en dash, em dash",
     "1C\u2010C3\u201116\u2012AB\u2013CD\u2014EF", ID),
    ("horizontal bar and minus sign", "1CC3\u201516AB\u2212CDEF", ID),
    ("BOM before, zero-width space after", "\ufeff1C:C3:16:AB:CD:EF\u200b", ID),
    ("ZWNJ, ZWJ, word joiner, soft hyphen inside",
     "1C\u200c:C3\u200d:16\u2060:AB\u00ad:CD:EF", ID),
    ("bidi marks and embedding around", "\u200e\u202a1C:C3:16:AB:CD:EF\u202c\u200f", ID),
    ("left-to-right isolate", "\u20661C:C3:16:AB:CD:EF\u2069", ID),
    ("right-to-left isolate and left-to-right override",
     "\u2067\u202d1CC316ABCDEF\u202c\u2069", ID),
    ("Arabic letter mark", "\u061c1CC316ABCDEF", ID),
    ("NBSP, narrow NBSP, thin space, em space",
     "\u00a01C\u202fC3\u200916\u2003AB CD EF\u00a0", ID),
    ("variation selector and tag characters", "1C\ufe0fC316ABCDEF\U000e0001\U000e007f", ID),
    ("Hangul filler and Mongolian vowel separator", "\u31641CC316ABCDEF\u180e", ID),
    ("all of it at once",
     "\ufeff\u3000１ｃ：Ｃ３\u200b：１６：ａｂ\u200d：ＣＤ：ｅｆ\u3000\u200e", ID),
    ("full-width ID padded with ideographic spaces to exactly MAX_INPUT_LEN bytes",
     WIDE_ID + "\u3000" * 73 + " ", ID),
]

REJECT = [
    (None, "", {"error": "empty"}),
    (None, " - : . ", {"error": "empty"}),
    ("only invisible characters and spaces", "\u200b\u3000\ufeff\u00ad", {"error": "empty"}),
    (None, "1C:C3:16:AG:CD:EF", {"error": "invalid-character", "ch": "G", "position": 11}),
    (None, "1C_C3_16_AB_CD_EF", {"error": "invalid-character", "ch": "_", "position": 3}),
    (None, "1C:C3:16:AB:CD", {"error": "wrong-length", "digits": 10}),
    (None, "1C:C3:16:AB:CD:EF:0", {"error": "wrong-length", "digits": 13}),
    (None, "1C:C3:16:AB:CD:EF:0123", {"error": "wrong-length", "digits": 15}),
    ("full-width, one pair short", "１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ", {"error": "wrong-length", "digits": 10}),
    (None, "1CC3-16AB-CDFE-BC", {"error": "check-mismatch"}),
    (None, "1CC3-16AB-CDEF-CB", {"error": "check-mismatch"}),
    (None, "1CC3-16AB-CDEF-BD", {"error": "check-mismatch"}),
    ("full-width, two digits swapped", "１ＣＣ３－１６ＡＢ－ＣＤＦＥ－ＢＣ", {"error": "check-mismatch"}),
    (None, "00:00:00:00:00:00", {"error": "all-zeros"}),
    (None, "FF:FF:FF:FF:FF:FF", {"error": "broadcast"}),
    (None, "01:00:5E:00:00:FB", {"error": "multicast", "first_octet": 1}),
    (None, "33:33:00:00:00:01", {"error": "multicast", "first_octet": 51}),
    ("full-width multicast", "０１：００：５Ｅ：００：００：ＦＢ", {"error": "multicast", "first_octet": 1}),
    ("one byte over the limit", " " * (MAX_INPUT_LEN + 1), {"error": "too-long", "len": 257}),
    ("a valid ID made too long by invisible characters", ID + "\u200b" * 80,
     {"error": "too-long", "len": 257}),
    # §2.2: look-alikes.
    ("Cyrillic capital A", "1C:C3:16:\u0410B:CD:EF",
     {"error": "look-alike", "ch": "\u0410", "position": 10, "looks_like": "A"}),
    ("Cyrillic capital VE for B", "1C:C3:16:A\u0412:CD:EF",
     {"error": "look-alike", "ch": "\u0412", "position": 11, "looks_like": "B"}),
    ("Cyrillic capital ES for C", "1\u0421:C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\u0421", "position": 2, "looks_like": "C"}),
    ("Cyrillic capital IE for E", "1C:C3:16:AB:CD:\u0415F",
     {"error": "look-alike", "ch": "\u0415", "position": 16, "looks_like": "E"}),
    ("Cyrillic small ES for c", "1\u0441:c3:16:ab:cd:ef",
     {"error": "look-alike", "ch": "\u0441", "position": 2, "looks_like": "c"}),
    ("Greek capital ALPHA", "1C:C3:16:\u0391B:CD:EF",
     {"error": "look-alike", "ch": "\u0391", "position": 10, "looks_like": "A"}),
    ("Greek capital BETA", "1C:C3:16:A\u0392:CD:EF",
     {"error": "look-alike", "ch": "\u0392", "position": 11, "looks_like": "B"}),
    ("letter O for digit zero", "O2:00:00:00:00:01",
     {"error": "look-alike", "ch": "O", "position": 1, "looks_like": "0"}),
    ("letter l for digit one", "02:00:00:00:00:0l",
     {"error": "look-alike", "ch": "l", "position": 17, "looks_like": "1"}),
    ("Cyrillic capital O for digit zero", "02:00:00:00:00:\u041e1",
     {"error": "look-alike", "ch": "\u041e", "position": 16, "looks_like": "0"}),
    ("full-width letter O for digit zero", "０２：００：００：００：００：Ｏ１",
     {"error": "look-alike", "ch": "Ｏ", "position": 16, "looks_like": "0"}),
    ("mathematical bold capital A (NFKC would give A)", "1C:C3:16:\U0001D400B:CD:EF",
     {"error": "look-alike", "ch": "\U0001D400", "position": 10, "looks_like": "A"}),
    ("mathematical bold digit one", "\U0001D7CFC:C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\U0001D7CF", "position": 1, "looks_like": "1"}),
    ("mathematical monospace digit two", "0\U0001D7F8:00:00:00:00:01",
     {"error": "look-alike", "ch": "\U0001D7F8", "position": 2, "looks_like": "2"}),
    ("double-struck capital C", "1\u2102:C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\u2102", "position": 2, "looks_like": "C"}),
    ("circled capital A", "1C:C3:16:\u24b6B:CD:EF",
     {"error": "look-alike", "ch": "\u24b6", "position": 10, "looks_like": "A"}),
    ("circled digit one", "\u2460C:C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\u2460", "position": 1, "looks_like": "1"}),
    ("superscript two", "0\u00b2:00:00:00:00:01",
     {"error": "look-alike", "ch": "\u00b2", "position": 2, "looks_like": "2"}),
    ("Roman numeral one hundred", "1\u216d:C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\u216d", "position": 2, "looks_like": "C"}),
    ("small colon", "1C\ufe55C3:16:AB:CD:EF",
     {"error": "look-alike", "ch": "\ufe55", "position": 3, "looks_like": ":"}),
    ("one dot leader", "1CC3\u202416AB.CDEF",
     {"error": "look-alike", "ch": "\u2024", "position": 5, "looks_like": "."}),
    ("look-alike after invisible characters: positions count them",
     "\u200b\ufeff1C:C3:16:\u0391B:CD:EF",
     {"error": "look-alike", "ch": "\u0391", "position": 12, "looks_like": "A"}),
    # §2.3: refused, not look-alikes.
    ("right-to-left override: would display the ID reversed", "\u202e1C:C3:16:AB:CD:EF",
     {"error": "invalid-character", "ch": "\u202e", "position": 1}),
    ("Arabic number sign: a visible format character", "1C:C3:16:AB:CD:EF\u0600",
     {"error": "invalid-character", "ch": "\u0600", "position": 18}),
    ("middle dot is not a separator", "1CC3\u00b716AB\u00b7CDEF",
     {"error": "invalid-character", "ch": "\u00b7", "position": 5}),
    ("katakana middle dot is not a separator", "1CC3\u30fb16AB\u30fbCDEF",
     {"error": "invalid-character", "ch": "\u30fb", "position": 5}),
    ("Cherokee A: look-alikes outside Latin, Greek, Cyrillic", "1C:C3:16:\u13aaB:CD:EF",
     {"error": "invalid-character", "ch": "\u13aa", "position": 10}),
    ("combining acute accent", "1C:C3:16:AB:CD:E\u0301F",
     {"error": "invalid-character", "ch": "\u0301", "position": 17}),
    ("keycap digit", "1\ufe0f\u20e3C:C3:16:AB:CD:EF",
     {"error": "invalid-character", "ch": "\u20e3", "position": 3}),
    ("full-width G", "1C:C3:16:AB:CD:EＧ",
     {"error": "invalid-character", "ch": "Ｇ", "position": 17}),
    ("Arabic-Indic digit one", "\u0661C:C3:16:AB:CD:EF",
     {"error": "invalid-character", "ch": "\u0661", "position": 1}),
    ("braille pattern blank", "1C:C3:16:AB:CD:EF\u2800",
     {"error": "invalid-character", "ch": "\u2800", "position": 18}),
]

CRC8 = ["313233343536373839", "1cc316abcdef", "001122334455", "f0deadbeef02",
        "ac233f000001", "020000000001", "3c8d20fffffe"]

CHECKED = ["1C:C3:16:AB:CD:EF", "00:11:22:33:44:55", "F0:DE:AD:BE:EF:02",
           "AC:23:3F:00:00:01", "02:00:00:00:00:01", "3C:8D:20:FF:FF:FE"]

KEYS = [bytes(range(32)), bytes([7] * 32)]

FP0 = fingerprint(KEYS[0])
CANONICAL_URI = f"sightwire:1CC316ABCDEFBC?fp={FP0}"

URI_ACCEPT = [
    CANONICAL_URI,
    f"SIGHTWIRE:1c:c3:16:ab:cd:ef?v=2&FP={FP0.upper()}&x=%20#lbl",
    f"\ufeff\u200e {CANONICAL_URI}\u200b\u3000\n",
    f"sightwire:１ＣＣ３－１６ＡＢ－ＣＤＥＦ－ＢＣ?fp={FP0}",
]

ZERO_FP = "0" * 32
URI_REJECT = [
    ("https://example.com/1CC316ABCDEF", "wrong-scheme"),
    ("sightwire:1CC316ABCDEFBC", "missing-fingerprint"),
    ("sightwire:1CC316ABCDEFBC?fp=00&fp=00", "invalid-fingerprint"),
    (f"sightwire:1CC316ABCDEFBC?fp={ZERO_FP}&fp={ZERO_FP}", "duplicate-parameter"),
    ("sightwire:1CC316ABCDEFBC?fp", "malformed-parameter"),
    (f"sightwire:1CC316ABCDFEBC?fp={ZERO_FP}", "invalid-id"),
    ("sightwire:00000000000000000000000000000000", "invalid-id"),
    (f"sightwire:1C:C3:16:\u0410B:CD:EF?fp={ZERO_FP}", "invalid-id"),
    (f"\u202esightwire:1CC316ABCDEFBC?fp={ZERO_FP}", "wrong-scheme"),
    (f"ｓｉｇｈｔｗｉｒｅ：1CC316ABCDEFBC?fp={ZERO_FP}", "wrong-scheme"),
    (f"sightwire:1CC316ABCDEFBC?fp=\u200b{ZERO_FP}", "invalid-fingerprint"),
]


def outcome(text):
    try:
        return {"id": parse(text)}
    except Refused as refused:
        return refused.vector


def with_note(note, vector):
    return ({"note": note} if note else {}) | vector


def main():
    accept = []
    for note, text, expected in ACCEPT:
        got = outcome(text)
        assert got == {"id": expected}, (note, text, got)
        accept.append(with_note(note, {"input": text, "id": expected}))
    assert len(ACCEPT[-1][1].encode()) == MAX_INPUT_LEN

    reject = []
    for note, text, expected in REJECT:
        got = outcome(text)
        assert got == expected, (note, text, got)
        reject.append(with_note(note, {"input": text} | expected))

    checked = []
    for canonical in CHECKED:
        form = checked_form(canonical)
        assert parse(form, checked=True) == canonical
        checked.append({"id": canonical, "checked": form})

    uri_accept = []
    for text in URI_ACCEPT:
        canonical, fp = parse_uri(text)
        writer = f"sightwire:{checked_form(canonical).replace('-', '')}?fp={fp}"
        uri_accept.append({"uri": text, "id": canonical, "fingerprint": fp, "canonical": writer})

    uri_reject = []
    for text, error in URI_REJECT:
        try:
            parse_uri(text)
            raise AssertionError(f"{text!r} was accepted")
        except Refused as refused:
            assert refused.vector["error"] == error, (text, refused.vector)
        uri_reject.append({"uri": text, "error": error})

    vectors = {
        "description": "Test vectors for spec/id.md, written by spec/vectors/id-gen.py. "
                       "Loaded by crates/sightwire-id/tests/vectors.rs.",
        "crc8": [{"input_hex": h, "crc": f"{crc8(bytes.fromhex(h)):02X}"} for h in CRC8],
        "accept": accept,
        "reject": reject,
        "checked": checked,
        "fingerprint": [{"public_key_hex": k.hex(), "fingerprint": fingerprint(k)} for k in KEYS],
        "uri_accept": uri_accept,
        "uri_reject": uri_reject,
        "look_alike_table": [{"letter": k, "looks_like": v}
                             for k, v in sorted(CONFUSABLES.items())],
    }
    json.dump(vectors, sys.stdout, indent=2, ensure_ascii=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
