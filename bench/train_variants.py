"""Which speed-ups help GPT-2 small's training step? Variants of bench/train_throughput.py's baseline loop, one run.

    python bench/train_variants.py [--rows base,cdt,...] [--out bench/results/train_variants_h100.json]

Every row trains the nanoGPT-style baseline of bench/train_throughput.py (124M, context 1,024, micro-batch 16,
bf16 autocast, fused AdamW, torch.compile) with one change, and reports the median GPU time of a step (CUDA
events, steps 16-45) and the wall time of 10 more steps:

  base, base2   nothing changed (first and last: how far the card drifted)
  cdt           Inductor's coordinate-descent tuning of its own kernels' block sizes
  copt          clipping + AdamW (foreach) compiled into one Inductor graph, instead of fused AdamW
  flash         SDPA forced to the FlashAttention-2 backend (PyTorch picks cuDNN's kernel on Hopper)
  ao_*          torchao's FP8 training (`convert_to_float8_training`; needs `pip install torchao`):
                ao_t tensorwise scaling, every Linear; ao_r rowwise, every Linear; ao_t_nohead all but lm_head;
                ao_t_head lm_head only; ao_t_mlp the MLP's two Linears only
  ao_t_copt     ao_t and copt together

storylib's own FP8 (storylib.precision) and coordinate-descent settings are measured against the baseline in
bench/train_throughput.py; this file is the survey that chose them. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.train_throughput import BaselineGPT, T, V  # noqa: E402

ROWS = {
    "base": {}, "cdt": {"cdt": True}, "copt": {"copt": True}, "flash": {"attn": "flash"},
    "ao_t": {"fp8": "tensorwise"}, "ao_r": {"fp8": "rowwise"}, "ao_t_nohead": {"fp8": "tensorwise:nohead"},
    "ao_t_head": {"fp8": "tensorwise:head"}, "ao_t_mlp": {"fp8": "tensorwise:mlp"},
    "ao_t_copt": {"fp8": "tensorwise", "copt": True}, "base2": {},
}
FP8_FILTERS = {"": lambda mod, fqn: True, "nohead": lambda mod, fqn: fqn != "lm_head",
               "head": lambda mod, fqn: fqn == "lm_head", "mlp": lambda mod, fqn: fqn.endswith(("c_fc", "mlp_proj"))}


def measure(fp8: str = "", cdt: bool = False, copt: bool = False, attn: str = "", batch: int = 16,
            steps: int = 45, skip: int = 15) -> dict:
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    inductor.coordinate_descent_tuning = cdt
    torch.manual_seed(0)
    t_start = time.time()
    model = BaselineGPT().cuda()
    if fp8:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        recipe, _, which = fp8.partition(":")
        convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                                   module_filter_fn=FP8_FILTERS[which])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    groups = [{"params": decay, "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    params = list(model.parameters())
    opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), **({"foreach": True} if copt else {"fused": True}))

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    update_fn = torch.compile(update) if copt else update
    fwd = torch.compile(model)

    def step() -> torch.Tensor:
        x = torch.randint(0, V, (batch, T), device="cuda")
        y = torch.randint(0, V, (batch, T), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        loss.backward()
        update_fn()
        opt.zero_grad(set_to_none=True)
        return loss

    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if attn == "flash" else nullcontext():
        events = []
        for i in range(steps):
            if i >= skip:
                events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
                events[-1][0].record()
            step()
            if i >= skip:
                events[-1][1].record()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            loss = step()
        loss_value = loss.item()
        wall_ms = (time.perf_counter() - t0) / 10 * 1000
    return {"ms_step_gpu_median": statistics.median(a.elapsed_time(b) for a, b in events), "ms_step_wall": wall_ms,
            "tok_s_wall": batch * T / wall_ms * 1000, "loss": loss_value, "seconds": round(time.time() - t_start, 1),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"from {', '.join(ROWS)}")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_variants_h100.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/train_variants.py needs a CUDA GPU; none found.", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        import torchao
        ao = torchao.__version__
    except ImportError:
        ao = None
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "torchao": ao, "rows": {}}
    for row in args.rows.split(","):
        if ROWS[row].get("fp8") and ao is None:
            result["rows"][row] = {"error": "torchao is not installed"}
            continue
        result["rows"][row] = r = measure(**ROWS[row])
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = result["rows"].get("base", r)["ms_step_gpu_median"]
        print(f"{row:12} GPU {r['ms_step_gpu_median']:6.2f} ms/step ({base / r['ms_step_gpu_median']:.3f}x base)  "
              f"wall {r['ms_step_wall']:6.2f} ms  {r['tok_s_wall']:>9,.0f} tok/s  ({r['seconds']} s)", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
