"""Chapter 9's memory table, checked on a GPU: bytes per parameter that AdamW training keeps in each recipe of
storylib.precision.RECIPES, predicted by memory_per_parameter and measured with torch.cuda.memory_allocated after
two real training steps of GPT-2 small (124 M parameters; activations freed, so what stays is weights, gradients,
optimizer state and master copy), plus the step's peak (torch.cuda.max_memory_allocated, activations included).

    python bench/precision_memory.py --out bench/results/precision_memory_h100.json      (on a GPU, ~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from storylib.gpt2 import GPT, GPTConfig  # noqa: E402
from storylib.precision import RECIPES, float8_linears, fp8_supported, memory_per_parameter  # noqa: E402

GPT2_SMALL = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, bias=True, fused=True)


def train_steps(name: str, batch: int = 4, seq: int = 512, steps: int = 2) -> dict:
    """Two AdamW steps of GPT-2 small in recipe `name`; bytes per parameter kept after the last step, and the peak."""
    torch.cuda.empty_cache()
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):  # cuBLAS's workspace exists before `base`, so it is not counted
        torch.ones(64, 64, device="cuda", dtype=dtype).matmul(torch.ones(64, 64, device="cuda", dtype=dtype))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    r = RECIPES[name]
    model = GPT(GPT2_SMALL).cuda().to(r["weight_dtype"])
    if "FP8" in name:
        float8_linears(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    master = [p.detach().to(r["master_dtype"]).requires_grad_() for p in params] if r.get("master_dtype") else None
    opt = torch.optim.AdamW(master or params, lr=1e-4, foreach=False)  # states in the dtype of what it updates
    idx = torch.randint(0, GPT2_SMALL.vocab_size, (batch, seq + 1), device="cuda")
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()
    autocast = "autocast" in name
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, y)[1]  # the logits are not kept
        loss.backward()
        if master:
            for m, p in zip(master, params, strict=True):
                m.grad = p.grad.to(m.dtype)
        opt.step()
        if master:
            for m, p in zip(master, params, strict=True):
                m.grad = None  # the master's gradient is a temporary: the model's gradients are what stays
                p.data.copy_(m.data)
    del loss
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base - 3 * idx.numel() * idx.element_size()  # less idx, x and y
    peak = torch.cuda.max_memory_allocated()
    predicted = memory_per_parameter(**r)
    out = {"params": n, "predicted_bytes_per_param": predicted, "measured_bytes_per_param": kept / n,
           "ratio_measured_to_predicted": kept / n / predicted["total"], "peak_GiB": peak / 2**30,
           "batch": batch, "seq": seq}
    del model, opt, master, params
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/precision_memory_h100.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/precision_memory.py needs a GPU")
    res = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "card": torch.cuda.get_device_name(),
           "torch": torch.__version__, "model": "GPT-2 small (storylib.gpt2, 124 M parameters)", "recipes": {}}
    for name in RECIPES:
        if "FP8" in name and not fp8_supported("cuda"):
            continue
        res["recipes"][name] = train_steps(name)
        r = res["recipes"][name]
        print(f"{name:40s} predicted {r['predicted_bytes_per_param']['total']:>3} B/param, measured "
              f"{r['measured_bytes_per_param']:6.2f} ({r['ratio_measured_to_predicted']:.3f}x), peak "
              f"{r['peak_GiB']:.2f} GiB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
