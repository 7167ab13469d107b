"""Build solutions/appB_dtypes.ipynb, the nbgrader source notebook of Appendix B (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("appB_dtypes", title="Appendix B — Data types and UTF-8")
nb.markdown(
    """
    In this notebook you write `storylib/textbytes.py`: two's complement for signed integers, and a UTF-8 encoder
    and a strict decoder by hand. The graded cells compare your encoder and decoder with Python's own codec on
    every code point, and your decoder's accept/reject with Python's on many malformed byte strings.
    """
)
nb.exercise(
    "appB.twos_complement",
    try_it="""
    import numpy as np

    print([twos_complement(v, 8) for v in (-128, -1, 0, 127)], "NumPy:",
          np.array([-128, -1, 0, 127], dtype=np.int8).view(np.uint8).tolist())
    print(format(twos_complement(-3, 5), "05b"), "(expected 11101)")
    """,
)
nb.question(
    "appB_q_int8_sum",
    points=1,
    prompt="""
    Two int8 tensors hold 120 and 30. What does their sum hold, as an int8? Set `int8_sum`.
    """,
    solution="int8_sum = 150 - 256",
    test="assert int8_sum == -106, 'only the low 8 bits are kept: 150 - 256'",
)
nb.exercise(
    "appB.utf8_encode",
    try_it="""
    for text in ["A", "é", "€", "🙂", "Once upon a time"]:
        print(repr(text), utf8_encode(text).hex(" "), "Python:", text.encode("utf-8").hex(" "))
    """,
)
nb.exercise(
    "appB.utf8_decode",
    try_it="""
    for data in [b"caf\\xc3\\xa9", b"\\xc0\\xaf", b"\\xe2\\x82", b"\\xed\\xa0\\x80", b"\\xf0\\x9f\\x99\\x82"]:
        try:
            print(data, "->", repr(utf8_decode(data)))
        except ValueError as e:
            print(data, "-> rejected:", e)
    """,
)

if __name__ == "__main__":
    print(nb.write())
