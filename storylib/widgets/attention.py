"""An attention explorer for Chapter 4: type a sentence, see where every head of a small model looks.

    from storylib.widgets.attention import AttentionExplorer
    AttentionExplorer(model, vocab, text="Lily saw a big dog.")     # model: a trained TinyAttentionLM

There is no Python kernel behind the static book, so the widget carries the model itself: every weight,
as float32 bytes in base64, in the trait `weights`. Its JavaScript (js/attention.js) runs the model's
forward pass — embeddings, layer norms, attention, the MLP — for whatever the reader types, and draws the
attention weights of the chosen layer and head. The package tests run it (FORWARD_JS) under node and
compare its maps and next-character probabilities with PyTorch's.
"""

from __future__ import annotations

import base64
from pathlib import Path

import anywidget
import numpy as np
import torch
import traitlets

from storylib.bigram import BOUNDARY, Vocab
from storylib.widgets import front_end

# The widget's ES module, js/attention.js, as text. Its first part, the model's forward pass (decodeModel,
# forward), is pure functions with no DOM: the tests run it under node.
FORWARD_JS = front_end("attention")


def export_model(model: torch.nn.Module, vocab: Vocab) -> dict:
    """A TinyAttentionLM as JSON-able data for FORWARD_JS: config, characters, tensor offsets, base64 float32.

    The position vectors are exported as the tensor "pos" (learned, sinusoidal or zeros alike).
    """
    cfg = model.cfg
    tensors = {name: p.detach() for name, p in model.named_parameters() if name != "pos.weight"}
    tensors["pos"] = model.positions(cfg.block_size).detach()
    offsets, chunks, at = {}, [], 0
    for name, t in tensors.items():
        a = t.float().contiguous().numpy().ravel()
        offsets[name] = [at, list(t.shape)]
        chunks.append(a)
        at += a.size
    flat = np.concatenate(chunks).astype("<f4")
    return {
        "config": {"vocab_size": cfg.vocab_size, "block_size": cfg.block_size, "n_layer": cfg.n_layer,
                   "n_head": cfg.n_head, "d_model": cfg.d_model, "positions": cfg.positions},
        "chars": list(vocab.chars),
        "tensors": offsets,
        "data": base64.b64encode(flat.tobytes()).decode("ascii"),
    }


def reader_ids(text: str, vocab: Vocab, block_size: int) -> list[int]:
    """The ids the widget feeds the model for `text`: ◆, then the known characters, at most block_size in all."""
    ids = [BOUNDARY, *(vocab.stoi[ch] for ch in text if ch in vocab.stoi)]
    return ids[:block_size]


@torch.no_grad()
def strongest_link(
    model: torch.nn.Module, vocab: Vocab, text: str, layer: int = 0, head: int = 0
) -> tuple[int, int, float]:
    """What the widget's readout shows first, computed in PyTorch: (query, key, weight) for the last
    query of `text` and the key it weighs most, in the given layer and head (0-based)."""
    ids = reader_ids(text, vocab, model.cfg.block_size)
    _, _, attn = model.eval()(torch.tensor([ids]))
    row = attn[layer][0, head, len(ids) - 1]
    key = int(row.argmax())
    return len(ids) - 1, key, float(row[key])


class AttentionExplorer(anywidget.AnyWidget):
    """Attention heatmaps of every layer and head of a TinyAttentionLM, for a sentence the reader types."""

    _esm = FORWARD_JS
    _css = Path(__file__).parent / "js" / "attention.css"
    weights = traitlets.Dict().tag(sync=True)  # export_model(model, vocab)
    text = traitlets.Unicode("").tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)  # 0-based; shown 1-based
    head = traitlets.Int(0).tag(sync=True)

    def __init__(self, model: torch.nn.Module, vocab: Vocab, text: str = "Lily saw a big dog. The dog was happy.",
                 **kwargs) -> None:
        super().__init__(weights=export_model(model, vocab), text=text, **kwargs)
