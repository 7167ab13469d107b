"""storylib.scoreboard: what a page records, how the build checks and updates the board, and the table it shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storylib import data, scoreboard


@pytest.fixture
def board(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the folder a book build records into, a board file of its own): the course's board is never touched."""
    recorded, path = tmp_path / "recorded", tmp_path / "scoreboard.json"
    monkeypatch.setenv("LLM101N_SCOREBOARD_DIR", str(recorded))
    monkeypatch.setattr(scoreboard, "board_path", lambda: path)
    return recorded, path


def test_record_check_update_round_trip(board):
    recorded, path = board
    scoreboard.show(3, "MLP (characters)", 1.72734, page="ch03_mlp.ipynb")
    scoreboard.show(1, "bigram (counts)", 2.43)
    (entry,) = [e for e in scoreboard._recorded(recorded) if e["chapter"] == 3]
    assert entry == {"chapter": 3, "model": "MLP (characters)", "bpb": 1.7273, "page": "ch03_mlp.ipynb"}

    assert len(scoreboard.check(recorded, path)) == 2, "an empty board lacks both measurements"
    scoreboard.update(recorded, path)
    assert scoreboard.check(recorded, path) == []
    assert [(e["chapter"], e["model"]) for e in scoreboard.load_board(path)] == [
        (1, "bigram (counts)"), (3, "MLP (characters)")]
    assert "all 1000 validation stories" in json.loads(path.read_text())["yardstick"]


def test_update_keeps_the_entries_of_other_pages(board):
    recorded, path = board
    scoreboard.show(1, "bigram (counts)", 2.43)
    scoreboard.update(recorded, path)
    for p in recorded.glob("*.json"):
        p.unlink()
    scoreboard.show(5, "GPT (bytes)", 1.6)
    scoreboard.update(recorded, path)
    assert {e["model"] for e in scoreboard.load_board(path)} == {"bigram (counts)", "GPT (bytes)"}


def test_check_allows_the_tolerance_and_no_more(board):
    recorded, path = board
    scoreboard.show(4, "attention", 2.0)
    scoreboard.update(recorded, path)
    scoreboard.show(4, "attention", 2.0 + 0.9 * scoreboard.TOLERANCE)
    assert scoreboard.check(recorded, path) == [], "machines differ a little: within TOLERANCE is the same number"
    scoreboard.show(4, "attention", 2.0 + 2 * scoreboard.TOLERANCE)
    (problem,) = scoreboard.check(recorded, path)
    assert "attention" in problem and "the board says 2.0000" in problem


def test_check_names_what_the_board_lacks_and_main_fails(board, capsys):
    recorded, path = board
    scoreboard.show(6, "GPT (BPE tokens)", 1.2)
    (problem,) = scoreboard.check(recorded, path)
    assert "GPT (BPE tokens)" in problem and "lacks" in problem
    assert scoreboard.main(["check", str(recorded)]) == 1
    assert "stale" in capsys.readouterr().err
    assert scoreboard.main(["update", str(recorded)]) == 0 and scoreboard.main(["check", str(recorded)]) == 0
    assert scoreboard.main(["nonsense"]) == 2


def test_show_records_nothing_outside_the_book_build(board, monkeypatch):
    recorded, _ = board
    monkeypatch.delenv("LLM101N_SCOREBOARD_DIR")
    scoreboard.show(3, "MLP (characters)", 1.7)
    assert not recorded.exists()


def test_show_marks_this_pages_row_and_show_board_stops_at_its_chapter(board):
    recorded, path = board
    for chapter, model, bpb in ((1, "bigram (counts)", 2.43), (3, "MLP (characters)", 1.73), (5, "GPT (bytes)", 1.6),
                                (12, "storyteller (GPU-trained)", 0.81)):
        scoreboard.show(chapter, model, bpb)
    scoreboard.update(recorded, path)

    html = scoreboard.show(3, "MLP (characters)", 1.70).data  # measured again on this page
    rows = html.split("<tr")[2:]  # after the header
    assert len(rows) == 2, "the board up to Chapter 3, this page's model once, with its fresh number"
    (here,) = [r for r in rows if "this page" in r]
    assert "MLP (characters)" in here and "1.700" in here and "font-weight:bold" in here
    assert "bigram" in html and "GPT" not in html

    board_html = scoreboard.show_board(5).data
    assert "this page" not in board_html and "GPT (bytes) ★" in board_html and "storyteller" not in board_html
    assert "storyteller (GPU-trained) ★" in scoreboard.show_board(12).data, "the best model so far has a star"


def test_an_empty_board_says_so(board):
    assert "empty" in scoreboard.show_board(12).data


def test_the_yardstick_is_all_1000_validation_stories():
    stories = scoreboard.yardstick_stories()  # the course's data (shared/data/tinystories): required, never skipped
    assert len(stories) == scoreboard.N_STORIES == 1000
    assert stories == data.load_stories("valid")[:1000]


def test_the_yardstick_refuses_fewer_stories(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYLIB_DATA", str(data.write_fixture(tmp_path / "few", n_train=5, n_valid=15, seed=0)))
    with pytest.raises(ValueError, match="1000 validation stories; found 15"):
        scoreboard.yardstick_stories()
