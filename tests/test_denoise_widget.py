"""Chapter 17's denoising viewer without a browser: DenoiseViewer's handlers driven as the front end would.

Its frames must run from t = 1 to t = 0 and end on the very picture Illustrator.draw gives (same noise, same
steps); every frame must be a PNG of the model's size; a "draw" must add one example, drawn off the kernel's thread;
only a live kernel answers "hello"; a sentence with nothing to draw, or a learner's unfinished exercise, must come
back as a notice, never a traceback. A tiny untrained illustrator keeps it fast.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from storylib.illustrate import Illustrator
from storylib.widgets import DenoiseViewer
from storylib.widgets.denoise import denoise_frames
from tests.illustrator_model import tiny_illustrator


@pytest.fixture(scope="module")
def ill(tmp_path_factory):
    return Illustrator.load(tiny_illustrator(tmp_path_factory.mktemp("illustrator")))


def decode(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))


def test_frames_run_from_noise_to_the_drawn_picture(ill):
    frames = denoise_frames(ill, "a blue dog", steps=4, guidance=2.0, seed=3, frames=3)
    assert [t for t, _ in frames] == [1.0, 0.5, 0.0]
    assert all(p.dtype == np.uint8 and p.shape == (16, 16, 3) for _, p in frames)
    np.testing.assert_array_equal(frames[-1][1], ill.draw("a blue dog", steps=4, guidance=2.0, seed=3))
    # more frames than steps: each step once
    assert [t for t, _ in denoise_frames(ill, "a blue dog", steps=2, frames=6)] == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="frames >= 2"):
        denoise_frames(ill, "a blue dog", steps=2, frames=1)


def test_captions_are_recorded_as_png_frames(ill):
    w = DenoiseViewer(ill, captions=["a blue dog", "Lily kicked her red ball under the tree."], steps=2, frames=3)
    assert [e["caption"] for e in w.examples] == ["a blue dog", "a red ball under a tree"]
    assert w.examples[1]["text"] == "Lily kicked her red ball under the tree."
    ex = w.examples[0]
    assert [f["t"] for f in ex["frames"]] == [1.0, 0.5, 0.0]
    np.testing.assert_array_equal(decode(ex["frames"][-1]["png"]), ill.draw("a blue dog", steps=2, seed=0))
    assert w.settings == {"steps": 2, "guidance": 3.0, "seed": 0} and (w.selected, w.frame) == (0, -1)


def test_draw_adds_an_example_and_selects_it(ill):
    w = DenoiseViewer(ill, captions=["a blue dog"], steps=2, frames=2)
    w.frame = 0
    w.handle({"type": "draw", "text": "  two cats at night "})
    assert w.wait(30)
    assert (w.status, w.notice, w.selected, w.frame) == ("idle", "", 1, -1)
    assert w.examples[-1]["caption"].startswith("two ") and w.examples[-1]["caption"].endswith("cats at night")
    w.handle({"type": "draw", "text": "   "})  # nothing to draw: nothing happens
    assert w.wait(30) and len(w.examples) == 2


def test_nothing_to_draw_and_unfinished_exercises_become_notices(ill, monkeypatch):
    w = DenoiseViewer(ill, steps=2, frames=2)
    w.handle({"type": "draw", "text": "It was a happy day."})
    assert w.wait(30)
    assert w.status == "error" and w.notice.startswith("nothing to draw in") and w.examples == []

    def unfinished(*_a, **_k):
        raise NotImplementedError("ch17.euler_step: x + (t_next - t)·v — see book §17.5")

    monkeypatch.setattr("storylib.dit.sample", unfinished)
    w.handle({"type": "draw", "text": "a blue dog"})
    assert w.wait(30)
    assert w.status == "error" and "ch17.euler_step" in w.notice and w.examples == []


def test_only_hello_is_answered(ill):
    w = DenoiseViewer(ill)
    sent: list[dict] = []
    w.send = lambda content, buffers=None: sent.append(content)
    w.handle({"type": "hello", "nonce": "abc:1"})
    w.handle({"type": "unknown"})
    assert sent == [{"type": "hello", "nonce": "abc:1"}]
