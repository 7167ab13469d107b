"""Chapter 9's floating-point explorer works in the static book: typed numbers show the bits, value and neighbours
that storylib.precision gives, in every format; the arrows step to the neighbours; a clicked bit flips."""

from __future__ import annotations

import torch
from playwright.sync_api import expect

from storylib.precision import FORMATS, decode, encode
from storylib.widgets.floats import neighbours


def expected(x: float, name: str) -> tuple[str, float, float, float]:
    """(the bit string, the stored value, the values below and above it) by storylib.precision."""
    e, m, fn = FORMATS[name]
    t = torch.tensor([x], dtype=torch.float64)
    bits = int(encode(t, e, m, fn))
    below, value, above = (float(v) for v in neighbours(t, e, m, fn))
    return format(bits, f"0{1 + e + m}b"), value, below, above


def shown(root, testid: str) -> float:
    return float(root.locator(f'[data-testid="{testid}"]').inner_text())  # "inf", "-inf", "NaN" read as floats too


def shown_bits(root) -> str:
    return "".join(root.locator('[data-testid="floats-bits"] .fx-bit').all_inner_texts())


def same(a: float, b: float) -> bool:
    """Equal with equal signs (-0 is not +0), or both NaN."""
    return (a == b and str(a)[0] == str(b)[0]) or (a != a and b != b)


def test_float_explorer_shows_the_bits_python_gives(open_chapter):
    page = open_chapter("ch09_precision", min_widgets=1)
    root = page.locator('[data-testid="floats-explorer"]')
    expect(root).to_have_count(1)
    bits, value, _, _ = expected(0.1, "fp16")  # the book opens it on 0.1 in fp16
    expect(root.locator('[data-testid="floats-bits"] .fx-bit')).to_have_count(16)
    assert shown_bits(root) == bits and shown(root, "floats-stored") == value

    box, fmt = root.locator('[data-testid="floats-value"]'), root.locator('[data-testid="floats-format"]')
    cases = [("fp32", "0.1"), ("tf32", "-3.14159"), ("bf16", "1e-8"), ("bf16", "3e38"), ("fp16", "65519"),
             ("fp16", "6e-8"), ("fp8_e4m3", "0.3"), ("fp8_e4m3", "-0.0009"), ("fp8_e5m2", "1000"), ("fp16", "-0")]
    for name, text in cases:
        fmt.select_option(name)
        box.fill(text)
        bits, value, below, above = expected(float(text), name)
        e, m, _ = FORMATS[name]
        expect(root.locator('[data-testid="floats-bits"] .fx-bit')).to_have_count(1 + e + m)
        assert shown_bits(root) == bits, f"{text} in {name}: the widget shows {shown_bits(root)}, Python {bits}"
        for testid, want in (("floats-stored", value), ("floats-below", below), ("floats-above", above)):
            got = shown(root, testid)
            assert same(got, want), f"{text} in {name}: {testid} {got} != {want}"

    # the states: overflow in fp16, saturation in e4m3 (no infinities), underflow to zero, NaN
    state = root.locator('[data-testid="floats-state"]')
    for name, text, word in (("fp16", "70000", "overflow"), ("fp8_e4m3", "500", "saturates"),
                             ("fp16", "1e-9", "underflow"), ("bf16", "nan", "NaN"), ("fp16", "0.00001", "subnormal")):
        fmt.select_option(name)
        box.fill(text)
        expect(state).to_contain_text(word)
    fmt.select_option("fp8_e4m3")
    box.fill("500")  # saturates at 448, and e4m3fn's next pattern up is its NaN: no value up, no step up
    expect(root.locator('[data-testid="floats-above"]')).to_contain_text("none")
    expect(root.locator('[data-testid="floats-up"]')).to_be_disabled()
    box.fill("hello")
    expect(state).to_contain_text("not a number")

    # the arrows step to the neighbours; clicking the sign bit negates
    fmt.select_option("bf16")
    box.fill("1")
    _, _, below, above = expected(1.0, "bf16")
    root.locator('[data-testid="floats-up"]').click()
    expect(box).to_have_value(str(above))
    root.locator('[data-testid="floats-down"]').click()
    root.locator('[data-testid="floats-down"]').click()
    assert shown(root, "floats-stored") == below
    root.locator('[data-testid="floats-bits"] .fx-bit').first.click()
    assert shown(root, "floats-stored") == -below
    e, m, fn = FORMATS["bf16"]
    assert float(decode(torch.tensor([int(shown_bits(root), 2)]), e, m, fn)) == -below
