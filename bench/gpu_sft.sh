#!/usr/bin/env bash
# Chapter 14's SFT table on one GPU, in one call (issue #16): bench/sft.py with the course's data and base model.
#
#   bench/gpu_sft.sh        results in $OUT: sft_h100.json, records_*.json, logs/, storyteller-chat/ (the shipped model)
#
# Needs torch, numpy, safetensors, tqdm, regex and tiktoken (bench/sft.py checks first); the stories are read from
# shared/data/tinystories, the base model from models/storyteller (BASE=... for another). SMOKE=1: a CPU check.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-_build/sft_bench}
mkdir -p "$OUT"
PY=$(command -v python3 || command -v python)
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTHONUNBUFFERED=1 OUT
export STORYLIB_DATA=${STORYLIB_DATA:-$PWD/shared/data/tinystories}
[ -d .assets/tiktoken ] && export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.assets/tiktoken}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
"$PY" bench/sft.py 2>&1 | tee "$OUT/bench_sft.log"
