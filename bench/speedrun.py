"""The storyteller speedrun: seconds on one GPU, from a cold start, until the validation bits per byte first reach
a target, for the shipped recipe (configs/storyteller.toml) and variants of it, all in one run.

    python bench/speedrun.py [--target 0.82] [--cap 100] [--out bench/results/speedrun_h100.json]
    python bench/speedrun.py --smoke          a tiny model on the CPU: the script's own test (a minute)

Each variant is a fresh process (`--child`), so each starts cold: imports done, its clock runs from storylib.train's
setup (tokenizer, the training tokens read from disk, the model, the optimizer) through torch.compile (fresh
Inductor and Triton caches for every variant) and the training steps, and pauses around each evaluation (of all
1,000 validation stories, bf16 autocast, every `--eval-every` steps, every `--eval-near` once within `--near` of the
target). A variant stops at the first evaluation at or below the target, or when its clock passes the cap: min(--cap,
--cap-ratio × the baseline's time). The stories are encoded into tokens once, before any clock starts (as
nanoGPT's prepare.py does).

The ablation changes one thing at a time (VARIANTS); the record combines the changes that beat the baseline (or
--record's list) and saves its model (best/ at the target, exported to <runs>/record_model: the chat loads it).
Writes the JSON (--out): date, card, torch, target, each variant's overrides, seconds to the target (null if not
reached, with the best bits per byte it got), steps, its curve [step, seconds, bpb], and the record / baseline ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = "configs/storyteller.toml"
# name: (what changes, --set overrides); each alone against the baseline
VARIANTS = {
    "baseline": ("the shipped recipe (AdamW, batch 32 x 512 tokens, lr 1e-3, 5,000-step cosine)", []),
    "muon": ("Muon for the blocks' matrices (muon_lr 0.02), AdamW for the rest", ["optimizer=\"muon\""]),
    "ctx256": ("batch 64 x 256-token context (the same 16,384 tokens a step)", ["batch_size=64", "block_size=256"]),
    "short": ("a 3,000-step cosine (the learning rate is low sooner)", ["max_steps=3000"]),
    "fp8": ("FP8 matmuls for the lm_head", ["fp8=\"lm_head\""]),
    "lr": ("lr 1.5e-3, 50 warmup steps", ["lr=1.5e-3", "warmup_steps=50"]),
    "dropout": ("dropout 0.25 instead of 0.35", ["dropout=0.25"]),
}
DEFAULT_VARIANTS = "baseline,muon,ctx256,fp8,short"
# --smoke: a model small enough for a CPU, the same variants scaled down
SMOKE_BASE = ["n_layer=2", "n_head=2", "n_embd=48", "block_size=64", "batch_size=8", "max_steps=120",
              "warmup_steps=10", "n_train_stories=400", "n_val_stories=40", "eval_stories=40", "device=\"cpu\"",
              "dtype=\"fp32\"", "compile=false", "dropout=0.0", "lr=3e-3", "min_lr=3e-4"]
SMOKE_VARIANTS = {"ctx256": ["batch_size=16", "block_size=32"], "short": ["max_steps=80"]}


# ----------------------------------------------------------------------------- one variant (a child process)


def run_variant(spec: dict) -> dict:
    """Train one variant until the target or the cap; the result (seconds, steps, curve)."""
    import torch

    from storylib.mlp import warmup_cosine_lr
    from storylib.train import checkpoint, load_config, loss_function, setup, train_step

    cfg = load_config(spec["config"], [*spec["overrides"], f"out_dir={json.dumps(spec['out_dir'])}"])
    t0 = time.perf_counter()
    run = setup(cfg, quiet=True)
    loss_fn = loss_function(run)
    setup_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    state, clock, eval_s, first_step_s = run.state, setup_s, 0.0, None
    curve: list[list[float]] = []
    reached = None
    next_eval, t = spec["eval_every"], time.perf_counter()
    while state.step < cfg.max_steps:
        lr = warmup_cosine_lr(state.step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        loss, _ = train_step(run, loss_fn, lr)
        state.step += 1
        if first_step_s is None:  # the first step compiles the model (torch.compile is lazy)
            sync()
            first_step_s = time.perf_counter() - t
        over = state.step % 10 == 0 and clock + time.perf_counter() - t >= spec["cap"]  # the GPU lags a step or two
        if state.step < next_eval and state.step < cfg.max_steps and not over:
            continue
        sync()
        clock += time.perf_counter() - t  # the clock stops here ...
        t_eval = time.perf_counter()
        bpb = run.val.evaluate(run.model, len(run.val.stories), cfg.batch_size, run.autocast)["val_bpb"]
        eval_s += time.perf_counter() - t_eval
        curve.append([state.step, round(clock, 3), round(bpb, 5)])
        print(f"  step {state.step:>5}  {clock:7.2f} s  val {bpb:.4f} bpb  (train loss {loss.item():.3f})", flush=True)
        if bpb <= spec["target"]:
            reached = clock
            break
        if clock >= spec["cap"] or not math.isfinite(bpb):
            break
        near = bpb - spec["target"] < spec["near"]
        next_eval = state.step + (spec["eval_near"] if near else spec["eval_every"])
        t = time.perf_counter()  # ... and runs again
    if spec.get("save_model"):
        checkpoint(run, "best", with_optimizer=False)
    return {"seconds": None if reached is None else round(reached, 3), "steps": state.step,
            "best_bpb": min(c[2] for c in curve), "setup_s": round(setup_s, 3),
            "first_step_s": round(first_step_s or 0.0, 3), "eval_s": round(eval_s, 3),
            "tokens_per_step": run.tokens_per_step, "curve": curve}


# ----------------------------------------------------------------------------- the run (the parent)


def prepare_tokens(config: str, overrides: list[str], runs: Path) -> Path:
    """Encode the training stories once, into <runs>/data (the trainer's cache, copied into every variant)."""
    from storylib.train import load_config, load_tokenizer, prepare_data

    cfg = load_config(config, [*overrides, f"out_dir={json.dumps(str(runs))}"])
    tok, tok_id = load_tokenizer(cfg.tokenizer)
    prepare_data(cfg, tok, tok_id, runs, verbose=True)
    return runs / "data"


def launch(name: str, overrides: list[str], args: argparse.Namespace, cap: float, runs: Path, data: Path,
           save_model: bool = False) -> dict:
    """Run one variant in a fresh process with fresh compile caches; its result, or an error."""
    out_dir = runs / name
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(data, out_dir / "data")
    spec = {"config": args.config, "overrides": overrides, "out_dir": str(out_dir), "target": args.target,
            "cap": cap, "eval_every": args.eval_every, "eval_near": args.eval_near, "near": args.near,
            "save_model": save_model}
    (out_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(out_dir / "inductor"), TRITON_CACHE_DIR=str(out_dir / "triton"),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    print(f"{name}: {' '.join(overrides[len(args.base):]) or '(shipped recipe)'}; cap {cap:.0f} s", flush=True)
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--child", str(out_dir / "spec.json")], env=env, cwd=ROOT,
                           timeout=cap + args.grace, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        result = json.loads((out_dir / "result.json").read_text()) if p.returncode == 0 else {
            "error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"}
    except subprocess.TimeoutExpired:
        result = {"error": f"killed after {cap + args.grace:.0f} s"}
    result["wall_s"] = round(time.perf_counter() - t, 1)
    print(f"{name}: " + (f"{result['seconds']} s to the target" if result.get("seconds") is not None else
                         result.get("error") or f"not reached (best {result['best_bpb']:.4f})")
          + f", {result.get('steps')} steps; {result['wall_s']} s of wall clock", flush=True)
    return result


def check_record_model(best: Path, out: Path) -> dict:
    """Export the record's best/ (llm101n train export) and have the chat tell a few tokens with it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    exp = subprocess.run([sys.executable, "-m", "storylib.train", "export", str(best), str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if exp.returncode != 0:
        return {"export": False, "error": exp.stderr.strip()[-300:]}
    chat = subprocess.run([sys.executable, "-m", "storylib.storyteller", "--model", str(out), "--mode", "story",
                           "--prompt", "Once upon a time", "--max-tokens", "12", "--seed", "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return {"export": True, "model": str(out), "chat_ok": chat.returncode == 0,
            "chat_sample": chat.stdout.strip()[-200:] if chat.returncode == 0 else chat.stderr.strip()[-300:]}


def describe_machine() -> dict:
    import torch

    from bench.machine import cpu_name

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU: {cpu_name()}"
    return {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu": cpu_name(),
            "cpu_threads": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", type=float, default=None, help="validation bits per byte to reach (default 0.82; "
                   "--smoke: 2.6)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {', '.join(VARIANTS)}; "
                   "the first is the baseline")
    p.add_argument("--record", default="auto", help="'auto': the variants that beat the baseline, together; a "
                   "comma-separated list of variant names; 'none': no record run")
    p.add_argument("--cap", type=float, default=100.0, help="a variant's most clock seconds (default 100)")
    p.add_argument("--cap-ratio", type=float, default=1.3, help="... and at most this times the baseline's time")
    p.add_argument("--grace", type=float, default=45.0, help="seconds beyond the cap before a child is killed "
                   "(imports, evaluations, saving)")
    p.add_argument("--budget", type=float, default=480.0, help="wall seconds for the whole run (default 480): the "
                   "variants' caps shrink to fit it, keeping the baseline's time + overhead for the record")
    p.add_argument("--overhead", type=float, default=30.0, help="a variant's wall seconds beyond its clock "
                   "(imports, evaluations), for the budget")
    p.add_argument("--eval-every", type=int, default=200, help="steps between evaluations (default 200) ...")
    p.add_argument("--eval-near", type=int, default=50, help="... and once within --near of the target (50)")
    p.add_argument("--near", type=float, default=0.02)
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--runs", default="_build/speedrun", help="where the variants' runs go")
    p.add_argument("--out", default=None, help="the JSON (default bench/results/speedrun_h100.json; --smoke: "
                   "<runs>/speedrun_smoke.json)")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, a few steps: test the script")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec_path = Path(args.child)
        result = run_variant(json.loads(spec_path.read_text()))
        (spec_path.parent / "result.json").write_text(json.dumps(result))
        return 0

    runs = Path(args.runs)
    args.base = SMOKE_BASE if args.smoke else []
    if args.target is None:
        args.target = 2.25 if args.smoke else 0.82
    if args.smoke:
        args.eval_every, args.eval_near, args.cap = min(args.eval_every, 20), min(args.eval_near, 10), min(args.cap, 60)
        args.cap_ratio = max(args.cap_ratio, 10.0)  # a shared CPU's timings are noise: test the paths, not the race
    out = Path(args.out or (runs / "speedrun_smoke.json" if args.smoke else ROOT / "bench/results/speedrun_h100.json"))
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    def overrides(name: str) -> list[str]:
        return [*args.base, *(SMOKE_VARIANTS.get(name, VARIANTS[name][1]) if args.smoke else VARIANTS[name][1])]

    t_start = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    data = prepare_tokens(args.config, args.base, runs)
    doc = {"what": "seconds on one GPU from a cold start (setup + torch.compile + training; evaluations not "
                   "counted: the clock pauses around each) until the validation bits per byte on all "
                   f"{'smoke-test' if args.smoke else '1,000'} validation stories first reach the target; "
                   "one fresh process per variant, fresh Inductor/Triton caches",
           "command": "python bench/speedrun.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **describe_machine(), "config": args.config,
           "smoke": args.smoke, "target": args.target, "cap": args.cap, "cap_ratio": args.cap_ratio,
           "budget": args.budget, "eval_every": args.eval_every, "eval_near": args.eval_near, "near": args.near,
           "variants": []}

    def add(name: str, what: str, sets: list[str], cap: float, **kw) -> dict:
        row = {"name": name, "what": what, "overrides": sets[len(args.base):],
               **launch(name, sets, args, cap, runs, data, **kw)}
        doc["variants"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")  # after every variant: a killed run keeps what it has
        return row

    def left() -> float:  # wall seconds of the budget not yet spent
        return args.budget - (time.perf_counter() - t_start)

    base = add(names[0], VARIANTS[names[0]][0], overrides(names[0]), min(args.cap, left() - args.overhead))
    base_s = base.get("seconds")
    cap = min(args.cap, args.cap_ratio * base_s) if base_s else args.cap
    reserve = (base_s or args.cap) + 2 * args.overhead  # the record's run, its export and chat check
    rows = []
    for n in names[1:]:
        room = left() - reserve - args.overhead  # clock seconds this variant may use without crowding the record
        if room < 15:
            doc["variants"].append({"name": n, "what": VARIANTS[n][0], "overrides": overrides(n)[len(args.base):],
                                    "skipped": "out of --budget"})
            print(f"{n}: skipped, out of --budget", flush=True)
            continue
        rows.append(add(n, VARIANTS[n][0], overrides(n), min(cap, room)))

    if args.record == "auto":
        chosen = [r["name"] for r in rows if base_s and r.get("seconds") is not None and r["seconds"] < base_s]
    else:
        chosen = [] if args.record == "none" else args.record.split(",")
    doc["record"] = None
    if chosen:
        sets = [*args.base, *(s for n in chosen for s in overrides(n)[len(args.base):])]
        rec = add("record", " + ".join(chosen), sets, max(15.0, min(args.cap, left() - 2 * args.overhead)),
                  save_model=True)
        if (runs / "record" / "best").exists():
            rec["model_check"] = check_record_model(runs / "record" / "best", runs / "record_model")
        doc["record"] = {"variants": chosen, "seconds": rec.get("seconds"), "baseline_seconds": base_s,
                         "ratio": round(rec["seconds"] / base_s, 4) if base_s and rec.get("seconds") else None}
    else:
        doc["record_note"] = "no variant beat the baseline" if args.record == "auto" else "--record none"
    doc["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({doc['total_wall_s']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
