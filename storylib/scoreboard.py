"""The course's yardstick, and the scoreboard every chapter extends.

Every chapter measures its models the same way: **bits per UTF-8 byte on all 1,000 validation stories**, each
story read on its own from its start, every unit of it (character, byte or token) and its end predicted: total
bits / total UTF-8 bytes of the stories (Chapter 1's definition; `bigram.bits_per_byte`, `mlp.bits_per_byte`,
`gpt2.bits_per_byte` compute it for their models). Bytes, not characters or tokens, so every model is on one
scale, whatever it calls a token.

The board, `bench/results/scoreboard.json`, holds one line per model the book trains. A chapter page measures its
own models again and shows the board up to its chapter with its fresh numbers marked:

    stories = yardstick_stories()                  # the 1,000 validation stories
    show(3, "MLP, 3 characters of context", bpb)   # the board up to Chapter 3 (an HTML table with bars)
    show_board(8)                                  # the board up to Chapter 8, for a page with no model

In the book build (scripts/build_book.sh sets LLM101N_SCOREBOARD_DIR), `show` also records what the page
measured, and the build then runs

    python -m storylib.scoreboard check DIR        # every recorded number matches the board (TOLERANCE)
    python -m storylib.scoreboard update DIR       # after a change: write the recorded numbers into the board

so a number on the board is always one that its page measured.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from pathlib import Path

from storylib.data import REPO, load_stories

BOARD = "bench/results/scoreboard.json"
N_STORIES = 1000  # all of valid.txt.xz
TOLERANCE = 0.02  # bits per byte: training on another CPU (threads, vector units) lands a little apart; models, far


def yardstick_stories() -> list[str]:
    """The stories every chapter is measured on: all 1,000 validation stories, in order."""
    stories = load_stories("valid", limit=N_STORIES)
    if len(stories) != N_STORIES:
        raise ValueError(f"the yardstick needs {N_STORIES} validation stories; found {len(stories)}")
    return stories


def board_path() -> Path:
    from storylib.data import course_file

    try:
        return course_file(BOARD)
    except FileNotFoundError:
        return REPO / BOARD


def load_board(path: Path | None = None) -> list[dict]:
    """The board's entries: {"chapter", "model", "bpb", "page"}, in chapter order."""
    path = path or board_path()
    if not path.exists():
        return []
    return sorted(json.loads(path.read_text())["entries"], key=lambda e: (e["chapter"], e["bpb"]))


def _record(chapter: int, model: str, bpb: float, page: str) -> None:
    out = os.environ.get("LLM101N_SCOREBOARD_DIR")
    if not out:
        return
    slug = re.sub(r"[^a-z0-9]+", "-", f"ch{chapter:02d}-{model}".lower()).strip("-")
    Path(out).mkdir(parents=True, exist_ok=True)
    entry = {"chapter": chapter, "model": model, "bpb": round(float(bpb), 4), "page": page}
    (Path(out) / f"{slug}.json").write_text(json.dumps(entry) + "\n")


def show(chapter: int, model: str, bpb: float, page: str = "", upto: int | None = None):
    """The board up to `chapter` (or `upto`) as an HTML table with bars, this page's `model` measured at `bpb`
    marked. Returns an IPython HTML object (displayed when it is a cell's last line)."""
    _record(chapter, model, bpb, page)
    upto = chapter if upto is None else upto
    rows = [e for e in load_board() if e["chapter"] <= upto and not (e["chapter"] == chapter and e["model"] == model)]
    rows.append({"chapter": chapter, "model": model, "bpb": float(bpb), "page": page, "here": True})
    return _table(rows)


def show_board(upto: int):
    """The board up to chapter `upto`, for a page that trains no model of its own."""
    return _table([e for e in load_board() if e["chapter"] <= upto])


def _table(rows: list[dict]):
    from IPython.display import HTML

    if not rows:
        return HTML("<p>(the scoreboard is empty)</p>")
    rows.sort(key=lambda e: (e["chapter"], -e["bpb"]))
    top = max(e["bpb"] for e in rows)
    best = min(e["bpb"] for e in rows)
    cells = []
    for e in rows:
        width = 100 * e["bpb"] / top
        colour = "#1565c0" if e.get("here") else "#90a4ae"
        weight = "font-weight:bold;" if e.get("here") else ""
        mark = " ← this page" if e.get("here") else (" ★" if e["bpb"] == best else "")
        cells.append(
            f"<tr style='{weight}'><td>{e['chapter']}</td><td>{html.escape(e['model'])}{mark}</td>"
            f"<td style='text-align:right'>{e['bpb']:.3f}</td><td style='width:45%'><div style='background:{colour};"
            f"height:0.9em;width:{width:.1f}%'></div></td></tr>")
    return HTML("<table><tr><th>ch.</th><th>model</th><th>bits/byte</th><th>(lower is better)</th></tr>"
                + "".join(cells) + "</table>")


def _recorded(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def check(folder: Path, path: Path | None = None) -> list[str]:
    """Problems between what the book build recorded in `folder` and the board: [] when they agree."""
    board = {(e["chapter"], e["model"]): e for e in load_board(path)}
    problems = []
    for r in _recorded(folder):
        e = board.get((r["chapter"], r["model"]))
        if e is None:
            problems.append(f"chapter {r['chapter']} measured {r['model']!r} ({r['bpb']:.4f}); the board lacks it")
        elif abs(e["bpb"] - r["bpb"]) > TOLERANCE:
            problems.append(f"chapter {r['chapter']} {r['model']!r}: measured {r['bpb']:.4f}, the board says "
                            f"{e['bpb']:.4f}")
    return problems


def update(folder: Path, path: Path | None = None) -> Path:
    """Write what the book build recorded into the board (other entries kept)."""
    path = path or board_path()
    board = {(e["chapter"], e["model"]): e for e in load_board(path)}
    for r in _recorded(folder):
        board[(r["chapter"], r["model"])] = r
    entries = sorted(board.values(), key=lambda e: (e["chapter"], -e["bpb"]))
    doc = {"yardstick": f"bits per UTF-8 byte on all {N_STORIES} validation stories (storylib.scoreboard)",
           "measured": "recorded by each chapter's page in the book build (scripts/build_book.sh): measured there on "
                       "CPU, or for the GPU-trained storyteller loaded from models/storyteller/sweep.json",
           "entries": entries}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("check", "update"):
        print("usage: python -m storylib.scoreboard check|update DIR", file=sys.stderr)
        return 2
    if argv[0] == "update":
        print("wrote", update(Path(argv[1])))
        return 0
    problems = check(Path(argv[1]))
    for p in problems:
        print("scoreboard:", p, file=sys.stderr)
    if problems:
        print(f"the board ({BOARD}) is stale: `python -m storylib.scoreboard update {argv[1]}` after checking the "
              "new numbers", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
