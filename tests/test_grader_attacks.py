"""The grader under attack: learner workspaces written by a hostile class, and what `check` must make of them.

Every test builds its own workspace in tmp_path (the reference storylib with the attacked exercises stubbed),
plants an attack in the learner's files, grades it with `grading.harness.check` in a throwaway process (some
attacks kill or stop the process that called `check`) and asserts on the outcome only: no points for what the
learner did not solve, a report (not an exception, not a hang) with a reason, later checks of a correct solution
at full marks, the course and the venv unchanged, nothing of the learner's left running. Where the attack leaves
the package importable, the same check also grades one exercise the attacker solved honestly, as a control: a 0
for the attack means nothing if the grader is failing everything.

Causes and their attacks:

1. Learner code runs in the process that holds the assertions and writes the report. At import, the learner
   patches `_pytest.reports.TestReport`, swaps the grader plugin's records, registers an atexit hook that rewrites
   the JSON report named in sys.argv, patches builtins.abs / math.isclose / torch.allclose / torch.equal; returns
   objects that equal anything (a float subclass, a plain object with __sub__ -> 0); reads the expected answer
   from the test's frame (sys._getframe); ships a root-level sitecustomize.py or a json/ package next to storylib/.
2. A test that never ran does not count as failed: the learner's nll answers the first call only, then raises
   KeyboardInterrupt, calls pytest.exit(returncode=0) through sys.modules, or os._exit(0)s.
3. Learner code imports the reference: storylib/__init__.py puts the course's storylib/ on its __path__, bigram.py
   loads the course's bigram.py by file path, or bigram.py is a symlink to the course's file.
4. One submission stops grading: os._exit(0) at import; SIGKILL or SIGSTOP to its parent process; an endless loop
   that swallows every exception and SIGTERM; a 64 GiB memory hog.
5. One learner changes others' grades: marker files written into the course's grading/tests/ and a .pth into the
   venv's site-packages; a double-forked daemon left behind.
6. Tests are fixed and public: a lookup table recorded by running the public tests against the reference answers
   them with no algorithm; a fresh grading-time seed (`check(..., seed=None)`) must give it 0.

The grader's new API is used where an attack needs it: `check(selectors, root=..., timeout=<s per test>,
seed=<int | None>)`. Run with: PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_grader_attacks.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from grading.exercises import stub_text
from grading.harness import COURSE_ROOT

REFERENCE = COURSE_ROOT / "storylib"
BWRAP = Path("/usr/bin/bwrap")


def _bwrap_works() -> bool:
    if not BWRAP.exists():
        return False
    try:
        probe = subprocess.run([str(BWRAP), "--ro-bind", "/", "/", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


NEEDS_BWRAP = pytest.mark.skipif(
    not _bwrap_works(),
    reason="no working /usr/bin/bwrap: without the sandbox the worker sees the file system as its own user, so it "
    "can read (as root, write) the course's files; only the bubblewrap view hides them",
)


# ------------------------------------------------------------------------------------------------ helpers


def workspace(dest: Path, stub: tuple[str, ...] = ()) -> Path:
    """A learner folder holding a copy of the reference storylib with the exercises in `stub` stubbed."""
    for path in sorted(REFERENCE.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        target = dest / "storylib" / path.relative_to(REFERENCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".py":
            target.write_text(stub_text(path.read_text(encoding="utf-8"), path.relative_to(COURSE_ROOT), stub))
        else:
            shutil.copy2(path, target)
    return dest


def plant(ws: Path, rel: str, code: str) -> None:
    """Append `code` to the learner's file `rel` (created if missing): later definitions win."""
    path = ws / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(before + "\n\n" + textwrap.dedent(code).strip() + "\n", encoding="utf-8")


_CHILD = """
import json, sys
from pathlib import Path
from grading.harness import check
selectors, root, kwargs = json.loads(sys.argv[1])
try:
    report = check(selectors, root=Path(root), **kwargs)
    out = {"table": report.table(), "results": {
        r.exercise.id: {"score": r.score, "points": r.exercise.points, "reason": r.first_failure}
        for r in report.results}}
except BaseException as e:
    out = {"error": f"check raised {type(e).__name__}: {str(e)[-1500:]}"}
print("@@graded@@" + json.dumps(out), flush=True)
"""


@dataclass
class Graded:
    """What a check gave: per-exercise results and the table, or `error` saying why there is no report."""

    results: dict[str, dict] | None
    table: str = ""
    error: str = ""


def grade(ws: Path, selectors: list[str], wall: float = 90, **kwargs) -> Graded:
    """`check(selectors, root=ws, **kwargs)` in a throwaway process group, stopped after `wall` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    env["PYTHONPATH"] = str(COURSE_ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps([selectors, str(ws), kwargs])], cwd=COURSE_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    hung = False
    try:
        out, err = proc.communicate(timeout=wall)
    except subprocess.TimeoutExpired:
        hung = True
    try:  # whatever the check left in its process group (a stopped parent, an orphaned test run) goes too
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if hung:
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return Graded(None, error=f"the check hung: no report after {wall:.0f} s (its processes were killed)")
    for line in reversed(out.splitlines()):
        if line.startswith("@@graded@@"):
            data = json.loads(line.removeprefix("@@graded@@"))
            return Graded(data.get("results"), data.get("table", ""), data.get("error", ""))
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
    return Graded(None, error=f"the process calling check {how} before it returned:\n{err[-1500:]}")


def assert_no_points(g: Graded, exercises: list[str], attack: str) -> None:
    assert g.results is not None, f"{attack}: check should return a report, but {g.error}"
    scored = [f"{ex} {g.results[ex]['score']}/{g.results[ex]['points']}" for ex in exercises if g.results[ex]["score"]]
    assert not scored, f"{attack}: never solved, yet scored: {', '.join(scored)}\n{g.table}"
    silent = [ex for ex in exercises if not g.results[ex]["reason"].strip()]
    assert not silent, f"{attack}: {', '.join(silent)} scored 0 but the report gives no reason:\n{g.table}"


def assert_full_marks(g: Graded, exercises: list[str], what: str) -> None:
    assert g.results is not None, f"{what}: check should return a report, but {g.error}"
    for ex in exercises:
        r = g.results[ex]
        assert r["score"] == r["points"] > 0, (
            f"{what}: {ex} is solved and should get full marks, {r['points']}; it got {r['score']}:\n{g.table}"
        )


def assert_control_graded(g: Graded, control: str, attack: str) -> None:
    """The learner's own, correct solution of `control`, graded in the same check as the attack: without full marks
    there, a 0 for the attacked exercise proves nothing (the grader may be failing everything)."""
    assert_full_marks(g, [control], f"{attack} (control: the attacker's own correct {control}, graded alongside)")


# ----------------------------------------------------------------- 1. learner code runs beside the assertions

PATCH_TESTREPORT = """
import _pytest.reports as _reports

_real = _reports.TestReport.from_item_and_call.__func__

def _always_passed(cls, item, call):
    report = _real(cls, item, call)
    report.outcome, report.longrepr = "passed", None
    return report

_reports.TestReport.from_item_and_call = classmethod(_always_passed)
"""

ATTACKS_IN_PROCESS = {
    "patch_pytest_testreport": (["ch01.counts"], {"storylib/__init__.py": PATCH_TESTREPORT}),
    "swap_grader_records": (["ch01.counts"], {"storylib/__init__.py": """
        import sys as _sys

        class _AllPassed(list):
            def append(self, record):
                if isinstance(record, dict):
                    record = {**record, "outcome": "passed", "message": ""}
                super().append(record)

        for _name, _module in list(_sys.modules.items()):
            if "grader" in _name and isinstance(getattr(_module, "_records", None), list):
                _module._records = _AllPassed(_module._records)
        """}),
    "atexit_rewrites_report": (["ch01.counts"], {"storylib/__init__.py": """
        import atexit as _atexit
        import sys as _sys

        def _rewrite():
            try:
                import json
                args = _sys.argv
                path = args[args.index("--report-json") + 1]
                with open(path) as f:
                    data = json.load(f)
                for record in data["tests"]:
                    record.update(outcome="passed", message="")
                with open(path, "w") as f:
                    json.dump(data, f)
            except Exception:
                pass

        _atexit.register(_rewrite)
        """}),
    "patch_comparisons": (["ch01.bits_per_byte", "ch04.merge_heads"], {
        "storylib/__init__.py": """
            import builtins as _builtins
            import math as _math

            import torch as _torch

            _abs = _builtins.abs
            _builtins.abs = lambda x: 0.0 if isinstance(x, float) else _abs(x)
            _math.isclose = lambda *a, **k: True
            _torch.allclose = lambda *a, **k: True
            _torch.equal = lambda *a, **k: True
            """,
        "storylib/bigram.py": """
            def bits_per_byte(probs, stories, vocab):
                return 0.0
            """,
        "storylib/attention.py": """
            def merge_heads(x):
                B, H, T, D = x.shape
                return torch.zeros((B, T, H * D), dtype=x.dtype)
            """,
    }),
    "always_equal_results": (["ch01.nll", "ch01.bits_per_byte"], {"storylib/bigram.py": """
        class _Liar(float):
            def __eq__(self, other):
                return True

            def __ne__(self, other):
                return False

            def __sub__(self, other):
                return 0.0

            __rsub__ = __sub__
            __hash__ = float.__hash__

        class _Agreeable:
            def __eq__(self, other):
                return True

            def __ne__(self, other):
                return False

            def __lt__(self, other):
                return True

            __le__ = __gt__ = __ge__ = __lt__

            def __sub__(self, other):
                return 0.0

            __rsub__ = __sub__

            def __abs__(self):
                return 0.0

            def __bool__(self):
                return True

            def __float__(self):
                return 0.0

            def __format__(self, spec):
                return format(0.0, spec)

            __hash__ = object.__hash__

        def nll(probs, stories, vocab):
            return _Liar(0.0)

        def bits_per_byte(probs, stories, vocab):
            return _Agreeable()
        """}),
    "read_the_tests_frame": (["ch01.bits_per_byte"], {"storylib/bigram.py": """
        def bits_per_byte(probs, stories, vocab):
            import sys

            frame = sys._getframe(1)
            while frame is not None:
                seen = frame.f_locals
                if "want" in seen:
                    return float(seen["want"])
                if "bits" in seen and "n_bytes" in seen:
                    return seen["bits"] / seen["n_bytes"]
                frame = frame.f_back
            return 0.0
        """}),
    "root_sitecustomize": (["ch01.counts"], {"sitecustomize.py": PATCH_TESTREPORT}),
    "root_json_package": (["ch01.counts"], {"json/__init__.py": """
        # Shadows the standard json for whoever has the learner's folder on sys.path: load the real one, then
        # make every report it writes say "passed".
        import os as _os
        import sys as _sys

        _here = _os.path.realpath(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
        del _sys.modules[__name__]
        _saved = _sys.path[:]
        _sys.path[:] = [p for p in _sys.path if _os.path.realpath(p or ".") != _here]
        try:
            import json as _real
        finally:
            _sys.path[:] = _saved
        _dumps = _real.dumps

        def _passing_dumps(obj, *args, **kwargs):
            if isinstance(obj, dict) and isinstance(obj.get("tests"), list):
                for record in obj["tests"]:
                    if isinstance(record, dict):
                        record.update(outcome="passed", message="")
            return _dumps(obj, *args, **kwargs)

        _real.dumps = _passing_dumps
        _sys.modules[__name__] = _real
        """}),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("attack", list(ATTACKS_IN_PROCESS))
def test_learner_code_cannot_touch_the_assertions_or_the_report(tmp_path, attack):
    targets, files = ATTACKS_IN_PROCESS[attack]
    ws = workspace(tmp_path / "eve", stub=tuple(targets))
    for rel, code in files.items():
        plant(ws, rel, code)
    graded = grade(ws, [*targets, "ch01.smooth"])
    assert_no_points(graded, targets, attack)
    assert_control_graded(graded, "ch01.smooth", attack)


# ------------------------------------------------------------------ 2. a test that never ran is not a pass

ANSWER_ONCE = """
_calls = []

def nll(probs, stories, vocab):
    _calls.append(1)
    if len(_calls) > 1:  # only the first input is handled: stop the grading before the next test can fail
        {stop}
    x, y = pairs(stories, vocab)
    return float(-torch.log(probs[x, y].double()).mean())
"""

STOPS = {
    "keyboard_interrupt": "raise KeyboardInterrupt",
    "pytest_exit": "import sys; sys.modules['pytest'].exit('all done', returncode=0)",
    "os_exit": "import os; os._exit(0)",
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("stop", list(STOPS))
def test_tests_that_never_ran_do_not_count_as_passed(tmp_path, stop):
    ws = workspace(tmp_path / "eve", stub=("ch01.nll",))
    plant(ws, "storylib/bigram.py", ANSWER_ONCE.format(stop=STOPS[stop]))
    graded = grade(ws, ["ch01.counts", "ch01.nll"])  # ch01.counts's tests run first: a control
    attack = f"answer the first test's input, then {stop}"
    assert_no_points(graded, ["ch01.nll"], attack)
    assert_control_graded(graded, "ch01.counts", attack)


# -------------------------------------------------------------------------- 3. the reference is out of reach


def _path_insert(ws: Path) -> None:
    plant(ws, "storylib/__init__.py", f"__path__.insert(0, {str(REFERENCE)!r})")


def _load_by_file_path(ws: Path) -> None:
    plant(ws, "storylib/bigram.py", f"""
        try:
            import importlib.util as _util
            import sys as _sys

            _spec = _util.spec_from_file_location("_reference_bigram", {str(REFERENCE / "bigram.py")!r})
            _ref = _sys.modules["_reference_bigram"] = _util.module_from_spec(_spec)
            _spec.loader.exec_module(_ref)
            count_bigrams = _ref.count_bigrams
        except Exception:
            pass  # the reference is out of reach: keep the package importable, with my own (stubbed) count_bigrams
        """)


def _symlink(ws: Path) -> None:
    mine = ws / "storylib" / "bigram.py"
    mine.unlink()
    mine.symlink_to(REFERENCE / "bigram.py")


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "attack, control",
    [
        pytest.param(_path_insert, "ch01.smooth", id="path_insert_course_storylib", marks=NEEDS_BWRAP),
        pytest.param(_load_by_file_path, "ch01.smooth", id="importlib_course_bigram_py", marks=NEEDS_BWRAP),
        # Refused, bigram.py is gone and no ch01 test module imports: no control can run in this check.
        pytest.param(_symlink, None, id="symlink_to_course_bigram_py"),
    ],
)
def test_learner_code_cannot_import_the_reference(tmp_path, attack, control):
    ws = workspace(tmp_path / "eve", stub=("ch01.counts",))
    attack(ws)
    graded = grade(ws, ["ch01.counts", *([control] if control else [])])
    name = f"{attack.__name__.strip('_')} attack"
    assert_no_points(graded, ["ch01.counts"], name)
    if control:
        assert_control_graded(graded, control, name)


# ------------------------------------------------------------------- 4. one submission cannot stop grading

STOPPERS = {
    "os_exit_at_import": ({}, "storylib/__init__.py", "import os\nos._exit(0)"),
    "sigkill_parent": ({}, "storylib/datasets.py", """
        def dedup_exact(stories):
            import os, signal
            os.kill(os.getppid(), signal.SIGKILL)
            return []
        """),
    "sigstop_parent": ({"timeout": 10}, "storylib/datasets.py", """
        def dedup_exact(stories):
            import os, signal
            os.kill(os.getppid(), signal.SIGSTOP)
            return []
        """),
    "endless_retry": ({"timeout": 10}, "storylib/datasets.py", """
        def dedup_exact(stories):
            import signal, time
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
                signal.signal(sig, signal.SIG_IGN)
            while True:
                try:
                    time.sleep(0.05)
                except BaseException:
                    continue
        """),
    # 64 GiB, 1 GiB at a time, every page written. It first volunteers as the OOM killer's victim, so that on a
    # grader with no memory limit the kernel takes the hog rather than a neighbour.
    "memory_hog_64_gib": ({"timeout": 10}, "storylib/datasets.py", """
        def dedup_exact(stories):
            import torch
            try:
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write("1000")
            except OSError:
                pass
            hog = [torch.ones(1 << 28) for _ in range(64)]
            return [len(hog)]
        """),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("attack", list(STOPPERS))
def test_one_submission_cannot_stop_grading(tmp_path, attack):
    kwargs, rel, code = STOPPERS[attack]
    ws = workspace(tmp_path / "eve", stub=("ch11.dedup",))
    plant(ws, rel, code)
    assert_no_points(grade(ws, ["ch11.dedup"], wall=120, **kwargs), ["ch11.dedup"], attack)
    if attack in ("sigkill_parent", "sigstop_parent", "memory_hog_64_gib"):  # what could leave the grader broken
        later = grade(workspace(tmp_path / "bob"), ["ch11.dedup"], **kwargs)
        assert_full_marks(later, ["ch11.dedup"], f"a correct solution checked after the {attack} attack")


# ----------------------------------------------------------------- 5. one learner cannot change others' grades


@NEEDS_BWRAP
@pytest.mark.timeout(150)
def test_learner_code_cannot_write_into_the_course_or_the_venv(tmp_path):
    token = uuid.uuid4().hex
    markers = [COURSE_ROOT / "grading" / "tests" / f"_attack_marker_{token}"]
    markers += [Path(d) / f"_attack_marker_{token}.pth" for d in site.getsitepackages()]
    ws = workspace(tmp_path / "eve", stub=("ch01.counts",))
    plant(ws, "storylib/__init__.py", f"""
        for _path in {[str(m) for m in markers]!r}:
            try:
                with open(_path, "w") as _f:
                    _f.write("# a harmless marker left by tests/test_grader_attacks.py: delete me\\n")
            except OSError:
                pass
        """)
    try:
        attacked = grade(ws, ["ch01.counts"])
        left = [str(m) for m in markers if m.exists()]
    finally:
        for m in markers:
            m.unlink(missing_ok=True)
    assert not left, f"the learner's code wrote files outside its workspace: {left}"
    assert_no_points(attacked, ["ch01.counts"], "writing into the course and the venv")
    assert_full_marks(grade(workspace(tmp_path / "bob"), ["ch01.counts"]), ["ch01.counts"],
                      "the next learner, after an attempt to plant files in the course and the venv")


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if token in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(150)
def test_learner_code_leaves_no_process_behind(tmp_path):
    token = f"_attack_daemon_{uuid.uuid4().hex}"  # in the daemon's command line, so that we can find it
    pidfile = Path("/tmp") / f"{token}.pid"
    ws = workspace(tmp_path / "eve", stub=("ch01.counts",))
    plant(ws, "storylib/__init__.py", f"""
        import os as _os
        import sys as _sys

        def _daemon():  # the classic double fork: a new session, no parent to wait for it, no inherited output
            child = _os.fork()
            if child:
                _os.waitpid(child, 0)
                return
            try:
                _os.setsid()
                if _os.fork() == 0:
                    null = _os.open(_os.devnull, _os.O_RDWR)
                    for fd in (0, 1, 2):
                        _os.dup2(null, fd)
                    with open({str(pidfile)!r}, "w") as f:
                        f.write(str(_os.getpid()))
                    # It would wake up later and interfere with the next learner's check; here it only sleeps.
                    _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(90)", {token!r}])
            finally:
                _os._exit(0)

        try:
            _daemon()
        except Exception:
            pass
        """)
    try:
        attacked = grade(ws, ["ch01.counts"])
        survivors = _processes_with(token)
    finally:
        for pid in _processes_with(token):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)
    assert not survivors, f"a daemon the learner's code started outlived its check: pids {survivors}"
    assert_no_points(attacked, ["ch01.counts"], "leaving a daemon behind")
    assert_full_marks(grade(workspace(tmp_path / "bob"), ["ch01.counts"]), ["ch01.counts"],
                      "the next learner, after a check that tried to leave a daemon behind")


# --------------------------------------------------------------- 6. the public tests cannot be answered by rote

INPUT_KEY = """
import hashlib as _hashlib
import json as _json

def _input_key(stories, vocab):
    return _hashlib.sha256(_json.dumps([list(stories), list(vocab.chars)]).encode()).hexdigest()
"""


@pytest.mark.timeout(150)
def test_a_lookup_table_of_the_public_tests_scores_nothing_under_a_fresh_seed(tmp_path):
    # The learner runs the public tests (tests/ of the workspace) at home, against a wrapper of a correct
    # count_bigrams that writes down every input it is given and the answer.
    table = tmp_path / "table.json"
    rec = workspace(tmp_path / "recorder")
    shutil.copytree(COURSE_ROOT / "grading" / "tests", rec / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    plant(rec, "storylib/bigram.py", INPUT_KEY)
    plant(rec, "storylib/bigram.py", f"""
        _count = count_bigrams

        def count_bigrams(stories, vocab):
            N = _count(stories, vocab)
            try:
                with open({str(table)!r}) as f:
                    seen = _json.load(f)
            except FileNotFoundError:
                seen = {{}}
            seen[_input_key(stories, vocab)] = N.tolist()
            with open({str(table)!r}, "w") as f:
                _json.dump(seen, f)
            return N
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env["PYTHONPATH"] = str(rec)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ch01_bigram.py", "-k", "counts"],
        cwd=rec, env=env, capture_output=True, text=True, timeout=120,
    )
    assert table.exists() and json.loads(table.read_text()), (
        f"recording the public tests' inputs failed (exit {run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    )
    # The learner's count_bigrams: no algorithm, only the table, shipped inside the package.
    ws = workspace(tmp_path / "eve", stub=("ch01.counts",))
    (ws / "storylib" / "_answers.py").write_text(f"ANSWERS = {table.read_text()}\n")
    plant(ws, "storylib/bigram.py", INPUT_KEY)
    plant(ws, "storylib/bigram.py", """
        from storylib._answers import ANSWERS as _ANSWERS

        def count_bigrams(stories, vocab):
            answer = _ANSWERS.get(_input_key(stories, vocab))
            if answer is None:  # an input it has never seen: garbage
                return torch.ones((len(vocab), len(vocab)), dtype=torch.int64)
            return torch.tensor(answer, dtype=torch.int64)
        """)
    public = grade(ws, ["ch01.counts"])
    assert_full_marks(public, ["ch01.counts"], "control: the lookup table, on the public inputs it was recorded "
                      "from (the default seed stays the public one)")
    assert_no_points(grade(ws, ["ch01.counts"], seed=None), ["ch01.counts"], "a lookup table under a fresh seed")
