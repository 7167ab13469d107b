#!/usr/bin/env bash
# The cuda_labs checks on a GPU machine, as a learner and the honesty gate would run them (issue #15):
#
#   bench/gpu_lab_checks.sh        outputs and a summary (bench/results/gpu_lab_checks_h100.json) in $OUT
#
# `llm101n check lab01..lab07` on the GPU the grader chooses and with --simulator (numba-cuda's simulator where
# numba-cuda is installed), the labs' honesty gate on the GPU (every stub fails, every reference passes), the
# learner edition's stubs on the GPU (what a learner reads before writing a kernel), the lab tests run directly
# (the conftest path) and the simulator shim's test. Needs numba (+ numba-cuda), torch, numpy and pytest; a
# machine without pytest-timeout, the course's editable install (`make setup`: the trusted tests import
# grading.testmodels), bubblewrap or setpriv gets the copies carried in _build/gpu_carry (a Debian 12 bwrap and
# setpriv with their libraries, installed under /opt/llm101n-tools), so the worker runs in the sandbox. That
# folder is made by hand and not committed: /usr/bin/bwrap and setpriv into tools/libexec, libselinux, libcap,
# libpcre2-8 and libcap-ng into tools/lib, a tools/bin wrapper per tool that runs it with ld.so --library-path;
# .venv's pytest_timeout.py and __editable__*llm101n* files into the top and editable/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-_build/gpu_lab_checks}
mkdir -p "$OUT"
PY=$(command -v python3 || command -v python)
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
LABS=${LABS:-lab01 lab02 lab03 lab04 lab05 lab06 lab07}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))

SITE=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
if ! "$PY" -c "import pytest_timeout" 2>/dev/null; then
    cp _build/gpu_carry/pytest_timeout.py "$SITE"/
fi
if ! (cd / && env -u PYTHONPATH "$PY" -c "import grading.testmodels" 2>/dev/null); then  # what `make setup` installs
    cp _build/gpu_carry/editable/__editable__.llm101n-0.1.0.pth "$SITE"/  # (pip install -e .): grading, llm101n
    sed "s#/work/main#$PWD#g" _build/gpu_carry/editable/__editable___llm101n_0_1_0_finder.py \
        > "$SITE"/__editable___llm101n_0_1_0_finder.py
fi
bwrap_from=host
if ! command -v bwrap >/dev/null || ! command -v setpriv >/dev/null; then
    rm -rf /opt/llm101n-tools && cp -r _build/gpu_carry/tools /opt/llm101n-tools && export PATH=/opt/llm101n-tools/bin:$PATH
    bwrap_from=carried
fi

step() {  # step NAME COMMAND...: its output in $OUT/NAME.txt, "NAME rc seconds" in $OUT/steps.txt
    local name=$1 left=$(( DEADLINE - $(date +%s) ))
    shift
    if (( left < 20 )); then echo "$name skipped 0" >> "$OUT/steps.txt"; return; fi
    local t0 t1 rc
    echo "$name: $*" >> "$OUT/commands.txt"
    t0=$(date +%s.%N)
    timeout "$left" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    echo "$name $rc $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}")" | tee -a "$OUT/steps.txt"
}

: > "$OUT/steps.txt"; : > "$OUT/commands.txt"
step env "$PY" -c "
import numpy, numba, torch, sys, platform
from importlib.metadata import version
from grading import sandbox
print('python', sys.version.split()[0], platform.platform())
print('numpy', numpy.__version__, 'numba', numba.__version__, 'torch', torch.__version__)
try: print('numba-cuda', version('numba-cuda'))
except Exception as e: print('numba-cuda', None)
print(sandbox.describe())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia_smi.txt" 2>&1
step probe "$PY" -c "from grading.harness import gpu_name; print(gpu_name())"
step check_gpu "$PY" -m llm101n.cli check $LABS
step honesty_gpu "$PY" -m llm101n.cli honesty $LABS --workers 4
step check_sim "$PY" -m llm101n.cli check $LABS --simulator
step release "$PY" -m llm101n.cli release /tmp/learner --force
step stubs_gpu "$PY" -m llm101n.cli check $LABS --root /tmp/learner
step direct_gpu "$PY" -m pytest -q -p no:cacheprovider $(for l in $LABS; do echo grading/tests/test_${l}_*.py; done)
step shim_test "$PY" -m pytest -q -p no:cacheprovider tests/test_platform.py -k "simulator or lab_kernels"

"$PY" - "$OUT" "$bwrap_from" <<'PY'
import json, re, sys, time
from pathlib import Path

out, bwrap_from = Path(sys.argv[1]), sys.argv[2]
read = lambda name: (out / f"{name}.txt").read_text(errors="replace") if (out / f"{name}.txt").exists() else ""
steps = {}
for line in read("steps").splitlines():
    name, rc, seconds = line.split()
    text = read(name)
    row = {"rc": None if rc == "skipped" else int(rc), "wall_s": float(seconds)}
    if name.startswith(("check", "stubs")):
        row["header"] = [l for l in text.splitlines()[:4] if l.startswith(("sandbox", "cuda_labs"))]
        row["total"] = next((l for l in text.splitlines() if l.startswith("total ")), None)
        tests = [tuple(map(int, m)) for m in re.findall(r"\s(\d+)/(\d+)\s", "\n".join(
            l for l in text.splitlines() if re.match(r"lab\d\d\.", l)))]
        row["exercises_pass"] = sum(l.split()[1] == "PASS" for l in text.splitlines() if re.match(r"lab\d\d\.", l))
        row["exercises"] = sum(1 for l in text.splitlines() if re.match(r"lab\d\d\.", l))
        row["first_failures"] = sorted({l.split(None, 4)[4] for l in text.splitlines()
                                        if re.match(r"lab\d\d\.", l) and len(l.split(None, 4)) > 4})[:40]
    elif name == "honesty_gpu":
        rows = [l for l in text.splitlines() if re.match(r"lab\d\d\.", l)]
        row["exercises"] = len(rows)
        row["verdicts"] = {v: sum(l.split()[-1] == v for l in rows) for v in ("ok", "VACUOUS", "BROKEN", "MISSING")}
        row["stub_tests_failing"] = sum(int(re.search(r"(\d+)/\d+ fail", l).group(1)) for l in rows)
        row["reference_tests_passing"] = sum(int(re.search(r"(\d+)/\d+ pass", l).group(1)) for l in rows)
        row["tests"] = sum(int(re.search(r"\d+/(\d+) pass", l).group(1)) for l in rows)
        row["tail"] = text.strip().splitlines()[-3:]
    else:
        row["tail"] = text.strip().splitlines()[-4:]
    steps[name] = row
commands = dict(line.split(": ", 1) for line in read("commands").splitlines())
for name, row in steps.items():
    row["command"] = commands.get(name, "")
summary = {"card": read("nvidia_smi").strip(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "env": read("env").strip().splitlines(), "bwrap": bwrap_from, "steps": steps}
(out / "gpu_lab_checks_h100.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
PY
