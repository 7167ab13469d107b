"""A gate on the serving engine (storylib.serve.Engine) for tests that act while a reply is running.

On a busy machine a short reply can end before the test presses Stop, leaves mid-stream or sends its next request
(issue #15). While the gate is closed no reply can end: before a row's last token the engine waits until the gate
opens or the row's client leaves (a client that leaves is still seen, and its row retired as cancelled)::

    gate = ReplyGate(app.state.engine)
    with gate.closed():
        ...  # every reply started here runs until the gate opens or its client leaves
    gate.remove()
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReplyGate:
    """Wraps engine.step (run_once calls self.step(): the instance attribute wins); open until closed()."""

    def __init__(self, engine):
        self.engine, self.step, self.opened = engine, engine.step, threading.Event()
        self.opened.set()
        engine.step = self.held_step

    def held_step(self) -> None:
        rows = self.engine.rows  # the engine's own thread: nothing else touches rows meanwhile
        while not self.opened.is_set() and any(len(r.req.tokens) + 1 >= r.req.max_tokens for r in rows):
            if any(r.req.cancelled for r in rows):
                return  # the client left: run_once retires the row as cancelled
            self.opened.wait(0.05)  # req.cancelled is a plain flag, set by the HTTP side: look again soon
        self.step()

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        self.opened.clear()
        try:
            yield
        finally:
            self.opened.set()

    def remove(self) -> None:
        """Open the gate and give the engine its own step back."""
        self.opened.set()
        del self.engine.step
