"""Chapter 9's FloatExplorer without a browser: its traits, and its JavaScript under node against storylib.precision.

js/floats.js decodes, encodes and steps to the neighbouring values by itself (the static book has no kernel); here
it must agree with storylib.precision's decode/encode (and storylib.widgets.floats.neighbours) on every fp8, fp16 and
bf16 bit pattern, on random patterns of fp32 and tf32, and on random doubles: log-uniform over each format's range
and beyond, every tie between neighbours and the doubles just beside each tie. Values travel as the hex of their
float64 bits, so nothing is lost on the way (-0, NaN, the last bit). The browser side is tests/e2e/test_ch09_widget.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest
import torch

from storylib.precision import FORMATS, decode, encode, format_info
from storylib.widgets.floats import FLOATS_JS, FloatExplorer, neighbours

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def to_hex(x: torch.Tensor) -> list[str]:
    return [struct.pack(">d", v).hex() for v in x.double().tolist()]


def from_hex(h: list[str]) -> torch.Tensor:
    return torch.tensor([struct.unpack(">d", bytes.fromhex(s))[0] for s in h], dtype=torch.float64)


def run_node(tmp_path, jobs: dict) -> dict:
    """Run js/floats.js's pure functions under node on {fmt: {"patterns": [...], "values": [hex, ...]}}."""
    script = tmp_path / "floats.mjs"
    script.write_text(FLOATS_JS + """
import fs from "node:fs";
const hexToDouble = (h) => { F64.setBigUint64(0, BigInt("0x" + h)); return F64.getFloat64(0); };
const doubleToHex = (v) => { F64.setFloat64(0, v); return F64.getBigUint64(0).toString(16).padStart(16, "0"); };
const jobs = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = {};
for (const [name, job] of Object.entries(jobs)) {
  const [e, m, fn] = job.format;
  const xs = job.values.map(hexToDouble);
  const r = xs.map((x) => explain(x, e, m, fn));
  out[name] = {
    decoded: job.patterns.map((b) => doubleToHex(decodeBits(b, e, m, fn))),
    bits: r.map((q) => q.bits), value: r.map((q) => doubleToHex(q.value)),
    below: r.map((q) => doubleToHex(q.below)), above: r.map((q) => doubleToHex(q.above)),
    state: r.map((q) => q.state), ulp: r.map((q) => doubleToHex(q.ulp)),
  };
}
console.log(JSON.stringify(out));
""")
    data = tmp_path / "in.json"
    data.write_text(json.dumps(jobs))
    proc = subprocess.run(["node", str(script), str(data)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"node failed:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def rounding_cases(name: str, g: torch.Generator) -> torch.Tensor:
    """Doubles that test rounding in a format: log-uniform magnitudes from below its smallest subnormal to beyond its
    largest value, the exact ties between neighbouring values (and at the top, between max and the next step up),
    the doubles just beside each tie, the format's own values, specials."""
    e, m, fn = FORMATS[name]
    info = format_info(e, m, fn)
    lo, hi = torch.tensor(info["min_subnormal"] / 8).log2(), torch.tensor(info["max"] * 8).log2()
    n = 3000
    mags = torch.exp2(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    if e + m <= 15:  # every pattern of fp8, fp16, bf16
        patterns = torch.arange(2 ** (e + m))
    else:
        patterns = torch.randint(0, 2 ** (e + m) - 2**m, (4000,), generator=g)  # finite non-negative patterns
    vals = decode(patterns, e, m, fn)
    vals = vals[vals.isfinite()]
    ups = decode(encode(vals, e, m, fn) + 1, e, m, fn)
    ok = ups.isfinite()
    ties = (vals[ok] + ups[ok]) / 2  # exact in float64: both have at most 24 significant bits
    top = torch.tensor([info["max"] + 2.0 ** (torch.tensor(info["max"]).log2().floor().item() - m) / 2])  # max's tie
    ties = torch.cat([ties, top])
    beside = torch.cat([torch.nextafter(ties, torch.tensor(torch.inf, dtype=torch.float64)),
                        torch.nextafter(ties, torch.tensor(0.0, dtype=torch.float64))])
    specials = torch.tensor([0.0, -0.0, torch.inf, -torch.inf, torch.nan, 1e308, -1e308, 5e-324, -5e-324, 2.0**-1022,
                             1.0, -1.0, 0.1, 1 / 3, info["max"], -info["max"], info["min_normal"]], dtype=torch.float64)
    return torch.cat([mags * signs, vals, -vals, ties, -ties, beside, -beside, specials])


def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal values with equal signs (so -0 != +0), or both NaN."""
    return ((a == b) & (torch.signbit(a) == torch.signbit(b))) | (a.isnan() & b.isnan())


@pytest.fixture(scope="module")
def node_results(tmp_path_factory):
    g = torch.Generator().manual_seed(9)
    jobs, inputs = {}, {}
    for name, fmt in FORMATS.items():
        e, m, _ = fmt
        if e + m <= 15:
            patterns = torch.arange(2 ** (1 + e + m))
        else:
            patterns = torch.randint(0, 2 ** (1 + e + m), (20_000,), generator=g)
            patterns = torch.cat([patterns, torch.tensor([0, 2 ** (e + m), 2 ** (e + m) - 1, 2 ** (1 + e + m) - 1])])
        x = rounding_cases(name, g)
        inputs[name] = (patterns, x)
        jobs[name] = {"format": list(fmt), "patterns": patterns.tolist(), "values": to_hex(x)}
    return inputs, run_node(tmp_path_factory.mktemp("floats"), jobs)


@pytest.mark.parametrize("name", list(FORMATS))
def test_javascript_decode_equals_python(name, node_results):
    inputs, out = node_results
    patterns, _ = inputs[name]
    e, m, fn = FORMATS[name]
    ref = decode(patterns, e, m, fn)
    mine = from_hex(out[name]["decoded"])
    bad = ~same(mine, ref)
    assert not bad.any(), f"{name}: {int(bad.sum())} patterns decode differently, e.g. {patterns[bad][:5].tolist()}"


@pytest.mark.parametrize("name", list(FORMATS))
def test_javascript_encode_and_neighbours_equal_python(name, node_results):
    inputs, out = node_results
    _, x = inputs[name]
    e, m, fn = FORMATS[name]
    ref_bits = encode(x, e, m, fn)
    bits = torch.tensor(out[name]["bits"], dtype=torch.int64)
    nan = x.isnan()
    assert torch.equal(bits[~nan], ref_bits[~nan]), (
        f"{name}: {int((bits != ref_bits)[~nan].sum())} of {len(x)} doubles encode differently, e.g. "
        f"{x[(bits != ref_bits) & ~nan][:5].tolist()}")
    assert decode(bits[nan], e, m, fn).isnan().all(), "NaN must encode as a NaN pattern"
    below, value, above = neighbours(x, e, m, fn)
    for what, ref in (("value", value), ("below", below), ("above", above)):
        mine = from_hex(out[name][what])
        bad = ~same(mine, ref)
        assert not bad.any(), f"{name}: the {what} of {x[bad][:5].tolist()} is {mine[bad][:5].tolist()}, " \
                              f"Python says {ref[bad][:5].tolist()}"
    finite = value.isfinite() & (value != 0)
    ulp = from_hex(out[name]["ulp"])
    # the spacing of the value's binade: the gap to the next value away from zero
    away = torch.where(value > 0, above, -below)
    assert torch.equal(ulp[finite & away.isfinite()], (away - value.abs())[finite & away.isfinite()])


def test_states_the_widget_names(tmp_path):
    cases = {  # (format, x) -> state
        ("fp16", 1.0): "normal", ("fp16", 6e-8): "subnormal", ("fp16", 1e-8): "underflow", ("fp16", 0.0): "zero",
        ("fp16", 7e4): "overflow", ("fp16", 65519.0): "normal", ("fp16", 65520.0): "overflow",
        ("fp8_e4m3", 460.0): "normal", ("fp8_e4m3", 464.0): "saturated", ("fp8_e4m3", float("inf")): "saturated",
        ("fp8_e5m2", 6e4): "normal", ("fp8_e5m2", 6.2e4): "overflow",
        ("bf16", float("-inf")): "infinity", ("fp32", float("nan")): "nan", ("bf16", 1e38): "normal",
    }
    jobs = {f"{name} {x!r}": {"format": list(FORMATS[name]), "patterns": [], "values": to_hex(torch.tensor([x]))}
            for name, x in cases}
    out = run_node(tmp_path, jobs)
    for (name, x), state in cases.items():
        got = out[f"{name} {x!r}"]["state"][0]
        assert got == state, f"{x!r} in {name}: the widget says {got!r}, expected {state!r}"


def test_typed_numbers_parse_and_print_back(tmp_path):
    script = tmp_path / "parse.mjs"
    texts = ["0.1", "-2.5e-3", "+7", "inf", "-Infinity", "NaN", "1e400", "-0", ".5", "1.", "abc", "", "1e", "0x10"]
    script.write_text(FLOATS_JS + "\nconsole.log(JSON.stringify(" + json.dumps(texts)
                      + ".map((t) => { const v = parseNumber(t); return v === null ? null : showNumber(v); })));\n")
    proc = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ["0.1", "-0.0025", "7", "inf", "-inf", "NaN", "inf", "-0", "0.5", "1", None, None,
                                       None, None]


def test_the_widget_holds_the_formats_and_the_typed_value():
    w = FloatExplorer(value=0.1, format="bf16")
    assert w.formats == {k: list(v) for k, v in FORMATS.items()}
    assert (w.format, w.value) == ("bf16", "0.1")
    assert FloatExplorer(value=float("-inf")).value == "-inf"
    with pytest.raises(ValueError, match="unknown format 'fp64'"):
        FloatExplorer(format="fp64")
