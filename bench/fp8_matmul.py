"""Chapter 9's FP8 matmul on a GPU: torch._scaled_mm with per-tensor scales against torch.mm in bf16 (and fp32, tf32),
speed (TFLOP/s) and error (relative to a float64 product of the same inputs), square sizes and the matmuls of the
storyteller and of GPT-2 small.

    python bench/fp8_matmul.py --out bench/results/fp8_matmul_h100.json      (on an H100: a few minutes)
    python bench/fp8_matmul.py --dry-run                                      (CPU: shapes, quantizer, emulated math)

Every matmul multiplies A (M, K) by B (K, N), both float32 with standard normal entries, rounded to the format on the
way in. fp8: e4m3 operands, each scaled by storylib.precision.to_float8 (the trainer's cast: scale = 448 / amax,
checked here to equal fp8_quantize's), bf16 out, fp32 accumulation in the tensor cores; B is column-major, as
_scaled_mm requires. Times: CUDA events around a block of calls lasting a few milliseconds, after warm-up, the median
of --repeats blocks; "fp8 + casts" also times the two amax/scale/cast passes that a training step pays for each
matmul (Float8Linear casts its input and its weight every time). The error of a method is ||C - C64||_F / ||C64||_F.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.machine import cpu_name  # noqa: E402
from storylib import precision as P  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SQUARE = (1024, 2048, 4096, 8192)


def model_shapes() -> list[dict]:
    """(M, K, N) of the training matmuls of the storyteller (models/storyteller/config.json: its batch of 32 x 512
    tokens) and of GPT-2 small (16 x 1024 tokens): attention's qkv projection, the MLP's two, the lm_head."""
    cfg = json.loads((ROOT / "models/storyteller/config.json").read_text())
    m = cfg["model"]
    ours = ("storyteller", cfg["train"]["batch_size"] * m["block_size"], m["n_embd"], m["vocab_size"])
    out = []
    for model, rows, C, vocab in (ours, ("GPT-2 small", 16384, 768, 50304)):
        out += [{"name": f"{model} qkv", "M": rows, "K": C, "N": 3 * C},
                {"name": f"{model} MLP up", "M": rows, "K": C, "N": 4 * C},
                {"name": f"{model} MLP down", "M": rows, "K": 4 * C, "N": C},
                {"name": f"{model} lm_head", "M": rows, "K": C, "N": vocab}]
    return out


def all_shapes() -> list[dict]:
    return [{"name": f"square {n}", "M": n, "K": n, "N": n} for n in SQUARE] + model_shapes()


def operands(M: int, K: int, N: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(M, K, generator=g, device=device), torch.randn(K, N, generator=g, device=device))


def methods(A: torch.Tensor, B: torch.Tensor) -> dict:
    """name -> a function computing A @ B that way (inputs cast once, outside, except for "fp8 + casts")."""
    a16, b16 = A.bfloat16(), B.bfloat16()
    W = B.t().contiguous()  # B stored as nn.Linear stores its weight: (N, K) row-major, so W.t() is column-major
    a8, a_inv = P.to_float8(A, P.E4M3)
    w8, w_inv = P.to_float8(W, P.E4M3)

    def fp8_with_casts():  # what Float8Linear's forward pays: both casts, then the matmul
        x8, x_inv = P.to_float8(A, P.E4M3)
        v8, v_inv = P.to_float8(W, P.E4M3)
        return P.scaled_mm(x8, x_inv, v8.t(), v_inv, torch.bfloat16)

    def fp32():
        torch.backends.cuda.matmul.allow_tf32 = False
        return A @ B

    def tf32():
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return A @ B
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False

    return {"fp32": fp32, "tf32": tf32, "bf16": lambda: torch.mm(a16, b16),
            "fp8 e4m3": lambda: P.scaled_mm(a8, a_inv, w8.t(), w_inv, torch.bfloat16),
            "fp8 e4m3 + casts": fp8_with_casts}


def rel_error(C: torch.Tensor, C64: torch.Tensor) -> float:
    return float((C.double() - C64).norm() / C64.norm())


def time_ms(fn, repeats: int, block_ms: float = 5.0) -> tuple[float, list[float]]:
    """Median milliseconds of one call: CUDA events around blocks of calls lasting ~block_ms, after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, round(block_ms / max(start.elapsed_time(end), 1e-3)))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples), samples


def check_quantizer(A: torch.Tensor) -> None:
    """The trainer's cast (to_float8) is the chapter's fp8_quantize: the same values and the same scale."""
    a8, a_inv = P.to_float8(A, P.E4M3)
    dq, scale = P.fp8_quantize(A, P.E4M3)
    assert torch.allclose(a_inv.reciprocal(), scale.to(a_inv.device), rtol=1e-6), "the scales differ"
    assert torch.allclose(a8.float() * a_inv, dq, rtol=1e-6, atol=0), "to_float8 and fp8_quantize differ"


def measure(shape: dict, device: str, repeats: int) -> dict:
    M, K, N = shape["M"], shape["K"], shape["N"]
    assert M % 16 == 0 and K % 16 == 0 and N % 16 == 0, f"{shape}: _scaled_mm wants multiples of 16"
    A, B = operands(M, K, N, device)
    check_quantizer(A)
    C64 = A.double() @ B.double()
    row = {**shape, "flop": 2 * M * K * N, "methods": {}}
    for name, fn in methods(A, B).items():
        C = fn()
        assert C.shape == (M, N), (name, C.shape)
        r = {"out_dtype": str(C.dtype).removeprefix("torch."), "rel_error": rel_error(C, C64)}
        if device == "cuda":
            ms, samples = time_ms(fn, repeats)
            r.update(ms=ms, tflops=2 * M * K * N / ms / 1e9, ms_samples=[round(s, 5) for s in samples])
        row["methods"][name] = r
        del C
    del C64, A, B
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def print_row(row: dict) -> None:
    cells = []
    for name, r in row["methods"].items():
        speed = f" {r['tflops']:7.1f} TF/s" if "tflops" in r else ""
        cells.append(f"{name} {r['rel_error']:.2e}{speed}")
    print(f"{row['name']:>22} ({row['M']}x{row['K']}x{row['N']}): " + " | ".join(cells), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/fp8_matmul_h100.json")
    ap.add_argument("--repeats", type=int, default=25, help="timed blocks per method and shape (the median is kept)")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU: every shape checked, the quantizer and the (emulated) math on small sizes; "
                         "writes nothing")
    args = ap.parse_args(argv)
    shapes = all_shapes()
    if args.dry_run:
        for s in shapes:  # the real shapes: all multiples of 16, as _scaled_mm requires
            assert s["M"] % 16 == 0 and s["K"] % 16 == 0 and s["N"] % 16 == 0, s
        small = [{"name": "small", "M": 64, "K": 48, "N": 80}, {"name": "small, tall", "M": 256, "K": 32, "N": 16}]
        rows = [measure(s, "cpu", args.repeats) for s in small]
        for row in rows:
            print_row(row)
            err = {k: v["rel_error"] for k, v in row["methods"].items()}
            assert err["fp32"] < 1e-6 and 1e-4 < err["bf16"] < 1e-2 and 1e-2 < err["fp8 e4m3"] < 0.1, err
        print(f"dry run: {len(shapes)} shapes are multiples of 16; to_float8 == fp8_quantize; the emulated FP8 "
              "matmul's error is in its expected range. On a GPU: python bench/fp8_matmul.py")
        return 0
    if not torch.cuda.is_available() or not P.fp8_supported("cuda"):
        sys.exit("bench/fp8_matmul.py needs a CUDA GPU with FP8 tensor cores (compute capability 8.9 or newer, e.g. "
                 "an H100); on a CPU, `--dry-run` checks the shapes and the quantizer")
    t0 = time.time()
    res = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "card": torch.cuda.get_device_name(),
           "capability": list(torch.cuda.get_device_capability()), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "repeats": args.repeats, "operands": "float32 standard normal, rounded to each format on the way in",
           "reference": "float64 product of the same float32 operands", "rows": []}
    for s in shapes:
        row = measure(s, "cuda", args.repeats)
        print_row(row)
        res["rows"].append(row)
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
