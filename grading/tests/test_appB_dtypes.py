"""Appendix B — two's complement and UTF-8 by hand: storylib/textbytes.py against NumPy and Python's codec.

Oracles: NumPy's signed-to-unsigned views (int8 -> uint8, ..., int64 -> uint64) for two's complement, and
Python's own UTF-8 codec, strict, for text. The encoder and decoder are checked on *every* code point (one string
of all 1,112,064 characters), the encoder on every one of the 2,048 surrogates; the decoder's accept/reject on
every single byte, on every lead byte followed by every second byte near the continuation range (completed to the
length the lead asks for), and on random byte strings drawn near the edges of Unicode's Table 3-7.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from storylib import textbytes as T

ALL_CHARACTERS = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000)


def strict(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_or_none(data: bytes) -> str | None:
    try:
        return T.utf8_decode(data)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- appB.twos_complement


@pytest.mark.exercise("appB.twos_complement")
@pytest.mark.parametrize("signed, unsigned", [(np.int8, np.uint8), (np.int16, np.uint16), (np.int32, np.uint32),
                                              (np.int64, np.uint64)])
def test_twos_complement_equals_numpy_bits(signed, unsigned):
    rng = np.random.default_rng(np.dtype(signed).itemsize)
    info = np.iinfo(signed)
    values = [info.min, info.min + 1, -1, 0, 1, info.max - 1, info.max]
    values += [int(v) for v in rng.integers(info.min, info.max, size=40, endpoint=True)]
    values += [int(v) for v in rng.integers(-300, 300, size=20)]  # small ones, most common
    values = [v for v in values if info.min <= v <= info.max]
    bits = 8 * np.dtype(signed).itemsize
    want = np.array(values, dtype=signed).view(unsigned).tolist()
    assert [T.twos_complement(v, bits) for v in values] == want


@pytest.mark.exercise("appB.twos_complement")
def test_twos_complement_odd_widths_and_range():
    rng = random.Random(41)
    for bits in (1, 3, 5, 7, 12, 31, 33, 70):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        for v in {lo, hi, -1 if bits > 1 else 0, 0, rng.randint(lo, hi), rng.randint(lo, hi)}:
            p = T.twos_complement(v, bits)
            assert 0 <= p < 2**bits and p % 2**bits == v % 2**bits, f"{v} in {bits} bits"
            assert (p >> (bits - 1)) == (v < 0), "the top bit is the sign"
            assert T.from_twos_complement(p, bits) == v
        for v in (hi + 1, lo - 1, hi + rng.randint(2, 99)):
            with pytest.raises(ValueError):
                T.twos_complement(v, bits)


# ----------------------------------------------------------------------------- appB.utf8_encode


@pytest.mark.exercise("appB.utf8_encode")
def test_utf8_encode_every_code_point():
    got = T.utf8_encode(ALL_CHARACTERS)
    assert isinstance(got, bytes), f"utf8_encode should return bytes, got {type(got).__name__}"
    assert got == ALL_CHARACTERS.encode("utf-8")


@pytest.mark.exercise("appB.utf8_encode")
def test_utf8_encode_rejects_every_surrogate():
    rng = random.Random(7)
    rejected = 0
    for cp in range(0xD800, 0xE000):  # every surrogate, one at a time, inside some ordinary text
        s = rng.choice(["", "a", "é", "月", "🙂"]) + chr(cp) + rng.choice(["", "b", "€"])
        with pytest.raises(ValueError):
            T.utf8_encode(s)
        rejected += 1
    assert rejected == 2048
    assert T.utf8_encode("") == b"" and T.utf8_encode("Once upon a time") == b"Once upon a time"


# ----------------------------------------------------------------------------- appB.utf8_decode


@pytest.mark.exercise("appB.utf8_decode")
def test_utf8_decode_every_code_point():
    data = ALL_CHARACTERS.encode("utf-8")
    got = T.utf8_decode(data)
    assert isinstance(got, str) and got == ALL_CHARACTERS


@pytest.mark.exercise("appB.utf8_decode")
def test_utf8_decode_every_short_string_accepts_and_rejects_like_python():
    """Every single byte, and every lead byte of a longer sequence followed by every second byte near the
    continuation range (the second byte is where overlongs, surrogates and values beyond U+10FFFF show), completed
    with as many continuation bytes as the lead asks for."""
    cases = [bytes([b]) for b in range(256)]
    for lead in range(0xC0, 0xF8):
        for second in range(0x7E, 0xC2):
            cases.append(bytes([lead, second]) + b"\x80\xbf"[: T.utf8_length(lead) - 2])
    mismatches = [(c.hex(" "), strict(c), decode_or_none(c)) for c in cases if strict(c) != decode_or_none(c)]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ from bytes.decode, e.g. {mismatches[:3]}"


def edge_bytes(rng: random.Random, n: int) -> bytes:
    """Bytes near the edges of UTF-8's table: lead bytes, continuation bytes, ASCII, and the special ones."""
    pool = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED,
            0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFF]
    return bytes(rng.choice(pool) if rng.random() < 0.7 else rng.randrange(256) for _ in range(n))


@pytest.mark.exercise("appB.utf8_decode")
def test_utf8_decode_random_byte_strings_like_python():
    rng = random.Random(2026)
    cases = [edge_bytes(rng, rng.randint(1, 9)) for _ in range(1500)]
    # valid text with one byte changed, dropped or cut off at the end: the errors a stream or a tokenizer makes
    for _ in range(500):
        good = bytearray("".join(chr(rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x800),
                                                 rng.randrange(0xE000, 0x10000), rng.randrange(0x10000, 0x110000)]))
                                 for _ in range(rng.randint(1, 5))).encode())
        k = rng.randrange(len(good))
        kind = rng.randrange(3)
        if kind == 0:
            good[k] = rng.randrange(256)
        elif kind == 1:
            del good[k]
        else:
            good = good[:k + 1]
        cases.append(bytes(good))
    accepted = sum(strict(c) is not None for c in cases)
    # ~10% of the draw is valid text whatever the seed (the class regrade salts it): enough of both kinds
    assert 50 < accepted < len(cases) - 50, f"the draw should mix valid and invalid strings: {accepted} valid"
    mismatches = [(c.hex(" "), strict(c), decode_or_none(c)) for c in cases if strict(c) != decode_or_none(c)]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ from bytes.decode, e.g. {mismatches[:3]}"


def test_wrap_equals_numpy_overflow():
    a = np.array([100, -128, 127, 77, -5], dtype=np.int8)
    b = np.array([100, -1, 1, 99, -128], dtype=np.int8)
    with np.errstate(over="ignore"):
        assert (a + b).tolist() == [T.wrap(int(x) + int(y), 8) for x, y in zip(a, b, strict=True)]
    u = np.array([250, 3, 255], dtype=np.uint8)
    assert (u + np.uint8(10)).tolist() == [T.wrap(int(x) + 10, 8, signed=False) for x in u]
    assert [T.utf8_length(b) for b in (0x41, 0xC3, 0xE2, 0xF0, 0x80, 0xF8)] == [1, 2, 3, 4, 0, 0]
