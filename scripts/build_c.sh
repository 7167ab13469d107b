#!/usr/bin/env bash
# Build storylib/c/storyteller.c (Chapter 13's storyteller in one C file): scripts/build_c.sh [OUT] (default
# build/storyteller). cc -O3 -march=native with OpenMP; without OpenMP where the compiler has none (one thread).
# SANITIZE=1 adds -fsanitize=address,undefined (the tests' memory-safety build). CC picks another compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/storyteller}
mkdir -p "$(dirname "$out")"
cc=${CC:-cc}
flags=(-O3 -march=native -Wall -Wextra -Wno-unknown-pragmas -std=c11)
[ -n "${SANITIZE:-}" ] && flags=(-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
                                 -fno-sanitize-recover=undefined -Wall -Wextra -Wno-unknown-pragmas -std=c11)
src=storylib/c/storyteller.c
if ! "$cc" "${flags[@]}" -fopenmp -o "$out" "$src" -lm 2>/dev/null; then
  echo "[build_c] no OpenMP with $cc: building single-threaded" >&2
  "$cc" "${flags[@]}" -o "$out" "$src" -lm
fi
