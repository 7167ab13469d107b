"""Write the learner edition: the same packages with every exercise region stubbed, plus notebooks and tests.

    llm101n release DIR          # a fresh learner workspace
    llm101n release DIR --update # add what a newer course brings, never touching the learner's files

Layout of a workspace (flat, so that a notebook's folder is also the folder that holds `storylib/`,
exactly as in an nbgrader submission):

    DIR/storylib/        the learner's package (stubs)      DIR/chNN_<name>.ipynb  exercise notebooks
    DIR/cuda_labs/       the learner's kernels (stubs)      DIR/tests/            the public tests, to read
    DIR/storyteller.ipynb  the book's chat page, in its workspace words (see `workspace_page`)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import nbformat

from grading.exercises import PACKAGES, discover, stub_text
from grading.harness import COURSE_ROOT, TESTS

MARKER = ".llm101n-workspace"
README = """# Your LLM101n workspace

This folder is yours. `storylib/` is your copy of the course package: every exercise is a region

    ### BEGIN SOLUTION ch01.counts (§1.3, 2 pts): <hint>
    raise NotImplementedError(...)
    ### END SOLUTION

that you replace with your code. Check your work from a terminal in this folder:

    llm101n check ch01            # every exercise of Chapter 1, as a table
    llm101n check ch01.counts     # one exercise

or run the graded cells of the chapter's notebook (`ch01_bigram.ipynb`). The checks run the course's
own copy of the tests (`tests/` here is for reading); changing them here changes nothing.
"""


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", ".ipynb_checkpoints") or n.endswith(".pyc")]


def stub_package(src: Path, dest: Path, root: Path = COURSE_ROOT, update: bool = False) -> list[Path]:
    """Copy package folder `src` to `dest`, stubbing every exercise region. With update, keep existing files."""
    written = []
    for path in sorted(src.rglob("*")):
        if path.is_dir() or _ignore("", [path.name]) or "__pycache__" in path.parts:
            continue
        target = dest / path.relative_to(src)
        if update and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".py":
            target.write_text(stub_text(path.read_text(encoding="utf-8"), path.relative_to(root)), encoding="utf-8")
        else:
            shutil.copy2(path, target)
        written.append(target)
    return written


def workspace_page(src: Path) -> nbformat.NotebookNode:
    """A book page as it reads in a workspace, where it runs live: cells tagged `book-only` (what a static page
    says) are dropped, and cells tagged `workspace-only` (hidden from the book by `remove-cell`) are shown."""
    nb = nbformat.read(src, as_version=4)
    nb.cells = [c for c in nb.cells if "book-only" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "workspace-only" in tags:
            cell.metadata["tags"] = [t for t in tags if t not in ("workspace-only", "remove-cell")]
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
    return nb


def _commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def release(dest: Path, root: Path = COURSE_ROOT, update: bool = False, force: bool = False) -> list[Path]:
    """Write the learner edition of the course at `root` into `dest`. Returns the files written."""
    dest = Path(dest)
    if (dest / "storylib").exists() and not (update or force):
        raise FileExistsError(
            f"{dest / 'storylib'} exists: it may hold a learner's work. Use --update to add only new files, "
            "or --force to overwrite everything."
        )
    if force and not update:
        for package in PACKAGES:
            shutil.rmtree(dest / package, ignore_errors=True)
    discover(root)  # fail early on a malformed marker
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for package in PACKAGES:
        if (root / package).is_dir():
            written += stub_package(root / package, dest / package, root, update)
    for nb in sorted((root / "exercises").glob("*.ipynb")):
        if not (update and (dest / nb.name).exists()):
            shutil.copy2(nb, dest / nb.name)
            written.append(dest / nb.name)
    chat = root / "book" / "storyteller.ipynb"  # the chat widget, on the learner's own storylib
    if chat.is_file() and not (update and (dest / chat.name).exists()):
        nbformat.write(workspace_page(chat), dest / chat.name)
        written.append(dest / chat.name)
    shutil.rmtree(dest / "tests", ignore_errors=True)
    shutil.copytree(TESTS, dest / "tests", ignore=_ignore)
    for readme in [dest / "README.md"]:
        if not readme.exists():
            readme.write_text(README)
    (dest / MARKER).write_text(json.dumps({"course": "LLM101n", "commit": _commit(root), "released": time.time()}))
    return written
