"""nbgrader: release the exercise notebooks, and grade a simulated class end to end.

    llm101n exercises [--check]   # solutions/*.ipynb → exercises/*.ipynb (nbgrader generate_assignment)
    llm101n class DIR             # generate → submit (7 students) → autograde → regrade → feedback → export

The class has seven students whose expected marks follow from the exercise registry (ada and bo hand in every
assignment: every released notebook must earn full marks done and 0 untouched; the others, whose cases do not depend
on the chapter, three of them):
ada hands in the reference (full marks); bo hands in the release untouched (0); cy finished the other chapters and
wrote the first half of this chapter's package exercises (their points); dee hands in the reference but her notebook
kills its kernel (the package points, and 0 for the questions: her notebook computed nothing); eve is hostile — stubs,
a conftest.py/pytest.ini/grading/ that would fake passing tests, cells that monkeypatch the checker and
`builtins.abs` and copy the course's storylib next to the notebook, and answers that are objects equal to
everything (0); fay's packages call os._exit(0) when imported and gus's kill their parent process (0, each with the
reason in the feedback, and everybody else graded).

How it is graded, so that nothing a student's code does can award points:
- collect: a submission is sanitised (only notebooks and the `.py` files of the course packages are kept);
- autograde: nbgrader runs the notebooks. Each kernel's parent is a disposable process with a time bound, so a
  kernel that exits, kills its parent or hangs ends only its own student's run. After each question cell a probe
  cell prints, behind a marker made for this run, the *values* the cell's asserts read (numbers, strings, lists,
  dicts, tensors and arrays, as data);
- regrade: the package exercises are graded again by `grading.harness`, from pristine tests, on a fresh copy of the
  sanitised `submitted/` folder (never `autograded/`, where the notebook ran and could write anything), each
  student in a disposable process with a time bound; the question cells' asserts are evaluated here, with the
  trusted builtins, on the values the notebook reported. Both are written as nbgrader's manual scores, the ones that
  count; their verdicts replace those cells' output in the feedback, and a question's reason is also a comment on its
  answer. A student whose grading crashes or hangs gets 0 with the reason; the others are graded and exported.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import csv
import functools
import json
import math
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grading.exercises import PACKAGES, Exercise, discover, stub_text
from grading.harness import COURSE_ROOT, check
from grading.release import stub_package

SOLUTIONS = COURSE_ROOT / "solutions"
EXERCISES = COURSE_ROOT / "exercises"
_CHECK_CALL = re.compile(r"check_exercise\(['\"]((?:ch\d\d|lab\d\d|app[A-Z])\.[a-z0-9_]+)['\"]\)")
CONFIG = """c = get_config()
c.CourseDirectory.course_id = "llm101n"
c.ExecutePreprocessor.timeout = 300
c.Execute.timeout = 300
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
"""
KERNEL_LIMIT = 900  # seconds one notebook may run in all (nbgrader's own timeout is per cell)
REGRADE_LIMIT = 1000  # seconds the package regrade of one submission may take (the harness stops its own run at 900)
REGRADE_TEST_TIMEOUT = 60  # seconds per test, for a harness.check that takes `timeout=`
# The seed that salts the regrade's inputs: $LLM101N_GRADING_SEED (CI pins one, for a reproducible class), else
# None: a fresh one drawn when grading, so outputs memorised from the public tests fail.
REGRADE_SEED = int(os.environ["LLM101N_GRADING_SEED"]) if os.environ.get("LLM101N_GRADING_SEED") else None
VERDICT = "Grader verdict:"  # how the grader's own output in a grade cell begins


def assignments() -> list[str]:
    return [*sorted(p.stem for p in SOLUTIONS.glob("ch*.ipynb")), *sorted(p.stem for p in SOLUTIONS.glob("lab*.ipynb")),
            *sorted(p.stem for p in SOLUTIONS.glob("app*.ipynb"))]


def _env(course: Path | None = None) -> dict[str, str]:
    """nbgrader's environment: the venv's bin first (nbgrader calls alembic), no path to the reference, and the
    course's own Jupyter folder first (its python3 kernel runs under a disposable parent)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT", "JUPYTER_PATH")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if course is not None:
        env["JUPYTER_PATH"] = str(course / KERNELS)
    return env


def nbgrader(course: Path, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=_env(course),
                          capture_output=True, text=True)
    if proc.returncode not in ok:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def new_course(course: Path, names: list[str]) -> None:
    course.mkdir(parents=True, exist_ok=True)
    steps = f"c.Autograde.autograde_preprocessors = {_autograde_steps()!r}\n"
    (course / "nbgrader_config.py").write_text(CONFIG + steps)
    _write_kernel(course)
    for name in names:
        (course / "source" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(SOLUTIONS / f"{name}.ipynb", course / "source" / name / f"{name}.ipynb")
        nbgrader(course, "generate_assignment", name, "--force")


def _normalise(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return json.dumps(nb, sort_keys=True, indent=1)


def generate_exercises(check_only: bool = False, scratch: Path | None = None) -> int:
    """Regenerate exercises/ from solutions/ (or, with check_only, report whether it is stale)."""
    import tempfile

    names = assignments()
    with tempfile.TemporaryDirectory(prefix="llm101n-release-") as tmp:
        course = Path(scratch or tmp)
        new_course(course, names)
        stale = []
        for name in names:
            fresh = course / "release" / name / f"{name}.ipynb"
            committed = EXERCISES / f"{name}.ipynb"
            if check_only:
                if not committed.exists() or _normalise(fresh) != _normalise(committed):
                    stale.append(name)
            else:
                EXERCISES.mkdir(exist_ok=True)
                shutil.copy(fresh, committed)
        extra = sorted({p.stem for p in EXERCISES.glob("*.ipynb")} - set(names))
    missing = [f"{name}: {ex_id}" for name in names for ex_id in ungraded(name)]
    for item in missing:
        print(f"solutions/{item.split(':')[0]}.ipynb has no autograder cell for{item.split(':')[1]}")
    if check_only:
        for name in stale:
            print(f"exercises/{name}.ipynb is stale: run `make exercises` and commit it")
        for name in extra:
            print(f"exercises/{name}.ipynb has no source in solutions/")
        print(f"exercises: {len(names)} notebooks, {len(stale)} stale, {len(extra)} without source")
        return 1 if stale or extra or missing else 0
    print(f"exercises: wrote {len(names)} notebooks to {EXERCISES}")
    return 1 if missing else 0


def assignment_exercises(name: str):
    """The package exercises an assignment grades: those of its book chapter, by section (ch08_device: the
    cuda_labs exercises lab01..lab07, all in §8.x; ch12_kvcache: ch12.*)."""
    chapter = name.split("_")[0]
    def part(ex: Exercise) -> str:  # §8.x is Chapter 8's (ch08), §A.x Appendix A's (appA)
        p = ex.section.split(".")[0]
        return f"ch{p.zfill(2)}" if p.isdigit() else f"app{p}"

    return [ex for ex in discover(COURSE_ROOT) if part(ex) == chapter]


def ungraded(name: str) -> list[str]:
    """Exercises of the assignment's chapter that its source notebook has no single autograder cell for."""
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    calls = [m.group(1) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
             for m in _CHECK_CALL.finditer(c.source)]
    return [ex.id for ex in assignment_exercises(name) if calls.count(ex.id) != 1]


# ------------------------------------------------------------------------------ question cells, checked by the grader

PROBE_KEY = "llm101n_probe"  # cell metadata: the grade id of the question a probe cell reports for
READINGS_KEY = "llm101n_readings"  # notebook metadata: per question, what its probe printed (or why nothing)
MAX_ELEMENTS = 100_000  # a question reads a few numbers: a bigger value is reported as too large, not as data
MAX_READING_CHARS = 2_000_000
TRUSTED_NAMES = ("math", "torch", "np", "numpy")  # what the grader's namespace provides
NOT_RUN = "your notebook could not be run to this cell"
_TORCH_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
_PROBE = '''\
def _llm101n_probe(names, marker, limit):
    """Written by the grader: print, as data only, the values the question above reads."""
    import json
    import sys

    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")

    def as_data(v, depth=0):
        if type(v) in (bool, int, float, str, type(None)):
            return {"kind": "plain", "value": v}
        if type(v) in (list, tuple) and depth < 8 and len(v) <= limit:
            return {"kind": type(v).__name__, "items": [as_data(x, depth + 1) for x in v]}
        if type(v) is dict and depth < 8 and len(v) <= limit and all(type(k) is str for k in v):
            return {"kind": "dict", "items": {k: as_data(x, depth + 1) for k, x in v.items()}}
        if torch is not None and isinstance(v, torch.Tensor) and v.numel() <= limit:
            t = v.detach().cpu()
            return {"kind": "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                    "data": t.tolist()}
        if np is not None and isinstance(v, (np.ndarray, np.generic)) and np.size(v) <= limit:
            return {"kind": "ndarray" if isinstance(v, np.ndarray) else "npscalar", "dtype": v.dtype.name,
                    "shape": list(np.shape(v)), "data": v.tolist()}
        arrays = tuple(t for t in (torch and torch.Tensor, np and np.ndarray) if t)
        if type(v) in (list, tuple, dict) or isinstance(v, arrays):  # too large, too deep, or keys not strings
            return {"kind": "too_large", "type": type(v).__qualname__}
        return {"kind": "opaque", "type": type(v).__qualname__}

    found = {}
    for name in names:
        try:
            found[name] = as_data(globals()[name]) if name in globals() else {"kind": "missing"}
            json.dumps(found[name])
        except Exception as e:
            found[name] = {"kind": "opaque", "type": f"value that raised {type(e).__name__} when read"}
    print(marker + json.dumps(found) + marker)
'''


def is_question(cell) -> bool:
    """A grade cell whose asserts test the notebook's own variables (not a `check_exercise` cell of the packages)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return (cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")
            and not _CHECK_CALL.search(cell.get("source", "")))


def question_names(source: str) -> list[str]:
    """The names a question cell reads from the notebook: free names, less builtins, what the cell binds itself
    (assignments, imports, loop and comprehension variables) and the modules the grader's namespace provides."""
    read, bound = [], set(TRUSTED_NAMES) | set(dir(builtins))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            (read.append if isinstance(node.ctx, ast.Load) else bound.add)(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return list(dict.fromkeys(name for name in read if name not in bound))


def probe_source(names: list[str], marker: str) -> str:
    return f"{_PROBE}\n\n_llm101n_probe({names!r}, {marker!r}, {MAX_ELEMENTS})\ndel _llm101n_probe\n"


def read_probe(outputs: list, marker: str | None) -> dict[str, str]:
    """What a probe cell printed behind the marker: {"payload": JSON text}, or {"error": why there is none}."""
    for out in outputs:
        if out.get("output_type") == "error":
            return {"error": f"the grader could not read your values ({out.get('ename')}: {out.get('evalue')})"}
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")
    found = re.search(re.escape(marker) + "(.*?)" + re.escape(marker), text) if marker else None
    if not found:
        return {"error": "your notebook reported no values for this cell (was print or stdout replaced?)"}
    return {"payload": found.group(1)}


class QuestionProbes:
    """nbgrader autograde step, before Execute: after each question cell, a probe cell that prints the values the
    question reads as JSON, behind a marker made for this run (only that cell's output is read)."""

    def __call__(self, nb, resources):
        marker = resources["llm101n_marker"] = f"llm101n-values-{secrets.token_hex(16)}"
        nb.metadata.pop(READINGS_KEY, None)  # only QuestionReadings writes it: its presence says the notebook ran
        cells = []
        for cell in nb.cells:
            cell.metadata.pop(PROBE_KEY, None)  # only the probes put in here count as probes
            cells.append(cell)
            if is_question(cell):
                probe = nbformat.v4.new_code_cell(probe_source(question_names(cell.source), marker))
                probe.metadata[PROBE_KEY] = cell.metadata["nbgrader"]["grade_id"]
                cells.append(probe)
        nb.cells = cells
        return nb, resources


class QuestionReadings:
    """nbgrader autograde step, after Execute: keep what each probe printed in the notebook's metadata, and take
    the probe cells out (the feedback shows the student's notebook, not the grader's probes)."""

    def __call__(self, nb, resources):
        marker = resources.get("llm101n_marker")
        nb.metadata[READINGS_KEY] = {cell.metadata[PROBE_KEY]: read_probe(cell.get("outputs", []), marker)
                                     for cell in nb.cells if PROBE_KEY in cell.metadata}
        nb.cells = [cell for cell in nb.cells if PROBE_KEY not in cell.metadata]
        return nb, resources


class NotByValue(ValueError):
    """A reported value the grader cannot rebuild as plain data."""


@dataclass
class Verdict:
    score: float
    reason: str = ""  # why it is not full marks ("" when it is)


def _shaped(value, shape):
    if list(value.shape) != list(shape):
        raise NotByValue("its shape does not match its data")
    return value


def from_data(item: dict):
    """Rebuild one reported value here: a plain value, list, tuple or dict, a torch tensor or a numpy array."""
    import numpy as np
    import torch

    kind = item["kind"]
    if kind == "plain" and type(item["value"]) in (bool, int, float, str, type(None)):
        return item["value"]
    if kind in ("list", "tuple"):
        items = [from_data(x) for x in item["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {str(k): from_data(v) for k, v in item["items"].items()}
    if kind == "tensor" and item["dtype"] in _TORCH_DTYPES:
        return _shaped(torch.tensor(item["data"], dtype=getattr(torch, item["dtype"])), item["shape"])
    if kind in ("ndarray", "npscalar") and np.dtype(item["dtype"]).kind in "biuf":
        array = _shaped(np.array(item["data"], dtype=np.dtype(item["dtype"])), item["shape"])
        return array if kind == "ndarray" else array[()]
    if kind == "missing":
        raise NotByValue("not defined when this cell ran")
    if kind == "too_large":
        raise NotByValue(f"a {item['type']!s:.60} too large or too deeply nested to check (or a dict whose keys are "
                         "not all strings)")
    if kind == "opaque":
        raise NotByValue(f"an object of type {item['type']!s:.60} — the grader checks values only: numbers, "
                         "strings, lists, dicts, tensors and arrays")
    raise NotByValue("reported in a form the grader does not know")


def decode_values(payload: str, names: list[str]) -> dict:
    """The values of `names` from a probe's JSON, rebuilt as data; NotByValue names the first that cannot be."""
    if len(payload) > MAX_READING_CHARS:
        raise NotByValue("your values are too large to check")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise NotByValue("your values were reported in a form the grader does not know")
    values = {}
    for name in names:
        try:
            values[name] = from_data(data[name])
        except NotByValue as e:
            raise NotByValue(f"{name}: {e}") from None
        except Exception as e:  # a malformed report (a student's kernel wrote it): no points, never a crash here
            raise NotByValue(f"{name}: not reported as a value the grader can rebuild ({type(e).__name__})") from None
    return values


def recheck(source: str, points: float, reading: dict | None, not_run: str = "") -> Verdict:
    """Evaluate a question cell's asserts here, with the grader's own builtins, on the values the student's notebook
    reported (`reading`, from its probe; None when there is none, `not_run` saying why)."""
    if reading is None:
        return Verdict(0.0, f"{NOT_RUN}: {not_run}" if not_run else "no values were reported for this cell")
    if "payload" not in reading:
        return Verdict(0.0, str(reading.get("error", "no values were reported for this cell")))
    import numpy as np
    import torch

    try:
        namespace = {"__builtins__": builtins, "math": math, "torch": torch, "np": np, "numpy": np,
                     **decode_values(reading["payload"], question_names(source))}
        exec(compile(source, "<question cell>", "exec"), namespace)
    except NotByValue as e:
        return Verdict(0.0, str(e))
    except AssertionError as e:
        return Verdict(0.0, f"AssertionError: {e}" if str(e) else "an assertion failed")
    except Exception as e:
        return Verdict(0.0, f"{type(e).__name__}: {e}")
    return Verdict(float(points))


# ------------------------------------------------------------------------------ the class


@dataclass
class Expected:
    """What one submission should earn: the exercises that pass ("questions": every question cell too), and a phrase
    its feedback must show (why it lost points)."""

    passing: set[str]
    says: str = ""


def sanitise(submission: Path) -> list[str]:
    """Keep only the notebooks, the .py files of the course packages and their data files that are byte for byte
    the course's own (e.g. storylib/webapp/*). Returns what was removed."""
    removed = []
    for path in sorted(submission.rglob("*"), reverse=True):
        rel = path.relative_to(submission)
        shipped = COURSE_ROOT / rel
        keep = (
            (len(rel.parts) == 1 and (path.suffix == ".ipynb" or rel.name == "timestamp.txt"))
            or (rel.parts[0] in PACKAGES and (path.is_dir() or path.suffix == ".py"))
            or (rel.parts[0] in PACKAGES and path.is_file() and not path.is_symlink() and shipped.is_file()
                and path.read_bytes() == shipped.read_bytes())
        )
        keep = keep and not path.is_symlink() and rel.name != "conftest.py"
        if not keep:
            removed.append(rel.as_posix())
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return removed


def _copy_packages(into: Path, stub: bool, implemented: set[str] | None = None) -> None:
    for package in PACKAGES:
        if not (COURSE_ROOT / package).is_dir():
            continue
        if stub:
            stub_package(COURSE_ROOT / package, into / package)
            if implemented:  # put the reference back for these exercises only
                every = discover(COURSE_ROOT)
                for path in sorted({ex.path for ex in every if ex.id in implemented and ex.path.parts[0] == package}):
                    ref = (COURSE_ROOT / path).read_text(encoding="utf-8")
                    others = [e.id for e in every if e.path == path and e.id not in implemented]
                    (into / path).write_text(stub_text(ref, path, others), encoding="utf-8")
        else:
            shutil.copytree(COURSE_ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))


def _half(name: str) -> set[str]:
    """The first half of an assignment's exercises (what cy wrote of this chapter)."""
    ids = [ex.id for ex in assignment_exercises(name)]
    return set(ids[: len(ids) // 2])


def _all_but(name: str) -> set[str]:
    """Every exercise of the other assignments: cy has finished the rest of the course (Chapter 12's tests run
    Chapter 5's GPT, Chapter 16's run Chapter 12's cache), so only this chapter's missing half can cost points."""
    own = {ex.id for ex in assignment_exercises(name)}
    return {ex.id for ex in discover(COURSE_ROOT)} - own


def _sample(names: list[str]) -> list[str]:
    """The assignments cy, dee, eve, fay and gus hand in: what they test (partial credit, a dying kernel, a hostile
    submission, a package that kills) does not depend on the chapter, so the first, the last and the cuda_labs one
    (the other package) are enough."""
    return sorted({names[0], names[-1], *[n for n in names if any(e.path.parts[0] == "cuda_labs"
                                                                    for e in assignment_exercises(n))][:1]})


def _ids(name: str) -> set[str]:
    return {ex.id for ex in assignment_exercises(name)}


def _released(course: Path, name: str):
    return nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)


def _ada(course: Path, d: Path, name: str) -> Expected:
    """The reference: full marks."""
    shutil.copy(SOLUTIONS / f"{name}.ipynb", d / f"{name}.ipynb")
    _copy_packages(d, stub=False)
    return Expected(_ids(name) | {"questions"})


def _bo(course: Path, d: Path, name: str) -> Expected:
    """The release, untouched: 0."""
    nbformat.write(_released(course, name), d / f"{name}.ipynb")
    _copy_packages(d, stub=True)
    return Expected(set())


def _cy(course: Path, d: Path, name: str) -> Expected:
    """The other chapters done, and the first half of this one's package exercises: their points."""
    nbformat.write(_released(course, name), d / f"{name}.ipynb")
    _copy_packages(d, stub=True, implemented=_half(name) | _all_but(name))
    return Expected(_half(name))


def _dee(course: Path, d: Path, name: str) -> Expected:
    """The reference, but the notebook kills its kernel first thing: the packages are graded all the same, and the
    questions get 0 (the notebook computed nothing), saying why."""
    solved = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    solved.cells.insert(1, nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    nbformat.write(solved, d / f"{name}.ipynb")
    _copy_packages(d, stub=False)
    return Expected(_ids(name), says=NOT_RUN)


_ANYTHING = '''class Anything:
    """Equal to everything; with abs patched, as close to anything as you like."""

    def __eq__(self, other):
        return True

    def __float__(self):
        return 0.0

    def __sub__(self, other):
        return self

    __rsub__ = __sub__

    def __getitem__(self, key):
        return self

    def sum(self, *args, **kwargs):
        return self
'''
_EVE_CELLS = (
    "import grading.notebook as _g\n_g.check_exercise = lambda *a, **k: print('PASS')",
    "import builtins\nbuiltins.abs = lambda x: 0",
    "import shutil\nfrom pathlib import Path\n\nimport grading\n\n"
    "shutil.copytree(Path(grading.__file__).resolve().parent.parent / 'storylib', 'storylib', dirs_exist_ok=True)",
    _ANYTHING,
)


def _assigned(source: str) -> list[str]:
    names = [n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return list(dict.fromkeys(names))


def _eve(course: Path, d: Path, name: str) -> Expected:
    """Stubs, and everything that would fake a pass: a checker patched in the kernel, `builtins.abs` patched, the
    course's storylib copied next to the notebook, a conftest.py/pytest.ini/grading/ of her own, and an object equal
    to everything as every answer. 0, the feedback saying what the grader could not check."""
    released, answers = _released(course, name), _solution_sources(name)
    for cell in released.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = "\n".join(f"{n} = Anything()" for n in _assigned(answers[grade_id]))
    released.cells[1:1] = [nbformat.v4.new_code_cell(code) for code in _EVE_CELLS]
    nbformat.write(released, d / f"{name}.ipynb")
    _copy_packages(d, stub=True)
    (d / "conftest.py").write_text("def pytest_runtest_makereport(item, call):\n    call.excinfo = None\n")
    (d / "pytest.ini").write_text("[pytest]\naddopts = -p no:python\n")
    (d / "grading").mkdir()
    (d / "grading" / "__init__.py").write_text("")
    (d / "grading" / "notebook.py").write_text("def check_exercise(*a, **k):\n    print('PASS')\n")
    (d / "storylib" / "conftest.py").write_text("import pytest\n")
    return Expected(set(), says="an object of type Anything")


def _solution_sources(name: str) -> dict[str, str]:
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    return {c.metadata.nbgrader["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _killer(code: str, doc: str):
    def hand_in(course: Path, d: Path, name: str) -> Expected:
        nbformat.write(_released(course, name), d / f"{name}.ipynb")
        _copy_packages(d, stub=True)
        for package in PACKAGES:
            init = d / package / "__init__.py"
            if init.is_file():
                init.write_text(code + init.read_text(encoding="utf-8"), encoding="utf-8")
        return Expected(set())

    hand_in.__doc__ = doc
    return hand_in


STUDENTS: dict[str, Callable[[Path, Path, str], Expected]] = {
    "ada": _ada, "bo": _bo, "cy": _cy, "dee": _dee, "eve": _eve,
    "fay": _killer("import os\nos._exit(0)\n", "Stubs whose packages end the process that imports them: 0."),
    "gus": _killer("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                   "Stubs whose packages kill the parent of the process that imports them: 0."),
}


def submit_class(course: Path, names: list[str]) -> dict[str, dict[str, Expected]]:
    """Write the submissions; return, per student and assignment handed in, what it should earn."""
    expected: dict[str, dict[str, Expected]] = {}
    for student, hand_in in STUDENTS.items():
        expected[student] = {}
        for name in names if student in ("ada", "bo") else _sample(names):
            d = course / "submitted" / student / name
            d.mkdir(parents=True, exist_ok=True)
            expected[student][name] = hand_in(course, d, name)
            (d / "timestamp.txt").write_text("2026-11-25 12:00:00.000000 UTC")
    return expected


def collect(course: Path, expected: dict[str, dict[str, Expected]]) -> None:
    for student, per in expected.items():
        for name in per:
            removed = sanitise(course / "submitted" / student / name)
            if removed:
                print(f"collect {student}/{name}: removed {', '.join(removed)}")


# ------------------------------------------------------------------------------ running the notebooks

_KERNEL_SHIM = """\
import ctypes, os, signal, subprocess, sys
# The kernel's parent is this disposable process: a cell that kills its parent, or runs past the limit, ends
# only its own notebook's run (nbgrader sees a dead kernel and goes on with the next student).
die_with_parent = lambda: ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
die_with_parent()  # this process with nbgrader, should anything kill nbgrader itself
signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts reach the whole group: they are for the kernel
def as_kernel():
    die_with_parent()  # the kernel with this process
    signal.signal(signal.SIGINT, signal.SIG_DFL)
env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
kernel = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", *sys.argv[2:]], env=env, preexec_fn=as_kernel)
try:
    kernel.wait(timeout=float(sys.argv[1]))
except subprocess.TimeoutExpired:
    print(f"the notebook ran longer than {sys.argv[1]} s and was stopped", file=sys.stderr, flush=True)
if os.getpgid(0) == os.getpid():  # jupyter_client made this process a group of its own
    os.killpg(0, signal.SIGKILL)  # the kernel, and whatever it left running in the group, with this process
kernel.kill()
"""
KERNELS = "jupyter"  # the course's own Jupyter data folder (JUPYTER_PATH): its python3 kernel runs under the shim


def _write_kernel(course: Path) -> None:
    spec = {"argv": [sys.executable, "-c", _KERNEL_SHIM, str(KERNEL_LIMIT), "-f", "{connection_file}"],
            "display_name": "Python 3", "language": "python", "interrupt_mode": "signal"}
    folder = course / KERNELS / "kernels" / "python3"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))


def _autograde_steps() -> list[str]:
    """nbgrader's autograde preprocessors, with the probes put in before Execute and read out right after it."""
    from nbgrader.converters.autograde import Autograde

    steps = [f"{p.__module__}.{p.__name__}" for p in Autograde.class_traits()["autograde_preprocessors"].default()]
    at = steps.index("nbgrader.preprocessors.execute.Execute")
    return [*steps[:at], "grading.nbclass.QuestionProbes", steps[at], "grading.nbclass.QuestionReadings",
            *steps[at + 1:]]


def run_bounded(cmd: list[str], limit: float, stdin: str = "", **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in a session of its own, its output in files (a process it leaves behind cannot hold a pipe of ours
    open); past `limit` seconds kill the whole session and raise TimeoutExpired. Whatever it left in the session
    is killed when it ends."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True,
                                start_new_session=True, **kwargs)
        try:
            proc.communicate(stdin, timeout=limit)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return subprocess.CompletedProcess(cmd, proc.returncode, _tail(out), _tail(err))


def _tail(file, size: int = 1_000_000) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read()


def _ended(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def _autograded(course: Path, student: str, name: str) -> Path:
    return course / "autograded" / student / name / f"{name}.ipynb"


def _ran(course: Path, student: str, name: str) -> bool:
    """Whether nbgrader ran this notebook to its end (a killed nbgrader leaves the sanitised, unrun notebook behind;
    only a finished run has the probes' readings)."""
    return READINGS_KEY in _autograded_metadata(course, student, name)


def _autograded_metadata(course: Path, student: str, name: str) -> dict:
    path = _autograded(course, student, name)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return dict(json.loads(path.read_text(encoding="utf-8")).get("metadata", {}))
    return {}


def _submitted(course: Path, name: str) -> list[str]:
    return sorted(p.parent.name for p in (course / "submitted").glob(f"*/{name}"))


def autograde(course: Path, names: list[str]) -> dict[tuple[str, str], str]:
    """nbgrader autograde, an assignment at a time. Returns, per (student, assignment) whose notebook could not be
    run to the end, why. A run killed from inside (a kernel that went for nbgrader itself) is redone a student at a
    time, so that it costs only its own student."""
    failed = {}
    for name in names:
        log, whole = _autograde_run(course, name)
        for student in _submitted(course, name):
            own_log = log
            if not whole and not _ran(course, student, name):
                own_log = _autograde_run(course, name, student)[0]  # this student may never have had a turn
            if not _ran(course, student, name):
                failed[(student, name)] = _why_not_run(own_log, student)
    return failed


def _autograde_run(course: Path, name: str, student: str | None = None) -> tuple[str, bool]:
    """One nbgrader autograde (of one student, or all); returns its log and whether it ran to its end."""
    args = ["autograde", name, "--force", *(["--student", student] if student else [])]
    limit = KERNEL_LIMIT * (1 if student else len(_submitted(course, name))) + 120
    try:
        proc = run_bounded([sys.executable, "-m", "nbgrader", *args], limit, cwd=course, env=_env(course))
    except subprocess.TimeoutExpired:
        return f"nbgrader autograde took longer than {limit} s and was stopped", False
    ended = f"\nthe process running the notebooks ended ({_ended(proc.returncode)})" if proc.returncode < 0 else ""
    return proc.stdout + proc.stderr + ended, proc.returncode >= 0


def _why_not_run(log: str, student: str) -> str:
    """The error nbgrader logged for this student's notebook, in one line."""
    lines = log.splitlines()
    mine = [i for i, line in enumerate(lines) if f"{os.sep}{student}{os.sep}" in line]
    after = lines[mine[0]:] if mine else lines
    others = [i for i, line in enumerate(after) if "Sanitizing" in line and f"{os.sep}{student}{os.sep}" not in line]
    segment = after[: others[0]] if others else after
    errors = [line.strip() for line in segment if re.search(r"Error\b|Kernel died|longer than|killed by", line)
              and "There was an error processing" not in line]
    return _short(errors[-1] if errors else (segment[-1].strip() if segment else "nbgrader gave no reason"))


def _short(text: str, size: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 3] + "..."


# ------------------------------------------------------------------------------ the regrade

Checker = Callable[[list[str], Path], dict[str, tuple[int, str]]]


@dataclass
class Graded:
    """The package regrade of one submission: per exercise, its score and, short of full marks, why; or why the
    grading itself broke (a crash, a hang, a killed process), every exercise then scoring 0."""

    scores: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    crash: str = ""

    def score(self, ex_id: str) -> int:
        return 0 if self.crash else self.scores.get(ex_id, 0)

    def reason(self, ex_id: str) -> str:
        if self.crash:
            return f"your packages could not be graded: {self.crash}"
        return self.reasons.get(ex_id, "" if ex_id in self.scores else "no result for this exercise")


def call_check(selectors: list[str], root: Path):
    """The package check of one submission: fresh inputs, bounded tests, the instructor's hidden tests if any
    ($LLM101N_HIDDEN_TESTS)."""
    hidden = Path(os.environ["LLM101N_HIDDEN_TESTS"]) if os.environ.get("LLM101N_HIDDEN_TESTS") else None
    return check(selectors, root, timeout=REGRADE_TEST_TIMEOUT, seed=REGRADE_SEED, hidden=hidden)


_CHILD = "from grading.nbclass import regrade_child; regrade_child()"


def regrade_child() -> None:
    """In a disposable process: run the check asked for on stdin, print the results behind the request's nonce."""
    request = json.loads(sys.stdin.readline())
    try:
        report = call_check(request["selectors"], Path(request["root"]))
        result = {"results": {r.exercise.id: [r.score, "" if r.passed else r.first_failure] for r in report.results}}
    except Exception as e:  # the parent writes it down as this submission's reason
        result = {"error": f"{type(e).__name__}: {e}"}
    print(request["nonce"] + json.dumps(result) + request["nonce"], flush=True)


def check_in_child(selectors: list[str], root: Path) -> dict[str, tuple[int, str]]:
    """Run the check in a disposable process with a time bound: a package that exits, kills its parent or hangs
    ends that process, never this one. Results only count behind a nonce the learner's code never sees."""
    nonce = secrets.token_hex(16)
    request = json.dumps({"selectors": selectors, "root": str(root), "nonce": nonce}) + "\n"
    try:
        proc = run_bounded([sys.executable, "-I", "-c", _CHILD], REGRADE_LIMIT, stdin=request, cwd=root.parent,
                           env=_env())
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"grading took longer than {REGRADE_LIMIT} s and was stopped") from None
    found = re.search(nonce + "(.*?)" + nonce, proc.stdout)
    if not found:
        raise RuntimeError(f"the grading process ended ({_ended(proc.returncode)}) without a result — something "
                           "your packages do when imported or tested stopped it")
    data = json.loads(found.group(1))
    if "error" in data:
        raise RuntimeError(data["error"])
    return {ex_id: (int(score), str(reason)) for ex_id, (score, reason) in data["results"].items()}


def _scratch() -> str:
    """Where clean copies go: the system's temporary folder, never inside the course repo (no folder above a copy
    may hold the reference storylib)."""
    tmp = Path(tempfile.gettempdir()).resolve()
    if tmp == COURSE_ROOT or COURSE_ROOT in tmp.parents:
        raise RuntimeError(f"the temporary folder {tmp} is inside the course repo: set TMPDIR elsewhere to grade")
    return str(tmp)


def clean_copy(submission: Path, into: Path) -> Path:
    """Copy the regular files of a sanitised submission into `into`: no symlink, device or fifo, and nothing reached
    through a symlinked folder (os.walk does not follow them)."""
    into.mkdir(parents=True, exist_ok=True)
    for folder, _dirs, files in os.walk(submission):
        rel = Path(folder).relative_to(submission)
        for name in files:
            if stat.S_ISREG(os.lstat(Path(folder) / name).st_mode):
                (into / rel).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(folder) / name, into / rel / name)
    return into


def regrade_copy(root: Path, selectors: list[str], checker: Checker | None = None) -> Graded:
    """Grade the packages of a clean copy. Whatever breaks is this submission's 0, with the reason."""
    try:
        results = (checker or check_in_child)(selectors, root)
    except Exception as e:  # a crash, a hang, a killed process: this student's 0, never the class's
        return Graded(crash=_short(str(e) or type(e).__name__))
    return Graded({k: score for k, (score, _) in results.items()},
                  {k: _short(reason) for k, (_, reason) in results.items() if reason})


def regrade_submission(submission: Path, selectors: list[str], checker: Checker | None = None) -> Graded:
    with tempfile.TemporaryDirectory(prefix="llm101n-regrade-", dir=_scratch()) as tmp:
        return regrade_copy(clean_copy(submission, Path(tmp) / "submission"), selectors, checker)


def snapshot(course: Path, names: list[str], students: list[str], into: Path) -> dict[tuple[str, str], Path]:
    """A clean copy of every submission in `submitted/`, taken before any student code runs: a notebook cell can
    write into `autograded/` (where it runs) or `submitted/`, never into what is graded."""
    return {(student, name): clean_copy(course / "submitted" / student / name, into / student / name)
            for name in names for student in students if (course / "submitted" / student / name).is_dir()}


def start_regrades(pool: ThreadPoolExecutor, copies: dict[tuple[str, str], Path],
                   checker: Checker | None = None) -> dict[tuple[str, str], Future]:
    """Start the package regrade of every clean copy; it needs nothing of nbgrader's, so it runs while nbgrader does."""
    return {(student, name): pool.submit(regrade_copy, root, [ex.id for ex in assignment_exercises(name)], checker)
            for (student, name), root in copies.items()}


def regrade_packages(course: Path, names: list[str], students: list[str], workers: int = 2,
                     checker: Checker | None = None) -> dict[tuple[str, str], Graded]:
    with tempfile.TemporaryDirectory(prefix="llm101n-regrade-", dir=_scratch()) as tmp, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        regrades = start_regrades(pool, snapshot(course, names, students, Path(tmp)), checker)
        return {job: future.result() for job, future in regrades.items()}


# ------------------------------------------------------------------------------ into nbgrader's gradebook


@functools.lru_cache(maxsize=64)
def _source(course: Path, name: str):
    """The assignment's source notebook (read once: it is read for every student; nobody changes it)."""
    return nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)


def package_cells(source) -> dict[str, str]:
    """grade id → the exercise its check_exercise cell grades."""
    return {c.metadata.nbgrader["grade_id"]: m.group(1) for c in source.cells
            if c.metadata.get("nbgrader", {}).get("grade") and (m := _CHECK_CALL.search(c.source))}


def answer_cells(source) -> dict[str, str]:
    """grade id of a question → its answer: the solution cell nearest above it (nbgrader keeps comments there)."""
    answers, last = {}, None
    for cell in source.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            last = meta["grade_id"]
        elif is_question(cell) and last:
            answers[meta["grade_id"]] = last
    return answers


def readings(course: Path, student: str, name: str) -> dict | None:
    """What the probes of this student's notebook printed, per question; None when it did not run to its end."""
    found = _autograded_metadata(course, student, name).get(READINGS_KEY)
    return dict(found) if isinstance(found, dict) else None


def question_verdicts(course: Path, student: str, name: str, not_run: str = "") -> dict[str, Verdict]:
    """Each question cell of the assignment, checked here on what the student's notebook reported."""
    found = readings(course, student, name) or {}
    verdicts = {}
    for cell in _source(course, name).cells:
        if is_question(cell):
            grade_id, points = cell.metadata.nbgrader["grade_id"], cell.metadata.nbgrader.get("points", 0)
            verdicts[grade_id] = recheck(cell.source, points, found.get(grade_id), not_run)
    return verdicts


def gradebook(course: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{course / 'gradebook.db'}")


def record(gb, course: Path, name: str, student: str, graded: Graded, verdicts: dict[str, Verdict]) -> None:
    """Write the grader's scores as nbgrader's manual scores (the ones that count), and each failed question's reason
    as a comment on its answer cell (nbgrader keeps comments on solution cells only)."""
    from nbgrader.api import MissingEntry

    source = _source(course, name)
    scores = {gid: float(graded.score(ex_id)) for gid, ex_id in package_cells(source).items()}
    scores |= {gid: verdict.score for gid, verdict in verdicts.items()}
    for grade_id, score in scores.items():
        with contextlib.suppress(MissingEntry):
            gb.find_grade(grade_id, name, name, student).manual_score = score
    for grade_id, answer in answer_cells(source).items():
        if grade_id in verdicts and verdicts[grade_id].reason:
            with contextlib.suppress(MissingEntry):
                gb.find_comment(answer, name, name, student).manual_comment = verdicts[grade_id].reason
    gb.db.commit()


def package_verdict(ex_id: str, score: int, most: int, reason: str) -> tuple[bool, str]:
    said = f"{VERDICT} {ex_id} {'PASS' if score == most else 'FAIL'}, {score}/{most} points, graded on a clean copy " \
           "of your submission"
    return score == most, said + (f" — {reason}" if reason else "")


def question_verdict(verdict: Verdict, most: float) -> tuple[bool, str]:
    said = f"{VERDICT} {verdict.score:g}/{most:g} points, checked by the grader on the values your notebook computed"
    return not verdict.reason, said + (f" — {verdict.reason}" if verdict.reason else "")


def verdict_lines(course: Path, name: str, graded: Graded, verdicts: dict[str, Verdict]) -> dict[str, tuple]:
    """grade id → (full marks?, what the grader says in that cell)."""
    source, points = _source(course, name), {ex.id: ex.points for ex in assignment_exercises(name)}
    lines = {gid: package_verdict(ex_id, graded.score(ex_id), points.get(ex_id, 0), graded.reason(ex_id))
             for gid, ex_id in package_cells(source).items()}
    for cell in source.cells:
        if is_question(cell):
            grade_id = cell.metadata.nbgrader["grade_id"]
            lines[grade_id] = question_verdict(verdicts[grade_id], cell.metadata.nbgrader.get("points", 0))
    return lines


def annotate(course: Path, name: str, student: str, lines: dict[str, tuple]) -> None:
    """Put the grader's verdict in place of each grade cell's output in the notebook the feedback is made from (what
    a kernel printed there proves nothing); when nbgrader could not run the notebook, write one first."""
    path = _autograded(course, student, name)
    nb = nbformat.read(path, as_version=4) if path.exists() else _stand_in(course, name, student)
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and grade_id in lines:
            ok, text = lines[grade_id]
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout" if ok else "stderr", text=text + "\n")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _stand_in(course: Path, name: str, student: str):
    """The notebook feedback is made from when nbgrader could not run a student's: theirs, unrun, with the course's
    own locked cells (the release's when theirs cannot be read)."""
    try:
        nb = nbformat.read(course / "submitted" / student / name / f"{name}.ipynb", as_version=4)
    except Exception:  # not a notebook at all
        nb = _released(course, name)
    locked = {c.metadata.nbgrader["grade_id"]: c for c in _source(course, name).cells
              if c.metadata.get("nbgrader", {}).get("locked")}
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in locked:
            cell.source, cell.metadata["nbgrader"] = locked[grade_id].source, dict(locked[grade_id].metadata.nbgrader)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def grade_class(course: Path, names: list[str], graded: dict[tuple[str, str], Graded],
                not_run: dict[tuple[str, str], str]) -> None:
    """The questions checked here, every score into the gradebook, every verdict into the feedback's notebook."""
    with gradebook(course) as gb:
        for name in names:
            for student in _submitted(course, name):
                result = graded.get((student, name), Graded(crash="it was not graded"))
                verdicts = question_verdicts(course, student, name, not_run.get((student, name), ""))
                record(gb, course, name, student, result, verdicts)
                annotate(course, name, student, verdict_lines(course, name, result, verdicts))


def simulate(course: Path) -> int:
    names = assignments()
    if course.exists():
        shutil.rmtree(course)
    new_course(course, names)
    expected = submit_class(course, names)
    collect(course, expected)
    with tempfile.TemporaryDirectory(prefix="llm101n-regrade-", dir=_scratch()) as tmp, \
            ThreadPoolExecutor(max_workers=2) as pool:
        regrades = start_regrades(pool, snapshot(course, names, list(expected), Path(tmp)))
        not_run = autograde(course, names)
        graded = {job: future.result() for job, future in regrades.items()}
    for (student, name), reason in sorted(not_run.items()):
        print(f"autograde {student}/{name}: not run to the end — {reason}")
    for (student, name), result in sorted(graded.items()):
        if result.crash:
            print(f"regrade {student}/{name}: 0 — {result.crash}")
    grade_class(course, names, graded, not_run)
    for name in names:
        nbgrader(course, "generate_feedback", name, "--force", ok=(0, 1))
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    return verify(course, names, expected)


def _points(name: str, passing: set[str]) -> float:
    total = sum(ex.points for ex in assignment_exercises(name) if ex.id in passing)
    if "questions" in passing:
        nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
        total += sum(c.metadata.nbgrader.get("points", 0) for c in nb.cells if is_question(c))
    return float(total)


def _feedback_says(feedback: Path, expected: Expected) -> bool:
    """The feedback exists, shows the grader's verdicts, and says why points were lost where that is expected."""
    if not feedback.exists():
        return False
    text = feedback.read_text(encoding="utf-8")
    return VERDICT in text and expected.says in text


def verify(course: Path, names: list[str], expected: dict[str, dict[str, Expected]]) -> int:
    with open(course / "grades.csv", newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    failures = 0
    print(f"{'student':<8} {'assignment':<18} {'score':>7} {'expected':>9} {'max':>6}  feedback")
    for student, per in expected.items():
        for name, want_ in per.items():
            row = rows.get((student, name))
            got = float(row["raw_score"]) if row else float("nan")
            want = _points(name, want_.passing)
            feedback = course / "feedback" / student / name / f"{name}.html"
            says = _feedback_says(feedback, want_)
            ok = abs(got - want) < 1e-6 and says
            failures += not ok
            print(f"{student:<8} {name:<18} {got:>7.1f} {want:>9.1f} {float(row['max_score']) if row else 0:>6.1f}"
                  f"  {'yes' if says else 'no'}  {'ok' if ok else 'MISMATCH'}")
    n = sum(len(per) for per in expected.values())
    print(f"class: {len(expected)} students, {len(names)} assignments, {n} submissions graded, {failures} mismatches")
    return 1 if failures else 0
