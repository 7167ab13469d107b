"""Chapter 17's denoising viewer: a caption, and the picture it becomes, from pure noise at t = 1 to t = 0.

    from storylib.widgets.denoise import DenoiseViewer
    DenoiseViewer(illustrator, captions=["a blue dog on the left", "a red ball under a tree"], steps=25)

The illustrator (storylib.illustrate.Illustrator) samples a latent grid with Euler steps; the widget decodes the
grid at a few of those steps, the way the final picture is decoded (every latent vector moved to its nearest code,
then painted by the VQ-VAE's decoder), and shows them side by side with a slider over t. The last frame is the
picture `Illustrator.draw` gives for the same caption, steps, guidance and seed.

Every caption in `captions` is drawn when the widget is made, so the static book shows them (a drop-down picks
one). With a Python kernel (JupyterLab) a box takes a new caption or a story sentence (read into a caption with
storylib.illustrate.caption_for): the front end sends {"type": "draw", "text"}, Python draws it in a worker thread
and adds it to `examples`. As in ReplyCompare, the front end knows a kernel is there only when the kernel answers
its "hello" (a nonce made fresh on each page load), so saved state never makes a static page look live.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import anywidget
import numpy as np
import traitlets

from storylib.widgets import front_end
from storylib.widgets._live import LiveWidget


def denoise_frames(illustrator, caption: str, steps: int = 25, guidance: float = 3.0, seed: int = 0,
                   frames: int = 6) -> list[tuple[float, np.ndarray]]:
    """[(t, uint8 picture (S, S, 3))] at `frames` evenly spaced steps of the sampler, from t = 1 to t = 0.

    The same noise and steps as illustrator.draw(caption, steps, guidance, seed), so the last picture is the one
    draw gives. Raises ValueError when steps < 1 or frames < 2 (a caption too long for the model: encode_captions')."""
    import torch

    from storylib import dit as D
    from storylib import vqvae as V

    if steps < 1 or frames < 2:
        raise ValueError(f"need steps >= 1 and frames >= 2, got steps={steps}, frames={frames}")
    device = next(illustrator.dit.parameters()).device
    tokens = D.encode_captions(illustrator.tokenizer, [caption], illustrator.dit.config.text_len).to(device)
    _, path = D.sample(illustrator.dit, tokens, steps=steps, guidance=guidance,
                       generator=torch.Generator(device).manual_seed(seed), return_trajectory=True)
    at = sorted({int(round(k)) for k in np.linspace(0, steps, frames)})  # step k of the path is at t = 1 - k/steps
    pictures = V.to_pictures(illustrator.vq.decode_latents(path[at, 0], snap=True).float().cpu())
    return [(1.0 - k / steps, picture) for k, picture in zip(at, pictures, strict=True)]


def png_base64(picture: np.ndarray) -> str:
    """A uint8 (S, S, 3) picture as base64 PNG bytes (the front end enlarges it with square pixels)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class DenoiseViewer(LiveWidget, anywidget.AnyWidget):
    """A caption's denoising, frame by frame (see the module docstring)."""

    _esm = front_end("denoise")
    _css = Path(__file__).parent / "js" / "denoise.css"

    # [{"caption": str, "text": what was typed, "frames": [{"t": float, "png": base64 PNG}, ...] from t = 1 to 0}]
    examples = traitlets.List(traitlets.Dict()).tag(sync=True)
    selected = traitlets.Int(0).tag(sync=True)  # the example shown
    frame = traitlets.Int(-1).tag(sync=True)  # the frame the slider is on (-1: the last, t = 0)
    settings = traitlets.Dict().tag(sync=True)  # {"steps", "guidance", "seed"}: shown under the frames
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | drawing | error
    notice = traitlets.Unicode("").tag(sync=True)

    def __init__(self, illustrator, captions: Sequence[str] = (), steps: int = 25, guidance: float = 3.0,
                 seed: int = 0, frames: int = 6, **kwargs) -> None:
        """illustrator: a storylib.illustrate.Illustrator; captions: drawn now (recorded for the static page)."""
        super().__init__(settings={"steps": steps, "guidance": guidance, "seed": seed}, **kwargs)
        self.illustrator, self.steps, self.guidance, self.seed, self.frames = illustrator, steps, guidance, seed, frames
        self.examples = [self.draw(c) for c in captions]
        self.listen()

    def draw(self, text: str) -> dict:
        """One example: `text` read as a caption (caption_for: a story sentence works too; NothingToDraw when it
        names nothing drawable), drawn frame by frame."""
        from storylib.illustrate import caption_for

        caption = caption_for(text)
        frames = denoise_frames(self.illustrator, caption, self.steps, self.guidance, self.seed, self.frames)
        return {"caption": caption, "text": text, "frames": [{"t": t, "png": png_base64(p)} for t, p in frames]}

    def _draw(self, text: str) -> None:
        from storylib.illustrate import NothingToDraw

        try:
            example = self.draw(text)
        except NothingToDraw as e:  # its message says why, in the reader's words
            with self.hold_sync():
                self.notice, self.status = str(e), "error"
            return
        except Exception as e:  # a learner's unfinished exercise: say so in the widget, never a traceback
            from storylib.storyteller import friendly_error

            with self.hold_sync():
                self.notice, self.status = friendly_error(e), "error"
            return
        with self.hold_sync():
            self.examples = [*self.examples, example]
            self.selected, self.frame = len(self.examples) - 1, -1
            self.notice, self.status = "", "idle"

    def act(self, content: dict) -> None:
        """One message from the front end (hello aside): draw {text} (drawn in a worker thread)."""
        if content.get("type") == "draw" and not self.busy:
            text = str(content.get("text") or "").strip()
            if not text:
                return
            self.status, self.notice = "drawing", ""
            self.start(self._draw, text, name="denoise-viewer")
