"""Checks called from notebooks: the autograder cells of the exercise notebooks, and learners' own cells.

`check_exercise("ch01.counts")` grades one exercise of the storylib found next to the notebook (or at
$STORYLIB_ROOT) by running its package tests in a separate process. A chapter is run once and
reused until a file of the package changes, so a notebook of many graded cells stays fast.
"""

from __future__ import annotations

from pathlib import Path

from grading.harness import Report, check, find_root

_cache: dict[tuple[Path, str], tuple[tuple, Report]] = {}


def _fingerprint(root: Path) -> tuple:
    return tuple(
        sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for pkg in ("storylib", "cuda_labs")
               for p in (root / pkg).rglob("*.py") if (root / pkg).is_dir())
    )


def chapter_report(chapter: str, root: Path | None = None) -> Report:
    root = find_root() if root is None else Path(root).resolve()
    key, stamp = (root, chapter), _fingerprint(root)
    if key not in _cache or _cache[key][0] != stamp:
        _cache[key] = (stamp, check([chapter], root))
    return _cache[key][1]


def check_exercise(ex_id: str, root: Path | None = None) -> None:
    """Print the result of one exercise; raise AssertionError (zero points) unless all its tests pass."""
    result = chapter_report(ex_id.split(".")[0], root)[ex_id]
    ok = sum(t.outcome == "passed" for t in result.tests)
    if result.passed:
        print(f"{ex_id}: PASS — {ok}/{len(result.tests)} tests, {result.exercise.points} points")
        return
    lines = [f"{ex_id}: FAIL — {ok}/{len(result.tests)} tests pass"]
    lines += [f"  {t.nodeid.split('::')[-1]}: {t.message.strip().splitlines()[0] if t.message.strip() else t.outcome}"
              for t in result.tests if t.outcome != "passed"][:5]
    raise AssertionError("\n".join(lines))


def check_chapter(chapter: str, root: Path | None = None) -> Report:
    """Print the chapter's table (what `llm101n check chNN` prints) and return the report."""
    report = chapter_report(chapter, root)
    print(report.table())
    return report


def golden_file(name: str) -> str:
    """The text of a golden output in grading/tests/golden/ (what follows its '---' line, less the last newline)."""
    from grading.harness import COURSE_ROOT

    text = (COURSE_ROOT / "grading" / "tests" / "golden" / name).read_text(encoding="utf-8")
    header, sep, body = text.partition("\n---\n")
    if not sep or not body.endswith("\n"):
        raise ValueError(f"{name}: not a golden file (no '---' line, or no final newline)")
    return body[:-1]
