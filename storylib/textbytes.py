"""Appendix B — integers as bits and text as bytes, written to be read from top to bottom.

A computer stores a fixed number of bits per integer; which integer a bit pattern means is a convention. The
convention for signed integers is *two's complement*; the one for text is Unicode code points, stored as bytes by
*UTF-8*. Tokenizers (Chapter 6) and the streaming decoder (Chapter 12) work on those bytes.

    twos_complement       the n-bit pattern of a signed integer               (exercise appB.twos_complement)
    from_twos_complement  the signed integer an n-bit pattern stands for
    wrap                  what an n-bit register keeps of a result (overflow), as int8/int32/uint8 tensors do
    utf8_encode           a string to UTF-8 bytes, by hand                      (exercise appB.utf8_encode)
    utf8_decode           UTF-8 bytes to a string, strictly: every malformed byte sequence is rejected
                                                                                (exercise appB.utf8_decode)
    utf8_length           how many bytes a lead byte announces (0 for a continuation or an invalid byte)

UTF-8 (RFC 3629; Unicode's Table 3-7 lists the well-formed sequences):

    U+0000..U+007F     0xxxxxxx                              1 byte  (ASCII is itself)
    U+0080..U+07FF     110xxxxx 10xxxxxx                     2 bytes
    U+0800..U+FFFF     1110xxxx 10xxxxxx 10xxxxxx            3 bytes (not U+D800..U+DFFF: surrogates)
    U+10000..U+10FFFF  11110xxx 10xxxxxx 10xxxxxx 10xxxxxx   4 bytes
"""

from __future__ import annotations

MAX_CODE_POINT = 0x10FFFF
SURROGATES = range(0xD800, 0xE000)  # UTF-16's halves of a pair: code points, never characters
_MIN_OF_LENGTH = {1: 0, 2: 0x80, 3: 0x800, 4: 0x10000}  # the smallest code point each length may encode

# ----------------------------------------------------------------------------- integers


def twos_complement(value: int, bits: int) -> int:
    """The `bits`-bit pattern, as an unsigned integer 0..2^bits - 1, that stores the signed `value` in two's
    complement: value itself when value >= 0, else 2^bits + value (so -1 is all ones, and the top bit says
    "negative"). value must lie in -2^(bits-1)..2^(bits-1) - 1, else ValueError (it does not fit); bits >= 1.
    Example: twos_complement(-3, 8) = 253 = 0b11111101."""
    ### BEGIN SOLUTION appB.twos_complement (§B.1, 1 pt): check the range; negatives wrap around to 2^bits + value
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits}")
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"{value} does not fit in {bits}-bit two's complement")
    return value if value >= 0 else (1 << bits) + value
    ### END SOLUTION


def from_twos_complement(pattern: int, bits: int) -> int:
    """The signed integer a `bits`-bit pattern (0..2^bits - 1) stands for: the top bit weighs -2^(bits-1)."""
    if not 0 <= pattern < 1 << bits:
        raise ValueError(f"{pattern} is not a {bits}-bit pattern")
    return pattern - (1 << bits) if pattern >> (bits - 1) else pattern


def wrap(value: int, bits: int, signed: bool = True) -> int:
    """What a `bits`-bit register keeps of an exact result: its low `bits` bits, read as signed or unsigned.
    This is overflow: int8 100 + 100 = -56, uint8 250 + 10 = 4 (torch and NumPy integer tensors do the same)."""
    low = value & ((1 << bits) - 1)
    return from_twos_complement(low, bits) if signed else low


# ----------------------------------------------------------------------------- UTF-8


def utf8_encode(text: str) -> bytes:
    """The UTF-8 bytes of `text`, by hand (Chapter 6's utf8_encode did one code point; here a whole string).

    A Python str can hold lone surrogates (chr(0xD800)), which are not characters: raise ValueError for one,
    as str.encode("utf-8") does. Do not call str.encode or bytes.decode."""
    ### BEGIN SOLUTION appB.utf8_encode (§B.3, 1 pt): per code point: the length from its range, lead byte + 10xxxxxx
    out = bytearray()
    for i, ch in enumerate(text):
        cp = ord(ch)
        if cp in SURROGATES:
            raise ValueError(f"position {i}: U+{cp:04X} is a surrogate, not a character")
        if cp < 0x80:
            out.append(cp)
        elif cp < 0x800:
            out += bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
        elif cp < 0x10000:
            out += bytes([0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
        else:
            out += bytes([0xF0 | cp >> 18, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    return bytes(out)
    ### END SOLUTION


def utf8_length(lead: int) -> int:
    """How many bytes a sequence starting with byte `lead` has: 1 (0xxxxxxx), 2 (110xxxxx), 3 (1110xxxx),
    4 (11110xxx); 0 for a continuation byte (10xxxxxx) or a byte no sequence starts with (11111xxx)."""
    if lead < 0x80:
        return 1
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 0


def utf8_decode(data: bytes) -> str:
    """The text that the UTF-8 bytes `data` encode, strictly: raise ValueError (saying at which byte) unless
    every sequence is well formed, exactly as data.decode("utf-8") accepts and rejects. Reject:

    - a byte that cannot start a sequence (a continuation byte 10xxxxxx, or 11111xxx);
    - a sequence cut short (a missing continuation byte, at the end or before the next lead byte);
    - an *overlong* sequence: more bytes than the code point needs (C0 80 for U+0000);
    - a surrogate (ED A0 80 is U+D800) and anything above U+10FFFF (F4 90 80 80).

    Do not call bytes.decode or str.encode."""
    ### BEGIN SOLUTION appB.utf8_decode (§B.4, 3 pts): length from the lead, 10xxxxxx after it, then the range checks
    chars = []
    i = 0
    while i < len(data):
        n = utf8_length(data[i])
        if n == 0:
            raise ValueError(f"byte {i}: {data[i]:#04x} cannot start a UTF-8 sequence")
        cp = data[i] & (0x7F >> n if n > 1 else 0x7F)  # the lead byte's payload bits
        for k in range(1, n):
            if i + k >= len(data) or data[i + k] >> 6 != 0b10:
                raise ValueError(f"byte {i}: a {n}-byte sequence cut short after {k} byte(s)")
            cp = cp << 6 | data[i + k] & 0x3F
        if cp < _MIN_OF_LENGTH[n]:
            raise ValueError(f"byte {i}: overlong: U+{cp:04X} in {n} bytes")
        if cp in SURROGATES or cp > MAX_CODE_POINT:
            raise ValueError(f"byte {i}: U+{cp:04X} is not a character (surrogate or beyond U+10FFFF)")
        chars.append(chr(cp))
        i += n
    return "".join(chars)
    ### END SOLUTION
