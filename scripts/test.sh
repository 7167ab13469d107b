#!/usr/bin/env bash
# make test: every check of the course, in two lanes side by side (one per half of the machine's cores).
#
#   lane 1 (here, on screen):   lint, package tests, honesty gate, notebooks, exercises, nbgrader class
#   lane 2 (in the background): the book (every page executed), then the browser tests, which open it;
#                               its output in _build/logs/book-e2e.log, shown when it ends
#
# The lanes share nothing they write (lane 2: _build/html, _build/scoreboard, the e2e tmp folders; lane 1:
# _build/class and pytest's tmp folders), and set-up runs once, before both. Exit status: non-zero if any check
# failed in either lane.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
cores=$(nproc 2>/dev/null || echo 2)
export OMP_NUM_THREADS=$(( cores > 3 ? cores / 2 : 1 ))  # two lanes: each its half, never more threads than cores
export LLM101N_SETUP_DONE=1  # the lanes' make targets skip set-up (two at once would restage the same assets)
mkdir -p _build/logs
log=_build/logs/book-e2e.log
start=$(date +%s)
echo "[test] lane 2 (book, then browser tests) runs alongside; its log: $log"
( make --no-print-directory book e2e > "$log" 2>&1 ) &
lane2=$!
make --no-print-directory lint unit honesty notebooks-check exercises-check class
rc1=$?
echo "[test] lane 1 done in $(( $(date +%s) - start )) s (rc $rc1); waiting for lane 2 (book, browser tests)"
wait $lane2
rc2=$?
echo "[test] lane 2 done in $(( $(date +%s) - start )) s (rc $rc2); the end of its log:"
if [ $rc2 -ne 0 ]; then tail -n 150 "$log"; else grep -E "Executed notebook|passed|failed|scoreboard|build succeeded" "$log" \
    | tail -n 40; fi
if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then echo "make test: FAILED (lane 1 rc $rc1, lane 2 rc $rc2)"; exit 1; fi
echo "make test: all green in $(( $(date +%s) - start )) s"
