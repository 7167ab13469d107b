#!/usr/bin/env bash
# Train storyteller variants on a GPU machine and summarise them (how models/storyteller/ was made).
#
#   scripts/gpu_train_storyteller.sh NAME [--set key=value ...]   one run of configs/storyteller.toml
#
# Runs go to _build/runs/NAME (train_log.jsonl, best/, last/); the summary line gives the best validation
# bits per byte (eval_stories) and the final one on all 1,000 validation stories. Needs the TinyStories subset
# where storylib.data finds it (STORYLIB_DATA) and torch with CUDA; copies the log to $OUT when set.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
start=$(date +%s)
python -m storylib.train configs/storyteller.toml --quiet --set out_dir=_build/runs/"$name" "$@"
python - "$name" "$(( $(date +%s) - start ))" "$@" <<'PY'
import json, sys
name, secs, args = sys.argv[1], sys.argv[2], " ".join(sys.argv[3:])
rows = [json.loads(line) for line in open(f"_build/runs/{name}/train_log.jsonl")]
evals = [r for r in rows if r.get("event") == "eval" and not r.get("final")]
final = [r for r in rows if r.get("final")]
best = min(evals, key=lambda r: r["val_bpb"])
tps = [r["tokens_per_s"] for r in rows if r.get("event") == "train"]
print(f"RESULT {name} [{args}] {secs}s: best {best['val_bpb']:.4f} bpb at step {best['step']} | "
      f"final(1000) {final[-1]['val_bpb'] if final else float('nan'):.4f} | last train loss "
      f"{[r for r in rows if r.get('event') == 'train'][-1]['loss']:.3f} | {max(tps):,.0f} tok/s")
PY
[ -n "${OUT:-}" ] && cp _build/runs/"$name"/train_log.jsonl "$OUT/$name.jsonl" || true
