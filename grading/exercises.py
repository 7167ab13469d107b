"""Exercise regions: find them in the reference source and stub them for the learner edition.

An exercise is a run of lines fenced by nbgrader's markers, the BEGIN line naming it:

    ### BEGIN SOLUTION ch01.counts (§1.3, 2 pts): walk each story's (a, b) pairs and add 1 to N[a, b]
    ...reference code...
    ### END SOLUTION

Stubbing keeps both marker lines and replaces what lies between them with one
`raise NotImplementedError("<id>: <hint> — see book §<section>")`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_BEGIN_RE = re.compile(
    r"^(?P<indent>[ \t]*)### BEGIN SOLUTION (?P<id>(?:ch\d\d|lab\d\d|app[A-Z])\.[a-z][a-z0-9_]*)"
    r" \(§(?P<section>[0-9A-Z][0-9.]*), (?P<points>\d+) pts?\): (?P<hint>\S.*?)\s*$"
)
_ID_RE = re.compile(r"^(?:ch\d\d|lab\d\d|app[A-Z])(?:\.[a-z][a-z0-9_]*)?$")

# The folders of the course package that hold exercises (relative to a course root).
PACKAGES = ("storylib", "cuda_labs")


class MarkerError(ValueError):
    """A malformed or unbalanced exercise marker."""


@dataclass(frozen=True)
class Exercise:
    id: str
    path: Path  # relative to the course root, e.g. storylib/bigram.py
    begin: int  # 0-based line index of the BEGIN marker
    end: int  # 0-based line index of the END marker
    indent: str
    section: str
    points: int
    hint: str

    @property
    def chapter(self) -> str:
        return self.id.split(".")[0]

    @property
    def stub_line(self) -> str:
        message = f"{self.id}: {self.hint} — see book §{self.section}"
        return f"{self.indent}raise NotImplementedError({message!r})\n"


def parse_source(text: str, path: Path) -> list[Exercise]:
    """All exercise regions in one file's text, in order. Raises MarkerError on a malformed marker."""
    found: list[Exercise] = []
    open_: re.Match[str] | None = None
    begin_at = -1
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if open_ is not None:
                raise MarkerError(f"{path}:{i + 1}: BEGIN SOLUTION inside the region opened at line {begin_at + 1}")
            open_ = _BEGIN_RE.match(line)
            if open_ is None:
                raise MarkerError(
                    f"{path}:{i + 1}: malformed marker; expected "
                    f"'### BEGIN SOLUTION chNN.name (§N.N, P pts): hint', got {stripped!r}"
                )
            begin_at = i
        elif stripped.startswith(END):
            if open_ is None:
                raise MarkerError(f"{path}:{i + 1}: END SOLUTION without BEGIN")
            if not line.startswith(open_["indent"]) or line[len(open_["indent"]) :].startswith((" ", "\t")):
                raise MarkerError(f"{path}:{i + 1}: END SOLUTION must be indented like its BEGIN")
            found.append(
                Exercise(
                    id=open_["id"],
                    path=path,
                    begin=begin_at,
                    end=i,
                    indent=open_["indent"],
                    section=open_["section"],
                    points=int(open_["points"]),
                    hint=open_["hint"],
                )
            )
            open_ = None
    if open_ is not None:
        raise MarkerError(f"{path}:{begin_at + 1}: BEGIN SOLUTION {open_['id']} is never closed")
    return found


def source_files(root: Path) -> list[Path]:
    """The Python files of the course packages under `root`, relative to it, sorted."""
    files: list[Path] = []
    for package in PACKAGES:
        if (root / package).is_dir():
            files += [p.relative_to(root) for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def discover(root: Path) -> list[Exercise]:
    """Every exercise under a course root (the reference repo or a learner workspace), in book order."""
    exercises: list[Exercise] = []
    seen: dict[str, Exercise] = {}
    for rel in source_files(root):
        for ex in parse_source((root / rel).read_text(encoding="utf-8"), rel):
            if ex.id in seen:
                raise MarkerError(f"exercise id {ex.id} is used twice: {seen[ex.id].path} and {ex.path}")
            seen[ex.id] = ex
            exercises.append(ex)
    return sorted(exercises, key=_book_order)  # stable: a section's exercises keep their order in the file


def _book_order(ex: Exercise) -> tuple:
    """Chapter, then book section (11.2 before 11.10), so a chapter spread over files still reads in order."""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ex.section.split(".") if p)
    return ex.chapter.startswith("app"), ex.chapter, parts  # the appendices (appA, appB) after the chapters


def stub_text(text: str, path: Path, ids: Iterable[str] | None = None) -> str:
    """`text` with the regions named by `ids` (all when None) replaced by their NotImplementedError stub."""
    wanted = None if ids is None else set(ids)
    lines = text.splitlines(keepends=True)
    for ex in reversed(parse_source(text, path)):
        if wanted is None or ex.id in wanted:
            lines[ex.begin + 1 : ex.end] = [ex.stub_line]
    return "".join(lines)


def is_stubbed(text: str, ex: Exercise) -> bool:
    """True when the region of `ex` in `text` still holds only the released stub."""
    for found in parse_source(text, ex.path):
        if found.id == ex.id:
            body = text.splitlines(keepends=True)[found.begin + 1 : found.end]
            return [line.strip() for line in body if line.strip()] == [found.stub_line.strip()]
    return False


def matches(ex_id: str, selector: str) -> bool:
    """`ch01` selects every exercise of Chapter 1; `ch01.counts` selects one."""
    return ex_id == selector or ex_id.split(".")[0] == selector


def check_selector(selector: str) -> str:
    if not _ID_RE.match(selector):
        raise ValueError(f"not a chapter or exercise id: {selector!r} (expected e.g. 'ch01' or 'ch01.counts')")
    return selector
