"""Run the course's tests against a storylib: the tests in a trusted process, the learner's code in a sandboxed worker.

Two processes per run. The *trusted* one is a pytest of a pristine copy of the course's tests, with the
grader's own plugin and configuration (plugin autoloading, PYTEST_ADDOPTS and the cache off); it holds the
assertions, the oracles and the JSON report. The learner's `storylib/` and `cuda_labs/` (regular files only,
copied) are imported only by a *worker* process that the trusted side calls through grading/remote.py, in the
sandbox of grading/sandbox.py: its own folder, limits, no network, and where possible another user and a view
of the file system without the course. Results are read from the report, never from what anything prints.
The cuda_labs kernels run on the GPU when numba finds one here (lab_device), else on the CUDA simulator; both
processes are told the same (NUMBA_ENABLE_CUDASIM), and the report's header says which.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grading import sandbox
from grading.exercises import PACKAGES, Exercise, check_selector, discover, matches

TESTS = Path(__file__).resolve().parent / "tests"
COURSE_ROOT = Path(__file__).resolve().parent.parent  # the reference repo
PER_TEST_TIMEOUT = 60
PLUGIN_PACKAGE = "_llm101n_grader"  # the private copy of the grader the test process loads
GRADER_FILES = ("__init__.py", "plugin.py", "exercises.py", "remote.py", "wire.py", "launch.py", "sandbox.py",
                "seeds.py")
WORKER_FILES = ("worker.py", "wire.py")
# Given modules the grader imports from the course, never from the learner: the stories and strings the tests draw
# their inputs from, and numba's set-up that the course's float64 references (grading.testmodels.course_copy) need.
TRUSTED_MODULES = {"storylib.data": "storylib/data.py", "cuda_labs._compat": "cuda_labs/_compat.py"}
SIMULATOR = "CUDA simulator"  # what the cuda_labs kernels run on without a GPU (or with --simulator)
GPU_PROBE_TIMEOUT = 120  # seconds for a child to import numba and find the GPU


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
    skipped: list[str] = field(default_factory=list)  # learner files not graded (symlinks, devices)
    sandbox: str = ""  # what the worker's sandbox protected, in one line
    device: str = ""  # what the cuda_labs kernels ran on (a GPU's name or SIMULATOR); "" when no lab was run

    def for_exercise(self, ex_id: str) -> list[TestRecord]:
        return [t for t in self.tests if t.exercise == ex_id]

    def broken_files(self, ex: Exercise) -> list[TestRecord]:
        """The collection errors of the exercise's test files: its tests could not even be collected."""
        return [t for t in self.tests if t.exercise is None and t.outcome == "error"
                and Path(t.nodeid.split("::")[0]).name.startswith(f"test_{ex.chapter}_")]


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


def lab_device(simulator: bool = False) -> str:
    """What the cuda_labs kernels will run on: the GPU numba finds here, else (or when `simulator`) SIMULATOR."""
    return SIMULATOR if simulator else gpu_name() or SIMULATOR


@functools.cache
def gpu_name() -> str | None:
    """The name of the GPU numba can run kernels on here, or None. numba's own answer (`cuda.is_available()`), from
    a child running the course's cuda_labs/_compat.py: the grader never imports numba nor opens a GPU itself. No
    /dev/nvidiactl (no NVIDIA driver): None without asking."""
    if not os.path.exists("/dev/nvidiactl"):
        return None
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    try:
        done = subprocess.run([sys.executable, "-I", str(COURSE_ROOT / TRUSTED_MODULES["cuda_labs._compat"])],
                              env=env, capture_output=True, text=True, timeout=GPU_PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines() if done.returncode == 0 else []
    return lines[-1].strip() if lines else None


def cudasim(device: str) -> str:
    """NUMBA_ENABLE_CUDASIM for both processes: the tests' SIMULATOR must agree with the learner's kernels'."""
    return "0" if device and device != SIMULATOR else "1"


def clean_env(private_site: Path, device: str = "") -> dict[str, str]:
    """The trusted pytest's environment: the grader's private plugin, then the installed packages. No learner folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON", "STORYLIB_ROOT"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(private_site), *site.getsitepackages()]),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONHASHSEED="0",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        NUMBA_ENABLE_CUDASIM=cudasim(device),
    )
    for key, value in tiktoken_cache().items():  # the oracles use tiktoken; a cache set by the caller wins
        env.setdefault(key, value)
    return env


def tiktoken_cache() -> dict[str, str]:
    """tiktoken's offline cache (scripts/assets.sh), for the grader's oracles and the learner's code alike."""
    cache = COURSE_ROOT / ".assets" / "tiktoken"
    return {"TIKTOKEN_CACHE_DIR": str(cache)} if cache.is_dir() else {}


def worker_env(home: Path, device: str = "") -> dict[str, str]:
    """The worker's environment: nothing of ours but what the learner's code needs to run."""
    keep = ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
            "CUDA_VISIBLE_DEVICES")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), NUMBA_ENABLE_CUDASIM=cudasim(device), MPLBACKEND="Agg",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", STORYLIB_ROOT=str(home / "lib"))
    env.update(tiktoken_cache())
    return env


def copy_learner_packages(root: Path, lib: Path) -> list[str]:
    """Copy the learner's packages into the worker's lib: regular files only, never through a link (a link could
    point at the reference). Returns what was left out."""
    skipped = []
    for package in PACKAGES:
        if (root / package).is_symlink():
            skipped.append(package)
        elif (root / package).is_dir():
            for folder, dirs, files in os.walk(root / package):  # os.walk does not follow links to folders
                here = Path(folder)
                for name in dirs + files:
                    path = here / name
                    rel = path.relative_to(root)
                    if name == "__pycache__":
                        dirs.remove(name)
                    elif path.is_symlink() or not (path.is_dir() or path.is_file()):
                        skipped.append(rel.as_posix())
                    elif path.is_dir():
                        (lib / rel).mkdir(parents=True, exist_ok=True)
                    else:
                        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, lib / rel)
    return skipped


def worker_config(root: Path, home: Path, level: str | None, device: str = "") -> dict:
    lib, code = home / "lib", home / "worker"
    lib.mkdir()
    code.mkdir()
    skipped = copy_learner_packages(root, lib)
    for name in WORKER_FILES:
        shutil.copy(Path(__file__).parent / name, code / name)
    (code / "shared" / "grading").mkdir(parents=True)  # the tests' models, importable by the worker
    (code / "shared" / "grading" / "__init__.py").write_text("")
    shutil.copy(Path(__file__).parent / "testmodels.py", code / "shared" / "grading" / "testmodels.py")
    for path in [home, *home.rglob("*")]:  # the worker may run as another user: it must read these
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    hide = sorted({str(COURSE_ROOT), str(root)})
    expose = [str(p) for p in (Path(sys.prefix), COURSE_ROOT / ".assets", COURSE_ROOT / "models") if p.exists()]
    trusted = {name: str(COURSE_ROOT / path) for name, path in TRUSTED_MODULES.items()}
    return {"python": sys.executable, "worker_dir": str(code), "lib": str(lib), "home": str(home),
            "env": worker_env(home, device), "hide": hide, "expose": expose, "level": level, "skipped": skipped,
            "trusted": trusted}


def run_tests(
    root: Path,
    selectors: list[str] | None = None,
    files: list[str] | None = None,
    timeout: int = PER_TEST_TIMEOUT,
    total_timeout: int = 900,
    seed: int = 0,
    level: str | None = None,
    hidden: Path | None = None,
    simulator: bool = False,
) -> Run:
    """Run the pristine tests in `files` (default: those of `selectors`) against `root`'s storylib.
    `seed` salts the tests' seeds (0: the public ones); `level` forces a sandbox level (grading/sandbox.py);
    `hidden` is an instructor's folder of extra test files (test_chNN_*.py, never released), run alongside;
    `simulator` runs the cuda_labs kernels on the CUDA simulator even where there is a GPU (lab_device)."""
    root = Path(root).resolve()
    files = files if files is not None else test_files(selectors or [])
    if hidden is not None:
        chapters = {f.split("_")[1] for f in files}
        files = files + [f"hidden/{p.name}" for p in sorted(Path(hidden).glob("test_*.py"))
                         if p.name.split("_")[1] in chapters]
    if not files:
        return Run([], 5, 0.0)
    device = lab_device(simulator) if any(Path(f).name.startswith("test_lab") for f in files) else ""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llm101n-check-") as tmp, sandbox.workdir("llm101n-worker-") as home:
        tmpdir = Path(tmp)
        shutil.copytree(TESTS, tmpdir / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if hidden is not None:
            shutil.copytree(hidden, tmpdir / "tests" / "hidden", ignore=shutil.ignore_patterns("__pycache__"))
        private = tmpdir / "site" / PLUGIN_PACKAGE
        private.mkdir(parents=True)
        for name in GRADER_FILES:
            shutil.copy(Path(__file__).parent / name, private / name)
        config = worker_config(root, Path(home), level, device)
        (tmpdir / "worker.json").write_text(json.dumps(config))
        ini = tmpdir / "pytest.ini"
        ini.write_text("[pytest]\naddopts =\nfilterwarnings =\n    ignore::DeprecationWarning\n")
        report = tmpdir / "report.json"
        cmd = [
            sys.executable, "-m", "pytest", *[f"tests/{f}" for f in files],
            "-c", str(ini), "--rootdir", str(tmpdir), "--confcutdir", str(tmpdir),
            "-p", "no:cacheprovider", "-p", "pytest_timeout", "-p", f"{PLUGIN_PACKAGE}.plugin",
            "--timeout", str(timeout), "--report-json", str(report), "--worker-config", str(tmpdir / "worker.json"),
            "--seed", str(seed), "--continue-on-collection-errors", "-q", "--no-header", "-rN", "--tb=short",
        ]
        for s in selectors or []:
            cmd += ["--exercise", s]
        try:
            proc = subprocess.run(
                cmd, cwd=tmpdir, env=clean_env(tmpdir / "site", device), capture_output=True, text=True,
                timeout=total_timeout, start_new_session=True,
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
    return Run(tests, proc.returncode, time.perf_counter() - start, log, config["skipped"],
               sandbox.describe(level), device)


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
    text = message.strip().removeprefix(f"{PLUGIN_PACKAGE}.remote.")
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
    sandbox: str = ""
    seed: int = 0
    skipped: list[str] = field(default_factory=list)
    device: str = ""  # what the cuda_labs kernels ran on; "" when no lab was graded

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
        if self.sandbox:
            lines.append(self.sandbox)
        if self.device:
            lines.append(f"cuda_labs kernels on: {self.device}")
        if self.seed:
            lines.append(f"fresh inputs: seed {self.seed}")
        if self.skipped:
            lines.append(f"not graded (links or special files, never followed): {', '.join(self.skipped)}")
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        lines.append(f"total {self.points}/{self.possible} points in {self.seconds:.1f} s")
        return "\n".join(lines)


def check(selectors: list[str], root: Path | None = None, timeout: int = PER_TEST_TIMEOUT, seed: int | None = 0,
          level: str | None = None, hidden: Path | None = None, simulator: bool = False) -> Report:
    """Grade the exercises named by `selectors` in the storylib under `root` (default: found from cwd).

    `seed` 0 draws the public tests' inputs; None draws fresh ones from a seed chosen now (what a graded run does);
    `timeout` bounds each test, in seconds; `level` forces a sandbox level (grading/sandbox.py); `hidden` adds an
    instructor's unreleased tests (see run_tests); `simulator` keeps the cuda_labs kernels off the GPU."""
    selectors = [check_selector(s) for s in selectors]
    root = find_root() if root is None else Path(root).resolve()
    wanted = [ex for ex in discover(COURSE_ROOT) if any(matches(ex.id, s) for s in selectors)]
    if not wanted:
        raise ValueError(f"no exercise matches {' '.join(selectors)}")
    if seed is None:
        seed = secrets.randbelow(2**31 - 1) + 1
    run = run_tests(root, selectors, timeout=timeout, seed=seed, level=level, hidden=hidden, simulator=simulator)
    results = [ExerciseResult(ex, run.for_exercise(ex.id) or run.broken_files(ex)) for ex in wanted]
    return Report(root, results, run.seconds, run.sandbox, seed, run.skipped, run.device)
