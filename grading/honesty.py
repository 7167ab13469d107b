"""The honesty gate: every exercise's tests fail on its stub and pass on the reference.

For each exercise, stub that one region in an otherwise-reference copy of the packages and run the
tests marked with its id: all of them must fail. On the untouched reference all must pass. An
exercise with a test that passes on its stub is *vacuous*; one without tests is *missing*.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from grading.exercises import PACKAGES, Exercise, discover, matches, stub_text
from grading.harness import COURSE_ROOT, TESTS, Run, run_tests


@dataclass
class Row:
    exercise: Exercise
    n_tests: int
    ref_passed: int
    stub_failed: int

    @property
    def verdict(self) -> str:
        if self.n_tests == 0:
            return "MISSING"
        if self.ref_passed < self.n_tests:
            return "BROKEN"
        if self.stub_failed < self.n_tests:
            return "VACUOUS"
        return "ok"


def _stubbed_copy(root: Path, ex: Exercise, into: Path) -> None:
    for package in PACKAGES:
        if (root / package).is_dir():
            shutil.copytree(root / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = into / ex.path
    target.write_text(stub_text(target.read_text(encoding="utf-8"), ex.path, [ex.id]), encoding="utf-8")


def _stub_run(root: Path, ex: Exercise, simulator: bool) -> Run:
    with tempfile.TemporaryDirectory(prefix=f"honesty-{ex.id}-") as tmp:
        _stubbed_copy(root, ex, Path(tmp))
        return run_tests(Path(tmp), [ex.id], simulator=simulator)


def gate(selectors: list[str] | None = None, root: Path = COURSE_ROOT, workers: int = 2,
         simulator: bool = False) -> int:
    """Print the gate's table; 1 if any exercise is vacuous, missing or broken. The cuda_labs kernels run on the GPU
    when there is one, unless `simulator`."""
    exercises = [ex for ex in discover(root) if not selectors or any(matches(ex.id, s) for s in selectors)]
    files = sorted(p.name for p in TESTS.glob("test_*.py")
                   if any(p.name.startswith(f"test_{ex.chapter}_") for ex in exercises))
    reference = run_tests(root, files=files, simulator=simulator)
    if reference.device:
        print(f"cuda_labs kernels on: {reference.device}")
    known = {ex.id for ex in discover(root)}
    strays = sorted({t.exercise for t in reference.tests if t.exercise and t.exercise not in known})
    # `make unit` leaves grading/tests to this run: a failing test that marks no exercise is broken too
    broken_collect = [t for t in reference.tests if t.exercise is None and t.outcome in ("failed", "error")]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        stub_runs = list(pool.map(lambda ex: _stub_run(root, ex, simulator), exercises))

    rows = []
    print(f"{'exercise':<22} {'stub (tests failing)':<22} {'reference (tests passing)':<26} verdict")
    for ex, stub in zip(exercises, stub_runs, strict=True):
        ref = reference.for_exercise(ex.id)
        row = Row(ex, len(ref), sum(t.outcome == "passed" for t in ref),
                  sum(t.outcome != "passed" for t in stub.for_exercise(ex.id)))
        rows.append(row)
        print(f"{ex.id:<22} {f'{row.stub_failed}/{row.n_tests} fail':<22} "
              f"{f'{row.ref_passed}/{row.n_tests} pass':<26} {row.verdict}")
        for t in stub.for_exercise(ex.id):
            if t.outcome == "passed":
                print(f"    passes on the stub: {t.nodeid}")
        for t in ref:
            if t.outcome != "passed":
                print(f"    fails on the reference: {t.nodeid}: {t.message.splitlines()[0] if t.message else ''}")
    for stray in strays:
        print(f"tests mark an exercise that does not exist: {stray}")
    for t in broken_collect:
        print(f"fails on the reference (no exercise): {t.nodeid}: {t.message}")
    vacuous = sum(r.verdict == "VACUOUS" for r in rows)
    missing = sum(r.verdict == "MISSING" for r in rows)
    broken = sum(r.verdict == "BROKEN" for r in rows) + len(strays) + len(broken_collect)
    if broken:
        print(f"{broken} problem(s) on the reference (failing tests, unknown ids or collection errors)")
    print(f"honesty: {len(rows)} exercises, {vacuous} vacuous, {missing} missing tests")
    sys.stdout.flush()
    return 1 if (vacuous or missing or broken) else 0
