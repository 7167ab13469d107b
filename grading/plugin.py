"""The pytest plugin that the grading harness loads explicitly.

The harness copies this file and exercises.py into a private package in its temporary folder, ahead
of the learner's folder on PYTHONPATH, so a learner's own `grading/` cannot stand in for it.

- `@pytest.mark.exercise("ch01.counts")` ties a test to one exercise; `--exercise SELECTOR` keeps only
  the tests of matching exercises (`ch01` or `ch01.counts`).
- `--worker-config FILE` (JSON, written by the harness) puts the learner's code behind a process boundary:
  `storylib` and `cuda_labs` are imported from a sandboxed worker process (grading/remote.py), so nothing
  the learner writes runs in this process. Without it (the course's own unit run) storylib is imported
  directly.
- `--seed S` salts every seed the tests set (grading/seeds.py): fresh inputs at grading time.
- `--report-json FILE` writes one record per collected test: the harness reads results from there. A test
  that was collected but never reported (the run stopped early) is recorded as failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

try:
    from .exercises import matches
except ImportError:  # imported as grading.plugin
    from grading.exercises import matches

_records: list[dict] = []
_conn = None  # the Connection to the learner's worker, when there is one


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm101n")
    group.addoption("--exercise", action="append", default=[], help="keep only tests of these exercises")
    group.addoption("--report-json", default=None, help="write per-test results here")
    group.addoption("--worker-config", default=None, help="run the learner's code in this worker (JSON)")
    group.addoption("--seed", type=int, default=0, help="salt every seed the tests set (0: the public seeds)")


def pytest_configure(config: pytest.Config) -> None:
    global _conn
    config.addinivalue_line("markers", "exercise(id): the exercise a test grades, e.g. exercise('ch01.counts')")
    if config.getoption("--seed", 0):
        try:
            from .seeds import install
        except ImportError:
            from grading.seeds import install
        install(config.getoption("--seed"))
    path = config.getoption("--worker-config", None)
    if path:
        try:
            from .launch import connect
        except ImportError:
            from grading.launch import connect
        _conn = connect(json.loads(Path(path).read_text()))
        config.llm101n_worker = _conn  # for the tests' `worker` fixture (grading/tests/conftest.py)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    # One deadline for the whole test (set-up, call, teardown), enforced while waiting for the worker.
    if _conn is not None:
        timeout = item.config.getoption("--timeout", None) or 60
        _conn.timeout_s = float(timeout)
        _conn.deadline = time.monotonic() + float(timeout)
    yield
    if _conn is not None:
        _conn.deadline = None


def exercise_of(item: pytest.Item) -> str | None:
    marks = list(item.iter_markers("exercise"))
    if not marks:
        return None
    if len(marks) > 1 or len(marks[0].args) != 1:
        raise pytest.UsageError(f"{item.nodeid}: a test grades exactly one exercise")
    return str(marks[0].args[0])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selectors: list[str] = config.getoption("--exercise")
    if not selectors:
        return
    keep, drop = [], []
    for item in items:
        ex = exercise_of(item)
        (keep if ex is not None and any(matches(ex, s) for s in selectors) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    if isinstance(report.longrepr, tuple):  # skip: (file, line, reason)
        return str(report.longrepr[2])
    return str(report.longrepr or "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # One record per test: the first non-passing phase wins; a pass is recorded at "call".
    if report.when == "call" or report.outcome != "passed":
        if any(r["nodeid"] == report.nodeid for r in _records):
            return
        _records.append(
            {
                "nodeid": report.nodeid,
                "outcome": "failed" if report.outcome == "failed" else report.outcome,
                "when": report.when,
                "message": "" if report.outcome == "passed" else _message(report),
                "duration": round(report.duration, 4),
            }
        )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _records.append(
            {"nodeid": report.nodeid, "outcome": "error", "when": "collect", "message": _message(report),
             "duration": 0.0}
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--report-json")
    if path is None:
        return
    if _conn is not None:
        _conn.close()
    exercises = {item.nodeid: exercise_of(item) for item in session.items}
    reported = {r["nodeid"] for r in _records}
    for nodeid in exercises:  # collected but never reported: the run stopped before it, which is no pass
        if nodeid not in reported:
            _records.append({"nodeid": nodeid, "outcome": "failed", "when": "never",
                             "message": "did not run (the test run stopped before it)", "duration": 0.0})
    for record in _records:
        record["exercise"] = exercises.get(record["nodeid"])
    Path(path).write_text(
        json.dumps({"finished": time.time(), "exitstatus": int(exitstatus), "tests": _records}, indent=1)
    )
