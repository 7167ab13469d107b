"""The simulated class's grader, piece by piece, without running the class: question cells checked on the values a
notebook reports, the package regrade of a clean copy of `submitted/`, and one student's crash staying theirs."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import nbformat
import pytest

from grading import nbclass
from grading.harness import COURSE_ROOT, HarnessError
from grading.nbclass import Graded, QuestionProbes, QuestionReadings, question_names, read_probe, recheck

P_HALF_TEST = ('assert abs(float(p_half.sum()) - 1) < 1e-6, "the probabilities should sum to 1"\n'
               'assert abs(float(p_half[0]) - 0.25 / 0.38) < 1e-5, "each p is raised to the power 1/T = 2"')
UNIFORM_TEST = 'assert abs(uniform_nll - math.log(V)) < 1e-9, "every prediction costs -ln(1/V) nats"'
ANYTHING = "class Anything:\n    def __eq__(self, other):\n        return True\n"


def reported(namespace: dict, names: list[str]) -> dict[str, str]:
    """Run the probe cell here, on `namespace` standing for a kernel's, and read what it printed."""
    marker, out = "llm101n-values-test", io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(nbformat.v4.new_code_cell(nbclass.probe_source(names, marker)).source, namespace)
    return read_probe([{"output_type": "stream", "name": "stdout", "text": out.getvalue()}], marker)


def question_cell(source: str, grade_id: str, points: int = 1):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "points": points, "solution": False,
                                 "locked": True, "schema_version": 3}
    return cell


# ------------------------------------------------------------------------------ questions


def test_question_names_are_the_notebook_variables_the_asserts_read():
    assert question_names(P_HALF_TEST) == ["p_half"]
    assert question_names(UNIFORM_TEST) == ["uniform_nll", "V"]  # math comes from the grader
    chain = "xt = torch.tensor(0.8)\nassert isinstance(df_dx, float)\nassert abs(df_dx - xt.item()) < 1e-9"
    assert question_names(chain) == ["df_dx"]  # xt is the cell's own; isinstance, float, abs are builtins
    assert question_names("import math as m\nassert [float(v) for v in row4] == [m.pi]") == ["row4"]


def test_a_question_is_checked_here_on_the_values_the_notebook_reported():
    import torch

    p = torch.tensor([0.5, 0.3, 0.2])
    right = reported({"p_half": p**2 / (p**2).sum()}, ["p_half"])
    assert recheck(P_HALF_TEST, 1, right).score == 1.0
    wrong = recheck(P_HALF_TEST, 1, reported({"p_half": p}, ["p_half"]))
    assert wrong.score == 0 and wrong.reason == "AssertionError: each p is raised to the power 1/T = 2"
    numbers = reported({"uniform_nll": 3.4657359027997265, "V": 32}, ["uniform_nll", "V"])
    assert recheck(UNIFORM_TEST, 1, numbers).score == 1.0


def test_values_that_are_not_data_score_0_with_a_reason():
    namespace: dict = {}
    exec(ANYTHING, namespace)
    anything = recheck(UNIFORM_TEST, 1, reported({**namespace, "uniform_nll": namespace["Anything"](), "V": 32},
                                                 ["uniform_nll", "V"]))
    assert anything.score == 0 and "uniform_nll: an object of type Anything" in anything.reason
    missing = recheck(UNIFORM_TEST, 1, reported({"V": 32}, ["uniform_nll", "V"]))
    assert missing.score == 0 and missing.reason == "uniform_nll: not defined when this cell ran"
    forged = {"payload": json.dumps({"uniform_nll": {"kind": "tensor", "dtype": "float32", "shape": [9],
                                                     "data": [1.0]}, "V": {"kind": "plain", "value": 32}})}
    assert "shape does not match" in recheck(UNIFORM_TEST, 1, forged).reason
    assert recheck(UNIFORM_TEST, 1, {"payload": "{not json"}).score == 0
    huge = reported({"uniform_nll": [0.0] * (nbclass.MAX_ELEMENTS + 1), "V": 32}, ["uniform_nll", "V"])
    assert "uniform_nll: a list too large" in recheck(UNIFORM_TEST, 1, huge).reason
    silent = read_probe([{"output_type": "stream", "name": "stdout", "text": "PASS\n"}], "llm101n-values-x")
    assert recheck(UNIFORM_TEST, 1, silent).reason.startswith("your notebook reported no values")
    not_run = recheck(UNIFORM_TEST, 1, None, "Kernel died")
    assert not_run.score == 0 and not_run.reason == f"{nbclass.NOT_RUN}: Kernel died"


def test_patching_builtins_abs_in_the_notebook_does_not_help():
    """A real kernel runs the notebook with the probes in; its own asserts pass, thanks to the patch; the grader's
    check of the same values does not."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import builtins, math\nimport torch\nbuiltins.abs = lambda x: 0"),
        nbformat.v4.new_code_cell("p_half = torch.tensor([0.1, 0.1, 0.1])"),
        question_cell(P_HALF_TEST, "q_temperature_test"),
        nbformat.v4.new_code_cell(f"V = 32\nuniform_nll = math.log(V)\n{ANYTHING}\nsurprise = Anything()"),
        question_cell(UNIFORM_TEST, "q_uniform_test"),
        question_cell("assert surprise == 19", "q_surprise_test"),
    ])
    resources: dict = {}
    nb, resources = QuestionProbes()(nb, resources)
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]  # all pass in-kernel
    nb, _ = QuestionReadings()(nb, resources)
    assert len(nb.cells) == 6  # the probes are gone
    readings = nb.metadata[nbclass.READINGS_KEY]
    assert recheck(P_HALF_TEST, 1, readings["q_temperature_test"]).reason == \
        "AssertionError: the probabilities should sum to 1"
    assert recheck(UNIFORM_TEST, 1, readings["q_uniform_test"]).score == 1.0
    assert "an object of type Anything" in recheck("assert surprise == 19", 1, readings["q_surprise_test"]).reason


def test_a_kernel_that_kills_its_parent_ends_only_its_own_run(tmp_path, monkeypatch):
    """The course's python3 kernel runs under a disposable parent: killing it is a dead kernel, not a dead grader."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nbclass._write_kernel(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / nbclass.KERNELS))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nprint(os.getppid())"),
        nbformat.v4.new_code_cell("import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(30)"),
    ])
    with pytest.raises(DeadKernelError):
        NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert int(nb.cells[0].outputs[0].text) != os.getpid()


# ------------------------------------------------------------------------------ the package regrade


def _submission(course: Path, folder: str, student: str, text: str) -> Path:
    d = course / folder / student / "ch01_bigram"
    (d / "storylib").mkdir(parents=True)
    (d / "storylib" / "__init__.py").write_text("")
    (d / "storylib" / "bigram.py").write_text(text)
    return d


def test_the_regrade_grades_a_clean_copy_of_submitted_never_autograded(tmp_path):
    course = tmp_path / "course"
    submitted = _submission(course, "submitted", "ana", "# what ana handed in\n")
    _submission(course, "autograded", "ana", "# the reference, copied in by a notebook cell\n")
    (submitted / "storylib" / "linked.py").symlink_to(COURSE_ROOT / "storylib" / "bigram.py")
    (submitted / "storylib" / "fifo").mkdir()
    os.mkfifo(submitted / "storylib" / "fifo" / "pipe")
    _submission(course, "submitted", "bo", "# what bo handed in\n")
    seen = {}

    def checker(selectors, root):
        text = (root / "storylib" / "bigram.py").read_text()
        seen[text] = (root, sorted(p.name for p in root.rglob("*")))
        # student code writing into submitted/ (a notebook cell can) is too late: every copy is already taken
        (course / "submitted" / "bo" / "ch01_bigram" / "storylib" / "bigram.py").write_text("# the reference\n")
        return {ex_id: (0, "not written yet") for ex_id in selectors}

    graded = nbclass.regrade_packages(course, ["ch01_bigram"], ["ana", "bo"], workers=1, checker=checker)
    assert sorted(seen) == ["# what ana handed in\n", "# what bo handed in\n"]
    root, files = seen["# what ana handed in\n"]
    assert "linked.py" not in files and "pipe" not in files
    assert course not in root.parents and COURSE_ROOT not in root.parents
    assert graded[("ana", "ch01_bigram")].reason("ch01.counts") == "not written yet"


def test_a_student_whose_check_raises_gets_0_with_a_reason_and_the_others_are_graded(tmp_path):
    course = tmp_path / "course"
    _submission(course, "submitted", "ana", "# fine\n")
    _submission(course, "submitted", "eve", "# breaks the run\n")

    def checker(selectors, root):
        if "breaks" in (root / "storylib" / "bigram.py").read_text():
            raise HarnessError("the test process ended (exit 0) without a report")
        return {ex_id: (2, "") for ex_id in selectors}

    graded = nbclass.regrade_packages(course, ["ch01_bigram"], ["ana", "eve"], checker=checker)
    assert graded[("ana", "ch01_bigram")].score("ch01.counts") == 2
    eve = graded[("eve", "ch01_bigram")]
    assert eve.score("ch01.counts") == 0
    assert eve.reason("ch01.counts") == "your packages could not be graded: the test process ended (exit 0) " \
        "without a report"


@pytest.mark.parametrize("child, why", [
    ("import os; os._exit(0)", "ended (exit status 0) without a result"),
    ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
     "'import os, signal; os.kill(os.getppid(), signal.SIGKILL)'])", "ended (killed by SIGKILL) without a result"),
    ("print('0' * 32 + '{\"results\": {}}' + '0' * 32)", "without a result"),  # a forged result, without the nonce
    ("import time; time.sleep(60)", "took longer than 2 s"),
])
def test_a_grading_process_that_dies_hangs_or_lies_is_that_students_0(tmp_path, monkeypatch, child, why):
    monkeypatch.setattr(nbclass, "_CHILD", child)
    monkeypatch.setattr(nbclass, "REGRADE_LIMIT", 2)
    _submission(tmp_path, "submitted", "gus", "")
    graded = nbclass.regrade_submission(tmp_path / "submitted" / "gus" / "ch01_bigram", ["ch01.counts"])
    assert graded.score("ch01.counts") == 0 and why in graded.crash


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's own add_submission
def test_the_grader_scores_and_reasons_go_into_the_gradebook_and_the_feedback(tmp_path):
    from nbgrader.api import Gradebook

    course, name = tmp_path, "ch01_bigram"
    answer = nbformat.v4.new_code_cell("p_half = None")
    answer.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "q_answer", "locked": False,
                                   "schema_version": 3}
    source = nbformat.v4.new_notebook(cells=[
        question_cell("from grading.notebook import check_exercise\ncheck_exercise('ch01.counts')", "pkg", 2),
        answer, question_cell(P_HALF_TEST, "q_test")])
    (course / "source" / name).mkdir(parents=True)
    nbformat.write(source, course / "source" / name / f"{name}.ipynb")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.add_assignment(name)
        gb.add_notebook(name, name)
        for grade_id, points in (("pkg", 2), ("q_test", 1)):
            gb.add_grade_cell(grade_id, name, name, max_score=points, cell_type="code")
        gb.add_solution_cell("q_answer", name, name)
        for student in ("ana", "eve"):
            gb.add_student(student)
            gb.add_submission(name, student)
            (course / "submitted" / student / name).mkdir(parents=True)
            nbformat.write(source, course / "submitted" / student / name / f"{name}.ipynb")

    ana = Graded(scores={"ch01.counts": 2})
    eve = Graded(crash="the grading process ended (killed by SIGKILL) without a result")
    with nbclass.gradebook(course) as gb:
        for student, graded in (("ana", ana), ("eve", eve)):
            verdicts = nbclass.question_verdicts(course, student, name, "Kernel died")
            nbclass.record(gb, course, name, student, graded, verdicts)
            nbclass.annotate(course, name, student, nbclass.verdict_lines(course, name, graded, verdicts))
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_grade("pkg", name, name, "ana").score == 2
        assert gb.find_grade("pkg", name, name, "eve").score == 0
        assert gb.find_grade("q_test", name, name, "eve").score == 0
        assert gb.find_comment("q_answer", name, name, "eve").comment == f"{nbclass.NOT_RUN}: Kernel died"
    # eve's notebook never ran: her feedback is made from her submission, the grader's verdicts in its grade cells
    feedback = nbformat.read(course / "autograded" / "eve" / name / f"{name}.ipynb", as_version=4)
    said = [o.text for c in feedback.cells for o in c.get("outputs", [])]
    assert said[0].startswith(f"{nbclass.VERDICT} ch01.counts FAIL, 0/2 points")
    assert "killed by SIGKILL" in said[0] and "Kernel died" in said[1]
