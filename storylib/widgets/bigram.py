"""A next-character explorer for Chapter 1: pick a character, see what the bigram model expects next.

    from storylib.widgets.bigram import BigramExplorer
    BigramExplorer(P, vocab)              # P: a (V, V) table of next-token probabilities

The probability table travels with the widget as a trait (rounded to 5 decimals), and everything else —
the bar chart, the temperature, sampling a story — happens in the widget's own JavaScript, so it stays
live in the static book where no Python kernel runs. Clicking a bar moves to that character: a walk
through the chain by hand. "Sample" draws a story with a seeded PRNG (the same seed gives the same story).
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import torch
import traitlets

from storylib.bigram import BOUNDARY, Vocab
from storylib.widgets import front_end


class BigramExplorer(anywidget.AnyWidget):
    """Next-character distributions of a bigram table, with a temperature slider and a story sampler."""

    _esm = front_end("bigram")
    _css = Path(__file__).parent / "js" / "bigram.css"
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # printable names: ◆, ␣, ⏎, a, b, ...
    chars = traitlets.List(traitlets.Unicode()).tag(sync=True)  # what each token writes ("" for ◆)
    probs = traitlets.List(traitlets.List(traitlets.Float())).tag(sync=True)  # (V, V), rows sum to ~1
    selected = traitlets.Int(BOUNDARY).tag(sync=True)
    temperature = traitlets.Float(1.0).tag(sync=True)
    top_k = traitlets.Int(15).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    max_len = traitlets.Int(400).tag(sync=True)

    def __init__(self, probs: torch.Tensor, vocab: Vocab, start: str | None = None, **kwargs) -> None:
        V = len(vocab)
        if tuple(probs.shape) != (V, V):
            raise ValueError(f"probs should have shape (V, V) = {(V, V)}, got {tuple(probs.shape)}")
        table = [[round(p, 5) for p in row] for row in probs.double().tolist()]
        selected = vocab.stoi[start] if start is not None else BOUNDARY
        super().__init__(
            labels=[vocab.label(i) for i in range(V)],
            chars=["", *vocab.chars],
            probs=table,
            selected=selected,
            **kwargs,
        )
