"""nbgrader: release the exercise notebooks, and grade a simulated class end to end.

    llm101n exercises [--check]   # solutions/*.ipynb → exercises/*.ipynb (nbgrader generate_assignment)
    llm101n class DIR             # generate → submit (5 students) → autograde → feedback → export

The class has five students whose expected marks follow from the exercise registry (ada, bo and cy hand in
every assignment; dee and eve, whose tests do not depend on the chapter, three of them):
ada hands in the reference (full marks); bo hands in the release untouched (0); cy finished the other
chapters and wrote the first half of this chapter's package exercises (their points); dee's notebook
kills its kernel (0, and the others are still graded); eve is hostile — stubs, a conftest.py/pytest.ini/
grading/ that would fake passing tests, and a cell that monkeypatches the checker in the kernel (0).

A submission is sanitised when collected (only notebooks and the `.py` files of the course packages
are kept), and after nbgrader's autograde the package exercises are graded again out of process with
`grading.harness` from pristine tests: that score, written as nbgrader's manual score, is the one
that counts, so nothing a student's kernel does can award package points.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from grading.exercises import PACKAGES, discover, stub_text
from grading.harness import COURSE_ROOT, check
from grading.release import stub_package

SOLUTIONS = COURSE_ROOT / "solutions"
EXERCISES = COURSE_ROOT / "exercises"
_CHECK_CALL = re.compile(r"check_exercise\(['\"]((?:ch|lab)\d\d\.[a-z0-9_]+)['\"]\)")
CONFIG = """c = get_config()
c.CourseDirectory.course_id = "llm101n"
c.ExecutePreprocessor.timeout = 300
c.Execute.timeout = 300
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
"""


def assignments() -> list[str]:
    return sorted(p.stem for p in SOLUTIONS.glob("ch*.ipynb")) + sorted(p.stem for p in SOLUTIONS.glob("lab*.ipynb"))


def _env() -> dict[str, str]:
    """nbgrader's environment: the venv's bin first (nbgrader calls alembic), no path to the reference."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def nbgrader(course: Path, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=_env(),
                          capture_output=True, text=True)
    if proc.returncode not in ok:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def new_course(course: Path, names: list[str]) -> None:
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(CONFIG)
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
    return [ex for ex in discover(COURSE_ROOT) if f"ch{ex.section.split('.')[0].zfill(2)}" == chapter]


def ungraded(name: str) -> list[str]:
    """Exercises of the assignment's chapter that its source notebook has no single autograder cell for."""
    nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    calls = [m.group(1) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
             for m in _CHECK_CALL.finditer(c.source)]
    return [ex.id for ex in assignment_exercises(name) if calls.count(ex.id) != 1]


# ------------------------------------------------------------------------------ the class


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
    """The assignments dee and eve hand in: what they test (a dying kernel, a hostile submission) does not depend on
    the chapter, so the first, the last and the cuda_labs one (the other package) are enough."""
    return sorted({names[0], names[-1], *[n for n in names if any(e.path.parts[0] == "cuda_labs"
                                                                    for e in assignment_exercises(n))][:1]})


def submit_class(course: Path, names: list[str]) -> dict[str, dict[str, set[str]]]:
    """Write the submissions; return, per student and assignment handed in, the exercises that should pass."""
    expected: dict[str, dict[str, set[str]]] = {}
    for student in ("ada", "bo", "cy", "dee", "eve"):
        expected[student] = {}
        for name in names if student in ("ada", "bo", "cy") else _sample(names):
            d = course / "submitted" / student / name
            d.mkdir(parents=True, exist_ok=True)
            released = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
            every = {ex.id for ex in assignment_exercises(name)}
            if student == "ada":
                shutil.copy(SOLUTIONS / f"{name}.ipynb", d / f"{name}.ipynb")
                _copy_packages(d, stub=False)
                expected[student][name] = every | {"questions"}
            elif student == "bo":
                nbformat.write(released, d / f"{name}.ipynb")
                _copy_packages(d, stub=True)
                expected[student][name] = set()
            elif student == "cy":
                nbformat.write(released, d / f"{name}.ipynb")
                _copy_packages(d, stub=True, implemented=_half(name) | _all_but(name))
                expected[student][name] = _half(name)
            elif student == "dee":
                killer = nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
                solved = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
                solved.cells.insert(1, killer)
                nbformat.write(solved, d / f"{name}.ipynb")
                _copy_packages(d, stub=False)
                expected[student][name] = set()
            else:  # eve: stubs, and everything that would fake a pass
                cheat = nbformat.v4.new_code_cell(
                    "import grading.notebook as _g\n_g.check_exercise = lambda *a, **k: print('PASS')"
                )
                released.cells.insert(1, cheat)
                nbformat.write(released, d / f"{name}.ipynb")
                _copy_packages(d, stub=True)
                (d / "conftest.py").write_text("def pytest_runtest_makereport(item, call):\n    call.excinfo = None\n")
                (d / "pytest.ini").write_text("[pytest]\naddopts = -p no:python\n")
                (d / "grading").mkdir()
                (d / "grading" / "__init__.py").write_text("")
                (d / "grading" / "notebook.py").write_text("def check_exercise(*a, **k):\n    print('PASS')\n")
                (d / "storylib" / "conftest.py").write_text("import pytest\n")
                expected[student][name] = set()
            (d / "timestamp.txt").write_text("2026-11-25 12:00:00.000000 UTC")
    return expected


def regrade_packages(course: Path, names: list[str], students: list[str],
                     workers: int = 2) -> dict[tuple[str, str], dict[str, int]]:
    """Grade each student's packages out of process (`workers` at a time) and write the scores into nbgrader's
    gradebook (from this thread only)."""
    from concurrent.futures import ThreadPoolExecutor

    from nbgrader.api import Gradebook, MissingEntry

    jobs = [(student, name) for name in names for student in students
            if (course / "autograded" / student / name / f"{name}.ipynb").exists()]

    def grade(job: tuple[str, str]) -> dict[str, int]:
        student, name = job
        report = check([ex.id for ex in assignment_exercises(name)], root=course / "autograded" / student / name)
        return {r.exercise.id: r.score for r in report.results}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        scores = dict(zip(jobs, pool.map(grade, jobs), strict=True))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name in names:
            source = nbformat.read(course / "source" / name / f"{name}.ipynb", as_version=4)
            cells = {c.metadata.nbgrader["grade_id"]: m.group(1) for c in source.cells
                     if c.metadata.get("nbgrader", {}).get("grade") and (m := _CHECK_CALL.search(c.source))}
            for student in students:
                if (student, name) not in scores:
                    continue
                for grade_id, ex_id in cells.items():
                    try:
                        grade_ = gb.find_grade(grade_id, name, name, student)
                    except MissingEntry:
                        continue
                    grade_.manual_score = float(scores[(student, name)][ex_id])
                gb.db.commit()
    return scores


def simulate(course: Path) -> int:
    names = assignments()
    if course.exists():
        shutil.rmtree(course)
    new_course(course, names)
    expected = submit_class(course, names)
    for student, per in expected.items():
        for name in per:
            removed = sanitise(course / "submitted" / student / name)
            if removed:
                print(f"collect {student}/{name}: removed {', '.join(removed)}")
    for name in names:
        # nbgrader exits 1 when a student's kernel dies; every other student is still graded.
        nbgrader(course, "autograde", name, "--force", ok=(0, 1))
    regrade_packages(course, names, list(expected))
    for name in names:
        nbgrader(course, "generate_feedback", name, "--force", ok=(0, 1))
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    return verify(course, names, expected)


def _points(name: str, passing: set[str]) -> float:
    total = sum(ex.points for ex in assignment_exercises(name) if ex.id in passing)
    if "questions" in passing:
        nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
        total += sum(c.metadata.nbgrader.get("points", 0) for c in nb.cells
                     if c.metadata.get("nbgrader", {}).get("grade") and not _CHECK_CALL.search(c.source))
    return float(total)


def verify(course: Path, names: list[str], expected: dict[str, dict[str, set[str]]]) -> int:
    with open(course / "grades.csv", newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    failures = 0
    print(f"{'student':<8} {'assignment':<18} {'score':>7} {'expected':>9} {'max':>6}  feedback")
    for student, per in expected.items():
        for name in per:
            row = rows.get((student, name))
            got = float(row["raw_score"]) if row else float("nan")
            want = _points(name, per[name])
            feedback = course / "feedback" / student / name / f"{name}.html"
            ok = abs(got - want) < 1e-6 and (student == "dee" or feedback.exists())
            failures += not ok
            print(f"{student:<8} {name:<18} {got:>7.1f} {want:>9.1f} {float(row['max_score']) if row else 0:>6.1f}"
                  f"  {'yes' if feedback.exists() else 'no'}  {'ok' if ok else 'MISMATCH'}")
    n = sum(len(per) for per in expected.values())
    print(f"class: {len(expected)} students, {len(names)} assignments, {n} submissions graded, {failures} mismatches")
    return 1 if failures else 0
