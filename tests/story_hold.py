"""Story turns that cannot end before Stop, for tests that press Stop midway (storylib.storyteller.StorySession).

On a busy machine a story can run out before the test's Stop lands (issue #15). held_generate wraps
StorySession.generate: once a turn has shown `chars` characters, its next piece waits for the turn's `stop` event.
A Stop that is not honoured still shows: the text goes on growing after it. Turns without a stop event are not held.

    monkeypatch.setattr(StorySession, "generate", held_generate(StorySession.generate, 160))

In a child process (`llm101n chat`, where Ctrl-C sets the stop event), run HELD_CHAT instead of the console script.
"""

from __future__ import annotations

from collections.abc import Callable


def held_generate(generate: Callable, chars: int) -> Callable:
    """StorySession.generate, held after `chars` characters of each turn until that turn's Stop."""

    def held(self, sampling, stop=None, on_piece=None):
        shown = 0

        def piece(p: str) -> None:
            nonlocal shown
            if on_piece is not None:
                on_piece(p)
            shown += len(p)
            if shown >= chars and stop is not None:
                while not stop.wait(0.05):  # a timed wait: a SIGINT handler in this thread can set it
                    pass

        return generate(self, sampling, stop, piece)

    return held


# `llm101n chat ARGS...` with every turn held after 80 characters: python -c HELD_CHAT ARGS... (cwd: the repo root)
HELD_CHAT = """
import sys
sys.path[:0] = ["tests", "."]
from story_hold import held_generate
from storylib.storyteller import StorySession
StorySession.generate = held_generate(StorySession.generate, 80)
from llm101n.cli import main
sys.exit(main(["chat", *sys.argv[1:]]))
"""
