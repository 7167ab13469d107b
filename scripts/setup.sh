#!/usr/bin/env bash
# Set up everything the course needs on a fresh Debian machine with Python 3.11. Idempotent: a second
# run only checks. Installs: Debian chromium (+ nodejs/npm if missing), a venv in .venv with the pinned
# Python packages, and the book's JavaScript (widgets, require.js, MathJax) from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages: chromium for the browser tests and screenshots; node/npm for the book's assets.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev libgomp1)  # Chapter 13's storyteller.c (scripts/build_c.sh)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. Python: a venv with the project and its pinned dependencies (torch==2.13.0, jupyter-book<2, ...).
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' || {
  echo "Python 3.11 is needed (found $("$PY" --version))"; exit 1; }
[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }
stamp=.venv/.llm101n-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# 3. The book's JavaScript, served from the built site (no CDN).
bash scripts/assets.sh

# 4. Chapter 13's storyteller in one C file: build/storyteller.
[ build/storyteller -nt storylib/c/storyteller.c ] || bash scripts/build_c.sh ||
  say "could not build storylib/c/storyteller.c (is a C compiler installed?)"

say "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
