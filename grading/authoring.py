"""Build nbgrader source notebooks (`solutions/chNN_<name>.ipynb`) from the exercises in storylib.

    nb = SolutionNotebook("ch01_bigram", title="Chapter 1 — the bigram language model")
    nb.markdown("Some words for the learner ...")
    nb.exercise("ch01.counts", try_it="N = count_bigrams(stories[:50], vocab)\\nN.sum()")
    nb.question("ch01_q_uniform", points=1, prompt="...", solution="uniform = math.log(V)",
                test="assert abs(uniform - math.log(V)) < 1e-9")
    nb.write()

`exercise(id)` adds: the contract (signature and docstring, read from the reference source), where
to write the code, a free cell to try it, and a locked autograder cell worth the exercise's points
that runs the package tests of that exercise out of process (`grading.notebook.check_exercise`).

Every generated notebook (these, and the book pages of `scripts/notebooks/build_ch08_book.py` and
`build_ch12_book.py`) is written by `write_notebook`, so the same builder gives the same bytes: cell ids come
from the file name and the cell's position, never at random. All builders at once, or a staleness check:

    python -m grading.authoring            # run scripts/notebooks/build_*.py (make notebooks)
    python -m grading.authoring --check    # build into a scratch folder, name committed files that differ
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import runpy
import sys
import tempfile
import textwrap
from pathlib import Path

import nbformat

from grading.exercises import Exercise, discover
from grading.harness import COURSE_ROOT

BUILDERS = COURSE_ROOT / "scripts" / "notebooks"
OUT_ENV = "LLM101N_NOTEBOOKS_OUT"  # a folder the builders write into instead of the course (the check's scratch)


def enclosing_function(ex: Exercise, root: Path = COURSE_ROOT) -> tuple[str, str, str]:
    """(qualified name, signature source, docstring) of the function holding the exercise region."""
    source = (root / ex.path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    best: tuple[str, ast.FunctionDef] | None = None

    def visit(node: ast.AST, prefix: str) -> None:
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                if child.lineno - 1 <= ex.begin <= (child.end_lineno or 0) - 1:
                    best = (prefix + child.name, child)
                    visit(child, prefix + child.name + ".")

    visit(tree, "")
    if best is None:
        raise ValueError(f"{ex.id}: its region is not inside a function")
    name, fn = best
    lines = source.splitlines()
    body_start = fn.body[0].lineno - 1
    signature = textwrap.dedent("\n".join(lines[fn.lineno - 1 : body_start])).rstrip()
    if fn.decorator_list:
        signature = textwrap.dedent("\n".join(lines[fn.decorator_list[0].lineno - 1 : body_start])).rstrip()
    return name, signature, ast.get_docstring(fn) or ""


def _meta(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = False,
          points: int = 0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
            "task": False}
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


class SolutionNotebook:
    def __init__(self, name: str, title: str, setup: str | None = None) -> None:
        self.name = name  # e.g. ch01_bigram
        self.nb = nbformat.v4.new_notebook()
        self.nb.metadata.update(
            kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
            language_info={"name": "python"},
        )
        self.exercises = {ex.id: ex for ex in discover(COURSE_ROOT)}
        self._n = 0
        self.markdown(f"# {title}")
        self.code(
            setup
            or "%load_ext autoreload\n%autoreload 2\n# storylib is *your* package: it sits next to this notebook.",
            locked=True,
        )

    def _id(self, stem: str) -> str:
        self._n += 1
        return f"{self.name}_{self._n:02d}_{stem}"

    def markdown(self, text: str, locked: bool = True) -> None:
        cell = nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())
        if locked:
            cell.metadata.update(_meta(self._id("md"), locked=True))
        self.nb.cells.append(cell)

    def code(self, source: str, locked: bool = False) -> None:
        cell = nbformat.v4.new_code_cell(textwrap.dedent(source).strip())
        if locked:
            cell.metadata.update(_meta(self._id("code"), locked=True))
        self.nb.cells.append(cell)

    def exercise(self, ex_id: str, try_it: str = "", notes: str = "") -> None:
        ex = self.exercises[ex_id]
        qualname, signature, doc = enclosing_function(ex)
        module = ".".join(ex.path.with_suffix("").parts)
        self.markdown(
            f"## Exercise `{ex.id}` ({ex.points} pt{'s' if ex.points != 1 else ''}) — book §{ex.section}\n\n"
            f"Open **`{ex.path.as_posix()}`** and write the body of `{qualname}` in place of the "
            f"`raise NotImplementedError` between the two marker lines of `{ex.id}`.\n\n"
            f"```python\n{signature}\n" + (f'    """{doc}"""\n' if doc else "") + "```\n\n"
            f"*Hint:* {ex.hint}\n\n{notes}".rstrip()
            + f"\n\nCheck it from a terminal with `llm101n check {ex.id}`, or run the graded cell below."
        )
        top = qualname.split(".")[0]
        self.code(f"from {module} import {top}\n\n{textwrap.dedent(try_it).strip()}".strip())
        test = self._id(ex.id.replace(".", "_"))
        cell = nbformat.v4.new_code_cell(
            f"# Autograder: runs the tests of {ex.id} against your storylib ({ex.points} points).\n"
            f"from grading.notebook import check_exercise\n\ncheck_exercise({ex.id!r})"
        )
        cell.metadata.update(_meta(test, grade=True, locked=True, points=ex.points))
        self.nb.cells.append(cell)

    def question(self, grade_id: str, points: int, prompt: str, solution: str, test: str) -> None:
        """An inline question: the learner writes `solution` in the notebook; `test` grades it."""
        self.markdown(f"### Question ({points} pt{'s' if points != 1 else ''})\n\n{textwrap.dedent(prompt).strip()}")
        cell = nbformat.v4.new_code_cell(
            "### BEGIN SOLUTION\n" + textwrap.dedent(solution).strip() + "\n### END SOLUTION"
        )
        cell.metadata.update(_meta(grade_id, solution=True))
        self.nb.cells.append(cell)
        cell = nbformat.v4.new_code_cell(textwrap.dedent(test).strip())
        cell.metadata.update(_meta(grade_id + "_test", grade=True, locked=True, points=points))
        self.nb.cells.append(cell)

    def write(self) -> Path:
        return write_notebook(self.nb, Path("solutions") / f"{self.name}.ipynb")


# ------------------------------------------------------------------------------ writing, building, checking

class BookPage:
    """A chapter's book page built by a script (the book executes it at build time): markdown and code cells, and
    for each exercise of the chapter a box that says what to write, where, and how to check it.

        page = BookPage("ch17_multimodal")
        page.md("# Pictures ..."); page.code("import torch"); page.exercise("ch17.patchify", "Cut ... into ...")
        page.write()   # book/ch17_multimodal.ipynb
    """

    def __init__(self, name: str, notebook: str | None = None) -> None:
        self.name = name  # e.g. ch14_sft: the page is book/<name>.ipynb, its exercises exercises/<name>.ipynb
        self.notebook = notebook or name  # an appendix's differ: book/appendix_a_tensors, exercises/appA_tensors
        self.nb = nbformat.v4.new_notebook()
        self.nb.metadata.update(kernelspec={"display_name": "Python 3", "language": "python", "name": "python3"},
                                language_info={"name": "python"})
        self.exercises = {e.id: e for e in discover(COURSE_ROOT) if e.chapter == self.notebook.split("_")[0]}

    def md(self, source: str) -> None:
        self.nb.cells.append(nbformat.v4.new_markdown_cell(textwrap.dedent(source).strip()))

    def code(self, source: str) -> None:
        self.nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(source).strip()))

    def exercise(self, ex_id: str, what: str) -> None:
        """The exercise's box: `what` it asks, the file and function to write it in, the command that checks it."""
        e = self.exercises[ex_id]
        func = enclosing_function(e)[0]
        where = (f"Write it in **`{e.path.as_posix()}`**, `{func}`, between the `### BEGIN SOLUTION {ex_id}` and "
                 "`### END SOLUTION` lines.")
        self.md(f"""
        :::{{admonition}} Exercise `{ex_id}` ({e.points} pt{"s" if e.points != 1 else ""})
        :class: tip

        {what}

        {where}
        Check it with `llm101n check {ex_id}`, or in the notebook `exercises/{self.notebook}.ipynb`.
        :::
        """)

    def write(self) -> Path:
        return write_notebook(self.nb, Path("book") / f"{self.name}.ipynb")


def write_notebook(nb: nbformat.NotebookNode, rel: Path | str) -> Path:
    """Write `nb` to `rel` (relative to the course, or to $LLM101N_NOTEBOOKS_OUT) and return the path.

    Cell ids are `<file stem>-<position>`, so rebuilding an unchanged notebook gives the same bytes and a changed
    one diffs only where it changed. Raises nbformat.ValidationError for an invalid notebook."""
    path = Path(os.environ.get(OUT_ENV) or COURSE_ROOT) / rel
    for i, cell in enumerate(nb.cells):
        cell.id = f"{path.stem}-{i:02d}"
    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def builders() -> list[Path]:
    return sorted(BUILDERS.glob("build_*.py"))


def build(out: Path) -> list[Path]:
    """Run every builder, in this process, writing under the empty folder `out`; the notebooks written, relative
    to `out`. A builder's exception propagates."""
    before, path = os.environ.get(OUT_ENV), list(sys.path)
    os.environ[OUT_ENV] = str(out)
    try:
        for script in builders():
            with contextlib.redirect_stdout(io.StringIO()):  # each builder says what it wrote; we say it once
                runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.path[:] = path
        if before is None:
            del os.environ[OUT_ENV]
        else:
            os.environ[OUT_ENV] = before
    return sorted(p.relative_to(out) for p in out.rglob("*.ipynb"))


def sync(root: Path = COURSE_ROOT, check_only: bool = False) -> tuple[list[Path], list[Path]]:
    """Build every notebook in a scratch folder and compare it, byte for byte, with its copy under `root`; unless
    check_only, copy the ones that differ there. Returns (the notebooks that differed or were missing, the
    solutions/ notebooks that no builder writes), relative to `root`."""
    with tempfile.TemporaryDirectory(prefix="llm101n-notebooks-") as tmp:
        fresh = build(Path(tmp))
        differ = [rel for rel in fresh
                  if not (root / rel).is_file() or (root / rel).read_bytes() != (Path(tmp) / rel).read_bytes()]
        for rel in [] if check_only else differ:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((Path(tmp) / rel).read_bytes())
    orphans = sorted({p.relative_to(root) for p in (root / "solutions").glob("*.ipynb")} - set(fresh))
    return differ, orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.authoring",
                                     description="Run the notebook builders of scripts/notebooks/.")
    parser.add_argument("--check", action="store_true", help="only name the committed notebooks that are stale")
    args = parser.parse_args(argv)
    differ, orphans = sync(check_only=args.check)
    for rel in differ:
        print(f"{rel.as_posix()} is stale: run `make notebooks` and commit it" if args.check else f"wrote {rel}")
    for rel in orphans:
        print(f"{rel.as_posix()} has no builder in scripts/notebooks/")
    print(f"notebooks: {len(builders())} builders, {len(differ)} {'stale' if args.check else 'written'}, "
          f"{len(orphans)} without a builder")
    return 1 if orphans or (args.check and differ) else 0


if __name__ == "__main__":
    sys.exit(main())
