#!/usr/bin/env bash
# Build the whole book, offline, into _build/html.
#
#   scripts/build_book.sh              strict: warnings are errors, any failing notebook cell fails
#   BOOK_STRICT=0 scripts/build_book.sh   warnings allowed (a failing cell still fails the build)
#   BOOK_TOC=path/to/_toc.yml ...      build another table of contents (tests, previews)
#   BOOK_INCREMENTAL=1 ...             reuse the Sphinx environment: only changed pages are re-read and
#                                      re-executed (faster, but a storylib change does not re-run them)
#
# Notebooks run with the reference storylib (PYTHONPATH = repo root) and the repo's venv kernel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
JB="$VENV/bin/jupyter-book"
[ -x "$JB" ] || { echo "jupyter-book not found in $VENV (make install?)" >&2; exit 1; }

# offline assets: staged when missing or stale; npm (the only step that may use the network) runs only
# when .assets/node_modules is missing or scripts/assets-package-lock.json changed
echo "== offline assets"
scripts/assets.sh --check >/dev/null 2>&1 || scripts/assets.sh  # restaged only when missing or stale: tests
                                                                 # running beside the build may be reading them

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$VENV/bin:$PATH"              # the "python3" kernel runs this venv's python

# the storyteller page's browser engine (storylib/web): C compiled to WebAssembly by ziglang, the chat model and the
# storyteller as fp16 safetensors, the tokenizer as JSON -> .assets/web/storyteller -> _build/html/_static/storyteller
echo "== browser engine"
"$VENV/bin/python" -m storylib.web export "$ROOT/.assets/web/storyteller"
export PYDEVD_DISABLE_FILE_VALIDATION=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$ROOT/.assets/tiktoken}"   # filled by scripts/assets.sh
# every page's yardstick numbers (storylib.scoreboard.show) land here; checked against the board after the build
export LLM101N_SCOREBOARD_DIR="$ROOT/_build/scoreboard"
rm -rf "$LLM101N_SCOREBOARD_DIR"

args=(build "$ROOT" --builder html --path-output "$ROOT")
if [ -n "${BOOK_TOC:-}" ]; then args+=(--toc "$BOOK_TOC"); fi
if [ "${BOOK_STRICT:-1}" != "0" ]; then args+=(-W -n --keep-going); fi
if [ "${BOOK_INCREMENTAL:-0}" = "0" ]; then args+=(--all); fi   # every notebook re-executed, every build

start=$(date +%s)
echo "== jupyter-book ${args[*]}"
set +e
"$JB" "${args[@]}"
rc=$?
set -e
secs=$(( $(date +%s) - start ))
if [ $rc -ne 0 ]; then
  echo "== book build FAILED (exit $rc, ${secs}s); see the messages above and _build/html/reports/" >&2
  exit $rc
fi
# belt and braces: myst-nb marks pages whose execution failed; never publish one
if grep -rlq 'class="[^"]*output traceback' _build/html --include='*.html' 2>/dev/null; then
  echo "== book build FAILED: a page shows a traceback:" >&2
  grep -rl 'class="[^"]*output traceback' _build/html --include='*.html' >&2
  exit 1
fi
# the scoreboard: every number a page measured must be the one bench/results/scoreboard.json shows (full builds)
if [ -z "${BOOK_TOC:-}" ] && [ "${BOOK_INCREMENTAL:-0}" = "0" ] && [ -d "$LLM101N_SCOREBOARD_DIR" ]; then
  "$VENV/bin/python" -m storylib.scoreboard check "$LLM101N_SCOREBOARD_DIR"
fi
echo "== book built in ${secs}s: $ROOT/_build/html/index.html"
echo "   serve it: .venv/bin/python -m http.server 8000 --bind 127.0.0.1 --directory _build/html"
