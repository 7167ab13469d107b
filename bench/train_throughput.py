"""Training throughput at GPT-2 124M shape: a plain PyTorch baseline vs storylib's trainer, in one run.

    python bench/train_throughput.py [--steps 60] [--batch 16] [--rows storylib,...] [--out bench/results/...json]

Both train GPT-2 small (12 layers, 12 heads, 768 wide, context 1024, vocabulary padded to 50,304) in bf16 autocast
with fused AdamW and torch.compile, at the same micro-batch:

  baseline: a nanoGPT-style model written in this file (nn.Module blocks, F.scaled_dot_product_attention,
      tied head), random token batches made on the GPU (no data loading at all), clipping at 1.0; measured first,
      and again last (`baseline_again`: how far the card drifted during the run);
  storylib rows (VARIANTS, chosen with --rows): `storylib.train.train` itself on the same shape (its GPT with
      fused=True, its WindowSampler reading a token stream from CPU memory, its logging), tokens/s taken from its
      own train_log.jsonl, with TrainConfig settings on top: none (`storylib`), `fp8 = "lm_head"` (the largest
      matmul, 768 x 50,304, in FP8: storylib.precision), `compile_mode = "coordinate-descent"` (Inductor tunes
      its kernels' block sizes), both; not in the default rows: `fp8 = "all"` (every Linear in FP8: slower at
      this width, the casts cost more than the matmuls save), `loss_chunks = 1` (lm_head + cross-entropy fused,
      storylib.precision.fused_loss), `compile_mode = "max-autotune-no-cudagraphs"` (minutes of matmul autotuning).

`ratio_storylib_over_baseline` is the best storylib row's (named in `best_storylib_row`) over the first baseline.
tokens/s is the median over logging windows after the first `--skip` steps (compilation, warm-up); MFU uses
nanoGPT's estimate (6·N + 12·L·H·Q·T flops per token, N without position embeddings) against the card's dense bf16
peak. Needs a CUDA GPU; refuses to run without one (a benchmark on the wrong device means nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

L, H, C, T, V = 12, 12, 768, 1024, 50304
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, SXM


# ----------------------------------------------------------------------------- (a) the baseline, nanoGPT-style


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T_, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class BaselineGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))


def run_baseline(steps: int, batch: int, skip: int, log_every: int) -> list[float]:
    """tokens/s of each logging window after `skip` steps."""
    torch.manual_seed(0)
    model = BaselineGPT().cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model)
    rates, t_last = [], None
    for step in range(1, steps + 1):
        x = torch.randint(0, V, (batch, T), device="cuda")
        y = torch.randint(0, V, (batch, T), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0:
            loss.item()  # synchronises, as a training loop's logging does
            now = time.perf_counter()
            if step > skip and t_last is not None:
                rates.append(batch * T * log_every / (now - t_last))
            t_last = now
    return rates


# ----------------------------------------------------------------------------- (b) storylib's trainer


# storylib's rows: TrainConfig settings on top of the common ones in run_storylib
VARIANTS = {
    "storylib": {},
    "storylib_fp8_head": {"fp8": "lm_head"},
    "storylib_cdt": {"compile_mode": "coordinate-descent"},
    "storylib_fp8_head_cdt": {"fp8": "lm_head", "compile_mode": "coordinate-descent"},
    "storylib_fp8_all": {"fp8": "all"},
    "storylib_fused_loss": {"loss_chunks": 1},
    "storylib_autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
}


def run_storylib(steps: int, batch: int, skip: int, log_every: int, **settings) -> tuple[list[float], int]:
    from storylib.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            n_layer=L, n_head=H, n_embd=C, block_size=T, dropout=0.0, fused=True, vocab_size=V,
            data="synthetic", n_train_stories=4000, n_val_stories=2, eval_stories=2,
            batch_size=batch, max_steps=steps, lr=6e-4, min_lr=6e-5, warmup_steps=min(10, steps), weight_decay=0.1,
            device="cuda", dtype="bf16", compile=True,
            out_dir=str(Path(tmp) / "run"), log_interval=log_every, eval_interval=10 * steps, ckpt_interval=10 * steps,
            **settings,
        ).validate()
        train(cfg, quiet=True)
        rows = [json.loads(line) for line in open(Path(tmp) / "run" / "train_log.jsonl")]
    rates = [r["tokens_per_s"] for r in rows if r.get("event") == "train" and r["step"] > skip + log_every]
    from storylib.gpt2 import GPT, GPTConfig

    n = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C)).num_params()
    return rates, n


def mfu(tokens_per_s: float, n_params: int, peak: float) -> float:
    flops_per_token = 6 * (n_params - T * C) + 12 * L * H * (C // H) * T
    return tokens_per_s * flops_per_token / peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--skip", type=int, default=20, help="steps not timed (compilation, warm-up)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--rows", default="storylib,storylib_fp8_head,storylib_cdt,storylib_fp8_head_cdt",
                   help=f"storylib's rows, in order, from {', '.join(VARIANTS)}")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    if unknown := [r for r in rows if r not in VARIANTS]:
        p.error(f"unknown rows {unknown}; known: {', '.join(VARIANTS)}")
    if not torch.cuda.is_available():
        print("bench/train_throughput.py needs a CUDA GPU; none found.", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in card), float("nan"))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    windows = {"baseline": run_baseline(args.steps, args.batch, args.skip, args.log_every)}
    seconds = {}
    for row in rows:
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        windows[row], n_params = run_storylib(args.steps, args.batch, args.skip, args.log_every, **VARIANTS[row])
        seconds[row] = time.perf_counter() - t0
        print(f"{row}: {statistics.median(windows[row]):,.0f} tok/s ({seconds[row]:.0f} s in all)", flush=True)
    torch.cuda.empty_cache()
    windows["baseline_again"] = run_baseline(args.steps, args.batch, args.skip, args.log_every)  # did the card drift?
    rate = {k: statistics.median(v) for k, v in windows.items()}
    b = rate["baseline"]
    best = max(rows, key=rate.__getitem__)
    result = {
        "what": "GPT-2 124M shape training throughput: nanoGPT-style baseline vs storylib.train (same run, same card)",
        "card": card,
        "machine": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "shape": {"n_layer": L, "n_head": H, "n_embd": C, "block_size": T, "vocab_size": V, "params": n_params,
                  "micro_batch": args.batch, "tokens_per_step": args.batch * T},
        "setup": "bf16 autocast, fused AdamW, torch.compile (default mode unless a row says), TF32, clip 1.0, no grad "
                 "accumulation",
        "timing": f"median tokens/s over windows of {args.log_every} steps after the first {args.skip} of {args.steps}",
        "order": ["baseline", *rows, "baseline_again"],
    }
    for name in result["order"]:
        settings = {} if name.startswith("baseline") else VARIANTS[name]
        result[name] = {"tokens_per_s": rate[name], "mfu_vs_bf16_peak": mfu(rate[name], n_params, peak),
                        "ratio_over_baseline": rate[name] / b, "windows": windows[name]}
        if not name.startswith("baseline"):
            result[name].update(train_config=settings, seconds_with_compilation=round(seconds[name], 1))
    result.update({
        "best_storylib_row": best,
        "best_storylib_config": VARIANTS[best],
        "ratio_storylib_over_baseline": rate[best] / b,
        "target_ratio": ">= 1.1",
        "peak_bf16_flops": peak,
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{card}: baseline {b:,.0f} tok/s (MFU {result['baseline']['mfu_vs_bf16_peak']:.1%}), again "
          f"{rate['baseline_again']:,.0f}")
    for name in rows:
        print(f"  {name:24} {rate[name]:>10,.0f} tok/s  MFU {result[name]['mfu_vs_bf16_peak']:.1%}  "
              f"ratio {rate[name] / b:.3f}  {VARIANTS[name]}")
    print(f"best: {best}, ratio {rate[best] / b:.3f} (target >= 1.1)")
    return 0 if math.isfinite(rate[best] / b) else 1


if __name__ == "__main__":
    sys.exit(main())
