"""What the widgets that work while you read share: one worker thread at a time, and the kernel's "hello".

A widget's front end knows a Python kernel is there only when the kernel answers its "hello" (a nonce made fresh
on each page load), so saved state never makes a static book page look live. Work a message asks for (a turn of
the story, a reply, a picture) runs in a worker thread, so the kernel's message loop, and the page, stay live.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class LiveWidget:
    """Mixin for an anywidget.AnyWidget: `busy`, `wait`, `start(...)` and the hello handshake; the widget's
    `act(content)` gets every other message of its front end."""

    _worker: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the work running now; True when none is running any more."""
        if self._worker is not None:
            self._worker.join(timeout)
        return not self.busy

    def start(self, target: Callable, *args, name: str) -> None:
        """Run target(*args) in the widget's worker thread (a daemon: a kernel can always quit)."""
        self._worker = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._worker.start()

    def listen(self) -> None:
        """Receive the front end's messages (call once, in __init__)."""
        self.on_msg(lambda _widget, content, _buffers: self.handle(content))

    def handle(self, content: dict) -> None:
        """One message from the front end: hello is answered here, the rest go to act()."""
        if content.get("type") == "hello":  # the handshake: only a live kernel answers
            self.send({"type": "hello", "nonce": str(content.get("nonce", ""))})
        else:
            self.act(content)

    def act(self, content: dict) -> None:
        raise NotImplementedError
