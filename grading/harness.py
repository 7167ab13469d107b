"""Run the course's tests against a storylib, out of process, from a pristine copy of the tests.

The learner's folder contributes only its `storylib/` (and `cuda_labs/`) packages, through PYTHONPATH.
Tests, conftest and pytest configuration are copied fresh from this package into a temporary folder;
plugin autoloading, PYTEST_ADDOPTS and the cache are off; results are read from the JSON report
that `grading.plugin` writes, never from the output of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grading.exercises import Exercise, check_selector, discover, matches

TESTS = Path(__file__).resolve().parent / "tests"
COURSE_ROOT = Path(__file__).resolve().parent.parent  # the reference repo
PER_TEST_TIMEOUT = 60
PLUGIN_PACKAGE = "_llm101n_grader"  # the private copy of plugin.py the test process loads


class HarnessError(RuntimeError):
    """The test run itself broke (the interpreter crashed, a timeout, no report)."""


@dataclass
class TestRecord:
    nodeid: str
    exercise: str | None
    outcome: str  # passed | failed | error | skipped
    message: str = ""


@dataclass
class Run:
    tests: list[TestRecord]
    returncode: int
    seconds: float
    log: str = ""

    def for_exercise(self, ex_id: str) -> list[TestRecord]:
        return [t for t in self.tests if t.exercise == ex_id]


def test_files(selectors: list[str]) -> list[str]:
    """The test files that hold tests for these selectors (`ch01`, `ch01.counts`, `lab05`)."""
    chapters = sorted({check_selector(s).split(".")[0] for s in selectors})
    files = [p.name for c in chapters for p in sorted(TESTS.glob(f"test_{c}_*.py"))]
    return files


def find_root(start: Path | None = None) -> Path:
    """The course root to grade: $STORYLIB_ROOT, else the nearest folder at or above `start` holding storylib/."""
    if os.environ.get("STORYLIB_ROOT"):
        return Path(os.environ["STORYLIB_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        if (folder / "storylib" / "__init__.py").is_file():
            return folder
    raise HarnessError(f"no storylib/ package found in {here} or above; set STORYLIB_ROOT")


def clean_env(root: Path, private_site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env.update(
        # The grader's own plugin first, then the installed packages, the learner's folder last: a
        # learner's pytest.py, torch/ or grading/ cannot stand in for the real ones.
        PYTHONPATH=os.pathsep.join([str(private_site), *site.getsitepackages(), str(root)]),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONHASHSEED="0",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        NUMBA_ENABLE_CUDASIM="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
    )
    if (COURSE_ROOT / ".assets" / "tiktoken").is_dir():  # tiktoken's offline cache (scripts/assets.sh)
        env.setdefault("TIKTOKEN_CACHE_DIR", str(COURSE_ROOT / ".assets" / "tiktoken"))
    return env


def run_tests(
    root: Path,
    selectors: list[str] | None = None,
    files: list[str] | None = None,
    timeout: int = PER_TEST_TIMEOUT,
    total_timeout: int = 900,
) -> Run:
    """Run the pristine tests in `files` (default: those of `selectors`) against `root`'s storylib."""
    root = Path(root).resolve()
    files = files if files is not None else test_files(selectors or [])
    if not files:
        return Run([], 5, 0.0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llm101n-check-") as tmp:
        tmpdir = Path(tmp)
        shutil.copytree(TESTS, tmpdir / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        private = tmpdir / "site" / PLUGIN_PACKAGE
        private.mkdir(parents=True)
        for name in ("__init__.py", "plugin.py", "exercises.py"):
            shutil.copy(Path(__file__).parent / name, private / name)
        ini = tmpdir / "pytest.ini"
        ini.write_text("[pytest]\naddopts =\nfilterwarnings =\n    ignore::DeprecationWarning\n")
        report = tmpdir / "report.json"
        cmd = [
            sys.executable, "-m", "pytest", *[f"tests/{f}" for f in files],
            "-c", str(ini), "--rootdir", str(tmpdir), "--confcutdir", str(tmpdir),
            "-p", "no:cacheprovider", "-p", "pytest_timeout", "-p", f"{PLUGIN_PACKAGE}.plugin",
            "--timeout", str(timeout), "--report-json", str(report), "--expect-root", str(root),
            "-q", "--no-header", "-rN", "--tb=short",
        ]
        for s in selectors or []:
            cmd += ["--exercise", s]
        try:
            proc = subprocess.run(
                cmd, cwd=tmpdir, env=clean_env(root, tmpdir / "site"), capture_output=True, text=True,
                timeout=total_timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"the test run took longer than {total_timeout} s and was stopped") from e
        log = proc.stdout[-4000:] + proc.stderr[-4000:]
        if proc.returncode == 4:
            raise HarnessError(log.strip().splitlines()[-1] if log.strip() else "pytest usage error")
        if not report.exists():
            raise HarnessError(f"the test process ended (exit {proc.returncode}) without a report:\n{log}")
        data = json.loads(report.read_text())
    tests = [TestRecord(r["nodeid"], r.get("exercise"), r["outcome"], r["message"]) for r in data["tests"]]
    return Run(tests, proc.returncode, time.perf_counter() - start, log)


# ---------------------------------------------------------------- the learner-facing check


@dataclass
class ExerciseResult:
    exercise: Exercise
    tests: list[TestRecord] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.tests) and all(t.outcome == "passed" for t in self.tests)

    @property
    def score(self) -> int:
        return self.exercise.points if self.passed else 0

    @property
    def first_failure(self) -> str:
        if not self.tests:
            return "no tests found for this exercise"
        for t in self.tests:
            if t.outcome != "passed":
                return plain_words(t.message)
        return ""


def plain_words(message: str) -> str:
    """A one-line, learner-readable version of a failure message."""
    text = message.strip()
    if text.startswith("NotImplementedError"):
        return "not written yet — " + text.removeprefix("NotImplementedError:").strip()
    if text.startswith("Failed: Timeout"):
        return f"took longer than {PER_TEST_TIMEOUT} s (an endless loop?)"
    first = text.splitlines()[0] if text else "failed"
    first = first.removeprefix("AssertionError: ").removeprefix("assert ")
    return first if len(first) <= 110 else first[:107] + "..."


@dataclass
class Report:
    root: Path
    results: list[ExerciseResult]
    seconds: float

    @property
    def points(self) -> int:
        return sum(r.score for r in self.results)

    @property
    def possible(self) -> int:
        return sum(r.exercise.points for r in self.results)

    def __getitem__(self, ex_id: str) -> ExerciseResult:
        for r in self.results:
            if r.exercise.id == ex_id:
                return r
        raise KeyError(ex_id)

    def table(self) -> str:
        rows = [("exercise", "result", "points", "tests", "first failure")]
        for r in self.results:
            ok = sum(t.outcome == "passed" for t in r.tests)
            rows.append(
                (r.exercise.id, "PASS" if r.passed else "FAIL", f"{r.score}/{r.exercise.points}",
                 f"{ok}/{len(r.tests)}", r.first_failure)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [f"grading the storylib in {self.root}"]
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        lines.append(f"total {self.points}/{self.possible} points in {self.seconds:.1f} s")
        return "\n".join(lines)


def check(selectors: list[str], root: Path | None = None) -> Report:
    """Grade the exercises named by `selectors` in the storylib under `root` (default: found from cwd)."""
    selectors = [check_selector(s) for s in selectors]
    root = find_root() if root is None else Path(root).resolve()
    wanted = [ex for ex in discover(COURSE_ROOT) if any(matches(ex.id, s) for s in selectors)]
    if not wanted:
        raise ValueError(f"no exercise matches {' '.join(selectors)}")
    run = run_tests(root, selectors)
    results = [ExerciseResult(ex, run.for_exercise(ex.id)) for ex in wanted]
    return Report(root, results, run.seconds)
