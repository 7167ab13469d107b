"""Chapter 14's table: the base storyteller prompted with story openings vs SFT (full, LoRA r=4, LoRA r=16).

    OUT=DIR python bench/sft.py            (bench/gpu_sft.sh runs it on a GPU machine; SMOKE=1: a CPU check)

One run: the held-out conversations (made by rules from the first N_HELDOUT validation stories, which neither the
base model nor SFT trains on), the base model's evaluation (storylib.sft.evaluate_base), then the three SFT runs of
configs/sft_full.toml, sft_lora4.toml and sft_lora16.toml through Chapter 7's trainer (storylib.train.train), each
evaluated by storylib.sft.evaluate (every metric, trainable parameters, seconds, plain-story validation bits/byte
on all 1,000 validation stories). The shipped model is the one that meets the most goals (>= 90% of create requests
with all their words, >= 95% of renames done, plain bits/byte at most 0.03 above the base), then the one whose
replies end with <|end|> (>= 90%), then the higher create + rename scores, then LoRA before a full finetune.
Writes, in $OUT (few files: what comes back from a GPU machine):
sft_h100.json (the table), sft_records.json (every reply of every run), sft_train_logs.jsonl (the runs'
train_log.jsonl lines, each with its "run") and storyteller-chat.tar (the shipped folder; over 16 MiB it is split
in 12 MiB parts: `cat storyteller-chat.tar.part-* > storyteller-chat.tar`). The runs themselves go to $WORK
(default /tmp/sft_runs).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEEDED = ("torch", "numpy", "safetensors", "tqdm", "regex", "tiktoken")
GOALS = {"create_all_words": 0.90, "rename_done": 0.95, "plain_bpb_rise": 0.03}
RUNS = {"full": "configs/sft_full.toml", "lora4": "configs/sft_lora4.toml", "lora16": "configs/sft_lora16.toml"}
SMOKE = os.environ.get("SMOKE") == "1"


def check_imports() -> None:
    import importlib

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench/sft.py: missing Python packages {missing}")


def goals_met(m: dict, base_plain: float) -> dict[str, bool]:
    rise = (m.get("plain_val_bpb") or 99.0) - base_plain
    return {"create_all_words": (m.get("create_all_words") or 0) >= GOALS["create_all_words"],
            "rename_done": (m.get("rename_done") or 0) >= GOALS["rename_done"],
            "plain_bpb_rise": rise <= GOALS["plain_bpb_rise"]}


def write_split(src: Path, dst_dir: Path, limit: int = 16 << 20, part: int = 12 << 20) -> list[str]:
    """Copy src into dst_dir, as `name.part-aa`, `-ab`, ... of `part` bytes if it is over `limit`."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if len(data) <= limit:
        (dst_dir / src.name).write_bytes(data)
        return [src.name]
    names = []
    for i in range(0, len(data), part):
        name = f"{src.name}.part-{chr(97 + i // part // 26)}{chr(97 + i // part % 26)}"
        (dst_dir / name).write_bytes(data[i : i + part])
        names.append(name)
    return names


def main() -> int:
    check_imports()
    import torch

    from storylib import sft
    from storylib.checkpoint import export_model, load_model
    from storylib.conversations import build_conversations, conversation_stats, split_conversations
    from storylib.data import load_stories
    from storylib.lora import count_parameters, read_adapter
    from storylib.train import load_config, resolve_course_path, train

    out = Path(os.environ.get("OUT") or "_build/sft_bench")
    work = Path(os.environ.get("WORK") or "/tmp/sft_runs")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)  # this script's scratch folder: a new run starts afresh
    (out / "sft_train_logs.jsonl").unlink(missing_ok=True)
    all_records: dict[str, list] = {}
    base_dir = os.environ.get("BASE", "models/storyteller")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_heldout = int(os.environ.get("N_HELDOUT", 6 if SMOKE else 500))
    t0 = time.time()

    train_stories = load_stories("train", limit=40 if SMOKE else None)
    valid = load_stories("valid", limit=5 if SMOKE else None)
    heldout = build_conversations(load_stories("valid", limit=n_heldout), seed=0)
    train_convs, dev_convs = split_conversations(train_stories, seed=0)
    eval_kw = {"max_new_tokens": 40} if SMOKE else {"batch_size": 128}
    print(f"{len(train_convs)} training, {len(dev_convs)} dev, {len(heldout)} held-out conversations", flush=True)

    results: dict = {"card": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                     "torch": torch.__version__, "date": datetime.datetime.now(datetime.UTC).isoformat(),
                     "base_model": base_dir, "n_train_stories_used": len(train_convs),
                     "n_train_conversations": len(train_convs) * load_config(ROOT / RUNS["full"]).chat_seeds,
                     "n_dev_conversations": len(dev_convs), "n_heldout_conversations": len(heldout),
                     "stats": {"train": conversation_stats(train_convs), "heldout": conversation_stats(heldout)},
                     "sampling": sft.CHAT_SAMPLING, "goals": GOALS, "runs": {}}

    def record(name: str, ev: dict, extra: dict) -> None:
        all_records[name] = ev.pop("records")
        (out / "sft_records.json").write_text(json.dumps(all_records))
        results["runs"][name] = {**extra, **ev}
        (out / "sft_h100.json").write_text(json.dumps(results, indent=1))
        print(f"[{time.time() - t0:.0f}s] {name}: {json.dumps(ev['metrics'])}", flush=True)

    base, tok = load_model(resolve_course_path(base_dir), device=device)
    t = time.time()
    ev = sft.evaluate_base(base, tok, heldout, plain_stories=valid, **eval_kw)
    record("base", ev, {"trainable_params": 0, "total_params": count_parameters(base)[1],
                        "eval_seconds": round(time.time() - t, 1)})
    base_plain = ev["metrics"]["plain_val_bpb"]
    del base

    for name, config in RUNS.items():
        overrides = [f"out_dir={work}/{name}", f"init_from={base_dir}"]
        if SMOKE:
            overrides += ["n_train_stories=40", "max_steps=5", "warmup_steps=1", "batch_size=4", "eval_interval=5",
                          "n_val_stories=4", "eval_stories=2", "plain_val_stories=5", "device=cpu"]
        cfg = load_config(ROOT / config, overrides)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        trained = train(cfg, quiet=False)
        train_s = time.time() - t
        run_dir = Path(trained["best"])
        if cfg.lora_rank:  # what ships: the adapter, put back into the base by load_chat_model
            model, tok = sft.load_chat_model(run_dir / "adapter", device=device)
        else:
            model, tok = load_model(run_dir, device=device)
        t = time.time()
        ev = sft.evaluate(model, tok, heldout, plain_stories=valid, **eval_kw)
        ev["goals_met"] = goals_met(ev["metrics"], base_plain)
        total = count_parameters(model)[1]
        trainable = total
        if cfg.lora_rank:  # the adapter's matrices and the chat role tokens' embedding rows
            trainable = sum(v.numel() for v in read_adapter(run_dir / "adapter")[1].values())
            trainable += len(sft.CHAT_ROLES) * cfg.n_embd
        record(name, ev, {"config": asdict(cfg), "trainable_params": trainable,
                          "total_params": total, "train_seconds": round(train_s, 1),
                          "eval_seconds": round(time.time() - t, 1), "steps": trained["step"],
                          "best_dev_bpb": trained["best_val_bpb"], "final_dev": {
                              k: trained.get(k) for k in ("val_loss", "val_bpb", "val_stories", "plain_val_bpb")}})
        with open(out / "sft_train_logs.jsonl", "a", encoding="utf-8") as f:
            for line in (run_dir.parent / "train_log.jsonl").read_text().splitlines():
                f.write(json.dumps({"run": name, **json.loads(line)}) + "\n")

    def rank(name: str) -> tuple:  # goals met; then replies that end; then create + rename; then LoRA (small)
        r = results["runs"][name]
        m = r["metrics"]
        return (sum(r["goals_met"].values()), (m.get("ends_with_end") or 0) >= 0.9,
                round((m.get("create_all_words") or 0) + (m.get("rename_done") or 0), 2), name.startswith("lora"))

    shipped = max(RUNS, key=rank)
    results["shipped"] = shipped
    best = work / shipped / "best"
    folder = best / "adapter" if (best / "adapter").is_dir() else export_model(best, work / "export", torch.float16)
    with tarfile.open(work / "storyteller-chat.tar", "w") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"storyteller-chat/{f.name}")
    results["shipped_files"] = sorted(f.name for f in folder.iterdir())
    results["shipped_tar"] = write_split(work / "storyteller-chat.tar", out)

    samples = []
    for ci in range(min(5, len(heldout))):
        samples.append({"messages": heldout[ci]["messages"], "specs": heldout[ci]["specs"],
                        "base": [r for r in all_records["base"] if r["conversation"] == ci],
                        shipped: [r for r in all_records[shipped] if r["conversation"] == ci]})
    results["samples"] = samples
    results["wall_seconds"] = round(time.time() - t0, 1)
    (out / "sft_h100.json").write_text(json.dumps(results, indent=1))
    print(sft.format_table(results["runs"]))
    print(f"shipped: {shipped}; {results['wall_seconds']} s in all; results in {out}/sft_h100.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
