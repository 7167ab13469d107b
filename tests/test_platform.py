"""The course platform: exercise markers, the learner edition, and a grader that tells the truth."""

from __future__ import annotations

import ast
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grading.exercises import MarkerError, discover, is_stubbed, parse_source, source_files, stub_text
from grading.harness import COURSE_ROOT, check, run_tests
from grading.release import release

ROOT = COURSE_ROOT
EXERCISES = discover(ROOT)
CHAPTERS = sorted({ex.chapter for ex in EXERCISES})


def test_course_has_exercises_in_chapters_1_and_2():
    assert sum(ex.chapter == "ch01" for ex in EXERCISES) >= 5
    assert sum(ex.chapter == "ch02" for ex in EXERCISES) >= 5


@pytest.mark.parametrize(
    "text, problem",
    [
        ("    ### BEGIN SOLUTION ch01.x\n    pass\n    ### END SOLUTION\n", "malformed"),
        ("    ### BEGIN SOLUTION ch01.x (§1.1, 1 pts): h\n    pass\n", "never closed"),
        ("    pass\n    ### END SOLUTION\n", "without BEGIN"),
        ("  ### BEGIN SOLUTION ch01.x (§1.1, 1 pts): h\n  ### BEGIN SOLUTION ch01.y (§1.1, 1 pts): h\n", "inside"),
        ("    ### BEGIN SOLUTION ch01.x (§1.1, 1 pts): h\n    pass\n        ### END SOLUTION\n", "indented"),
    ],
)
def test_malformed_markers_are_rejected(text, problem):
    with pytest.raises(MarkerError, match=problem):
        parse_source(text, Path("storylib/x.py"))


def test_stub_keeps_markers_and_replaces_only_the_region():
    src = (
        "def f(x):\n    '''doc'''\n    y = 1\n"
        "    ### BEGIN SOLUTION ch09.f (§9.2, 3 pts): add y\n    return x + y\n    ### END SOLUTION\n"
    )
    out = stub_text(src, Path("storylib/f.py"))
    assert out.splitlines()[:4] == src.splitlines()[:4]
    assert out.splitlines()[4] == "    raise NotImplementedError('ch09.f: add y — see book §9.2')"
    assert out.splitlines()[5] == "    ### END SOLUTION"
    (ex,) = parse_source(out, Path("storylib/f.py"))
    assert is_stubbed(out, ex) and not is_stubbed(src, parse_source(src, Path("storylib/f.py"))[0])


@pytest.mark.parametrize("rel", source_files(ROOT), ids=str)
def test_every_stubbed_module_still_compiles(rel):
    ast.parse(stub_text((ROOT / rel).read_text(encoding="utf-8"), rel))


@pytest.fixture(scope="module")
def learner(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("learner")
    release(dest)
    return dest


def test_release_differs_from_reference_only_inside_regions(learner):
    for rel in source_files(ROOT):
        ref = (ROOT / rel).read_text(encoding="utf-8")
        out = (learner / rel).read_text(encoding="utf-8")
        assert out == stub_text(ref, rel), f"{rel} differs outside its exercise regions"
        for ex in parse_source(out, rel):
            assert is_stubbed(out, ex), f"{ex.id} still holds reference code in the learner edition"
    names = {p.name for p in learner.glob("*.ipynb")}
    assert names == {p.name for p in (ROOT / "exercises").glob("*.ipynb")} | {"storyteller.ipynb"} and names
    assert {p.name for p in (learner / "tests").glob("test_*.py")} == {
        p.name for p in (ROOT / "grading" / "tests").glob("test_*.py")
    }


def test_the_workspace_storyteller_page_speaks_to_the_workspace(learner):
    """The book's chat page says that no Python runs there; its workspace copy runs, and says so."""
    book = (ROOT / "book" / "storyteller.ipynb").read_text(encoding="utf-8")
    mine = nbformat.read(learner / "storyteller.ipynb", as_version=4)
    text = "\n".join(c.source for c in mine.cells)
    assert "no Python runs" in book and "no Python runs" not in text
    assert "You are in your workspace" in text and "StoryChat(illustrate=True)" in text
    assert not any({"remove-cell", "book-only"} & set(c.metadata.get("tags", [])) for c in mine.cells)


def test_the_course_jupyterlab_never_asks_about_jupyter_news(tmp_path):
    """`llm101n start` puts the course's Lab defaults where its JupyterLab reads them, keeping other overrides."""
    from jupyterlab.labapp import LabApp
    from jupyterlab_server.settings_utils import _get_overrides

    from llm101n import cli

    lab = LabApp()
    assert cli.lab_settings_dir() == Path(lab.app_settings_dir), "the folder the course's JupyterLab reads"
    settings = tmp_path / "settings"
    settings.mkdir()
    theme = {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}
    (settings / "overrides.json").write_text(json.dumps(theme))
    cli.install_lab_overrides(settings)
    overrides, error = _get_overrides(str(settings))  # what JupyterLab's settings handler serves
    assert not error and overrides["@jupyterlab/apputils-extension:themes"] == theme[
        "@jupyterlab/apputils-extension:themes"]
    news = overrides["@jupyterlab/apputils-extension:notification"]
    assert news["fetchNews"] == "false", "no 'Would you like to get notified about official Jupyter news?' toast"
    schema = json.loads((Path(lab.schemas_dir) / "@jupyterlab" / "apputils-extension" / "notification.json")
                        .read_text())
    assert set(news) <= set(schema["properties"]) and "false" in {
        o["const"] for o in schema["properties"]["fetchNews"]["oneOf"]}


def test_release_never_overwrites_a_learners_work(learner):
    mine = learner / "storylib" / "bigram.py"
    mine.write_text(mine.read_text() + "\n# my notes\n")
    with pytest.raises(FileExistsError):
        release(learner)
    release(learner, update=True)
    assert mine.read_text().endswith("# my notes\n")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_learner_edition_scores_zero_and_reference_scores_full(learner, chapter):
    stub = check([chapter], learner)
    assert stub.points == 0 and all(r.tests for r in stub.results)
    ref = check([chapter], ROOT)
    assert ref.points == ref.possible > 0, ref.table()


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the grader's workers and their sandboxes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def test_check_is_fast_enough_for_a_chapter():
    # CPU seconds, not wall-clock: on a busy machine the wall clock measures the neighbours, not the grader
    start = _cpu_seconds()
    report = check(["ch01"], ROOT)
    assert report.results and _cpu_seconds() - start < 10


def _hostile_workspace(dest: Path) -> Path:
    """A learner folder full of things that would make stubs look like passes if the grader trusted them."""
    release(dest)
    (dest / "conftest.py").write_text(
        "import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
        "    out = yield\n    rep = out.get_result()\n    rep.outcome = 'passed'\n"
    )
    (dest / "pytest.ini").write_text("[pytest]\naddopts = -k nothing_matches\n")
    (dest / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-k nothing_matches'\n")
    (dest / "pytest.py").write_text("import sys\nprint('1000 passed')\nsys.exit(0)\n")
    (dest / "grading").mkdir()
    (dest / "grading" / "__init__.py").write_text("")
    (dest / "grading" / "plugin.py").write_text("raise SystemExit(0)\n")
    (dest / "_llm101n_grader").mkdir()
    (dest / "_llm101n_grader" / "plugin.py").write_text("raise SystemExit(0)\n")
    (dest / "storylib" / "conftest.py").write_text((dest / "conftest.py").read_text())
    (dest / "tests" / "conftest.py").write_text((dest / "conftest.py").read_text())
    return dest


def test_hostile_workspace_cannot_fake_a_pass(tmp_path, monkeypatch):
    root = _hostile_workspace(tmp_path / "eve")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-k nothing_matches")
    monkeypatch.setenv("PYTEST_PLUGINS", "grading.plugin")
    report = check(["ch01"], root)
    assert report.points == 0
    assert all(r.tests and all(t.outcome == "failed" for t in r.tests) for r in report.results)
    assert "not written yet" in report.results[0].first_failure


def test_a_crashing_storylib_is_the_learners_zero_with_a_reason(tmp_path):
    release(tmp_path)
    init = tmp_path / "storylib" / "__init__.py"
    init.write_text("import os\nos._exit(3)\n")
    report = check(["ch01"], tmp_path)
    assert report.points == 0 and all(not r.passed for r in report.results)
    assert "exit code 3" in report.results[0].first_failure, report.results[0].first_failure


def test_checks_never_grade_the_reference_by_mistake(tmp_path):
    (tmp_path / "storylib").mkdir()  # no __init__.py: the worker must not fall back to the course's storylib
    run = run_tests(tmp_path, ["ch01"])
    assert run.tests and not any(t.outcome == "passed" for t in run.tests)


def test_cli_check_prints_a_table_and_exit_code(learner):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STORYLIB_ROOT")}
    llm = [sys.executable, "-m", "llm101n.cli"]
    out = subprocess.run([*llm, "check", "ch01"], cwd=learner, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "ch01." in out.stdout and "FAIL" in out.stdout and "total 0/" in out.stdout
    out = subprocess.run([*llm, "check", "ch01", "--root", str(ROOT)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "FAIL" not in out.stdout, out.stdout + out.stderr
    out = subprocess.run([*llm, "check", "chapter1"], cwd=learner, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "not a chapter or exercise id" in out.stderr


def test_a_learner_solution_is_graded_as_theirs(learner, tmp_path):
    """Copy the reference region of one exercise into a learner edition: exactly that one passes."""
    root = tmp_path / "one"
    shutil.copytree(learner, root)
    ex = next(e for e in EXERCISES if e.chapter == "ch01")
    ref = (ROOT / ex.path).read_text(encoding="utf-8")
    others = [e.id for e in parse_source(ref, ex.path) if e.id != ex.id]
    (root / ex.path).write_text(stub_text(ref, ex.path, others), encoding="utf-8")
    report = check(["ch01"], root)
    assert [r.exercise.id for r in report.results if r.passed] == [ex.id]


def test_notebook_builders_are_deterministic_and_the_check_names_a_stale_notebook(tmp_path):
    """Every builder gives the same bytes twice; after a build the check is clean, and it names the one notebook
    edited by hand and a solutions notebook without a builder."""
    from grading import authoring

    scratch, course = tmp_path / "scratch", tmp_path / "course"
    scratch.mkdir()
    written = authoring.build(scratch)
    assert {"solutions/ch01_bigram.ipynb", "book/ch08_device.ipynb", "book/ch12_kvcache.ipynb"} <= {
        p.as_posix() for p in written}
    assert authoring.sync(course) == (written, [])  # an empty course: every notebook is written
    assert all((course / p).read_bytes() == (scratch / p).read_bytes() for p in written)
    assert authoring.sync(course, check_only=True) == ([], [])
    edited = course / "solutions" / "ch01_bigram.ipynb"
    edited.write_text(edited.read_text(encoding="utf-8").replace("import", "# import", 1), encoding="utf-8")
    shutil.copy(edited, course / "solutions" / "ch99_orphan.ipynb")
    assert authoring.sync(course, check_only=True) == ([Path("solutions/ch01_bigram.ipynb")],
                                                       [Path("solutions/ch99_orphan.ipynb")])


SHIM_KERNEL = """
import numpy as np
from numba import float32
from cuda_labs._compat import SIMULATOR, cuda

@cuda.jit
def kernel(out):
    a = cuda.shared.array(32, dtype=float32, alignment=16)
    b = cuda.shared.array(32, dtype=float32)
    r = cuda.local.array(2, dtype=float32, alignment=16)
    i = cuda.threadIdx.x
    a[i], b[i] = i, 2 * i
    cuda.syncthreads()
    r[0] = a[31 - i] + b[i]
    out[i] = r[0] + cuda.shfl_down_sync(0xFFFFFFFF, float32(i), 1)

out = np.zeros(32, np.float32)
kernel[1, 32](out)
print(SIMULATOR, out.astype(int).tolist())
"""


def test_the_cuda_simulator_takes_what_the_gpu_takes():
    """cuda_labs._compat on whichever simulator is installed (numba's or numba-cuda's): `alignment=` accepted, two
    shared arrays of one kernel apart, warp shuffles (a lane past the warp keeps its own value, as on a GPU)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, "-c", SHIM_KERNEL], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    want = [31 + i + (i + 1 if i < 31 else i) for i in range(32)]
    assert done.stdout.split()[0] == "True" and done.stdout.split(" ", 1)[1].strip() == str(want)


@pytest.mark.skipif(os.path.exists("/dev/nvidiactl"), reason="this machine has an NVIDIA driver")
def test_without_a_usable_gpu_both_processes_run_the_labs_on_the_simulator(monkeypatch, tmp_path):
    """The grader asks numba in a child even where a driver's device file is there; no usable GPU: the simulator,
    told to the trusted tests and to the learner's worker alike (their SIMULATOR must agree)."""
    from grading import harness

    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidiactl" or real_exists(p))
    assert harness.gpu_name.__wrapped__() is None
    assert harness.lab_device() == harness.lab_device(simulator=True) == harness.SIMULATOR
    for device, flag in ((harness.SIMULATOR, "1"), ("NVIDIA H100 80GB HBM3", "0"), ("", "1")):
        assert harness.clean_env(tmp_path, device)["NUMBA_ENABLE_CUDASIM"] == flag
        assert harness.worker_env(tmp_path, device)["NUMBA_ENABLE_CUDASIM"] == flag


def test_the_report_says_where_the_lab_kernels_ran():
    report = check(["lab01.map"], ROOT, simulator=True)
    assert report["lab01.map"].passed and report.device == "CUDA simulator"
    assert "cuda_labs kernels on: CUDA simulator" in report.table()
