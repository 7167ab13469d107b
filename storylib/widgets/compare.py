"""Chapter 14's side-by-side: the same request answered by several models (the base storyteller and the chat one).

    from storylib.widgets.compare import ReplyCompare
    ReplyCompare({"base": base_reply, "chat": chat_reply}, requests=["Write a story about a cat named Tom."])

A replier is any function request -> reply text (it decides how its model is prompted: plain text for a base
model, the chat template for a chat model). The widget answers every request in `requests` when it is made, so
the static book shows them (a drop-down picks one); each reply may carry notes, e.g. the checks of Chapter 14's
rules (`notes`: a function (request, reply) -> list of short strings).

With a Python kernel (JupyterLab) a box takes a new request: the front end sends {"type": "ask", "text"}, Python
answers it with every replier in a worker thread and adds it to `examples`. The front end knows a kernel is there
only when the kernel answers its "hello" (a nonce made fresh on each page load), as StoryChat does, so saved state
never makes a static page look live.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anywidget
import traitlets

from storylib.widgets import front_end
from storylib.widgets._live import LiveWidget

Replier = Callable[[str], str]


class ReplyCompare(LiveWidget, anywidget.AnyWidget):
    """Requests, each answered by every model, shown side by side (see the module docstring)."""

    _esm = front_end("compare")
    _css = Path(__file__).parent / "js" / "compare.css"

    models = traitlets.List(traitlets.Unicode()).tag(sync=True)  # column titles, in order
    # [{"request": str, "replies": [{"text": str, "notes": [str, ...]}, ...] (one per model, in order)}]
    examples = traitlets.List(traitlets.Dict()).tag(sync=True)
    selected = traitlets.Int(0).tag(sync=True)  # the example shown
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | answering | error
    notice = traitlets.Unicode("").tag(sync=True)

    def __init__(self, repliers: Mapping[str, Replier], requests: Sequence[str] = (),
                 notes: Callable[[str, str], list[str]] | None = None, **kwargs) -> None:
        """repliers: model name -> function(request) -> reply; requests: answered now (recorded for the static
        page). Raises ValueError without a replier."""
        if not repliers:
            raise ValueError("ReplyCompare needs at least one replier")
        super().__init__(models=list(repliers), **kwargs)
        self.repliers = dict(repliers)
        self.notes = notes
        self.examples = [self.answer(r) for r in requests]
        self.listen()

    def answer(self, request: str) -> dict:
        """Every model's reply to one request, with its notes."""
        replies = []
        for reply_fn in self.repliers.values():
            text = reply_fn(request)
            replies.append({"text": text, "notes": list(self.notes(request, text)) if self.notes else []})
        return {"request": request, "replies": replies}

    def _ask(self, request: str) -> None:
        try:
            example = self.answer(request)
        except Exception as e:  # a learner's unfinished exercise: say so in the widget, never a traceback
            from storylib.storyteller import friendly_error

            with self.hold_sync():
                self.notice, self.status = friendly_error(e), "error"
            return
        with self.hold_sync():
            self.examples = [*self.examples, example]
            self.selected = len(self.examples) - 1
            self.notice, self.status = "", "idle"

    def act(self, content: dict) -> None:
        """One message from the front end (hello aside): ask {text} (answered in a worker thread)."""
        if content.get("type") == "ask" and not self.busy:
            text = str(content.get("text") or "").strip()
            if not text:
                return
            self.status, self.notice = "answering", ""
            self.start(self._ask, text, name="reply-compare")
