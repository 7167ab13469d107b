"""A floating-point explorer for Chapter 9: pick a format and a number, see its bits, its neighbours, its error.

    from storylib.widgets import FloatExplorer
    FloatExplorer(value="0.1", format="fp16")

The formats are storylib.precision.FORMATS (fp32, tf32, fp16, bf16, fp8 e4m3fn, fp8 e5m2), each one its
(exponent bits, mantissa bits, fn). Everything the widget shows is computed in its JavaScript (js/floats.js), so it
stays live in the static book where no Python kernel runs: the sign, exponent and mantissa bits (click one to flip
it), the stored value and its formula, the values just below and above it (the arrow buttons step there), the
spacing there, the absolute and relative rounding error of the typed number, and its state (normal, subnormal,
underflow, overflow, saturated, NaN). The traits `format` and `value` (the number as typed: "0.1", "inf", "nan")
are all Python holds.

js/floats.js encodes and decodes as storylib.precision.encode/decode do (round to nearest, ties to even, from the
double); tests/test_floats_widget.py runs it under node over every fp8, fp16 and bf16 pattern and random doubles and
compares it with Python's.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import torch
import traitlets

from storylib.precision import FORMATS, decode, encode
from storylib.widgets import front_end

# The widget's ES module as text; its first part (encodeValue, decodeBits, explain, ...) is pure functions.
FLOATS_JS = front_end("floats")


def neighbours(x: torch.Tensor, exp_bits: int, man_bits: int, fn: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(below, value, above): the format value nearest to each x (float64), and the values just below and above it.

    The patterns are walked in the order of their values, +0 and -0 counting as one point: past ±max comes ±inf
    (NaN in an fn format, which has none), past ±inf NaN; a NaN has NaN neighbours. What js/floats.js shows.
    """
    n = exp_bits + man_bits
    bits = encode(x, exp_bits, man_bits, fn)
    sign, mag = bits >> n, bits & (2**n - 1)
    order = torch.where(sign == 1, -mag, mag)

    def at(o: torch.Tensor) -> torch.Tensor:
        return decode(torch.where(o < 0, 2**n - o, o), exp_bits, man_bits, fn)

    value = decode(bits, exp_bits, man_bits, fn)
    below, above = (torch.where(value.isnan(), torch.nan, at(order + d)) for d in (-1, 1))
    return below, value, above


class FloatExplorer(anywidget.AnyWidget):
    """A number in a floating-point format: its bits, its neighbours, the spacing there and its rounding error."""

    _esm = FLOATS_JS
    _css = Path(__file__).parent / "js" / "floats.css"
    formats = traitlets.Dict().tag(sync=True)  # name -> [exp_bits, man_bits, fn]
    format = traitlets.Unicode("fp16").tag(sync=True)
    value = traitlets.Unicode("0.1").tag(sync=True)  # as typed: JSON has no inf or NaN, and "0.1" stays "0.1"

    def __init__(self, value: str | float = "0.1", format: str = "fp16", **kwargs) -> None:  # noqa: A002
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
        super().__init__(formats={k: list(v) for k, v in FORMATS.items()}, format=format,
                         value=value if isinstance(value, str) else repr(float(value)), **kwargs)
