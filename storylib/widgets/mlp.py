"""An embedding-space explorer for Chapter 3: where the MLP put each character.

    from storylib.widgets.mlp import EmbeddingExplorer
    EmbeddingExplorer.from_tables({"at initialisation": C0, "after training": C1}, vocab)

Each table C (V, d) is projected to 2-D with PCA (its two directions of largest variance) in Python;
the projected points *and* the full d-dimensional vectors are traits, so the widget's JavaScript can
find a character's nearest neighbours (cosine similarity in all d dimensions, not just the two drawn)
in the static book, where no Python kernel runs. Hover or click a character to see its neighbours;
switch tables to watch the structure appear with training.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import torch
import traitlets

from storylib.bigram import Vocab


def char_group(label: str) -> str:
    """The colour class of a token label (as made by Vocab.label)."""
    if label == "◆":
        return "boundary"
    if label in ("␣", "⏎", "⇥"):
        return "space"
    if len(label) != 1:
        return "other"
    if label in "aeiou":
        return "vowel"
    if label.isalpha() and label.islower() and label.isascii():
        return "consonant"
    if label.isalpha() and label.isupper() and label.isascii():
        return "upper"
    if label.isdigit():
        return "digit"
    if not label.isalnum():
        return "punct"
    return "other"


def pca_2d(table: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Project the rows of a (V, d) table on its two principal directions; also return the share of the
    variance those two directions hold."""
    X = table.detach().double()
    X = X - X.mean(dim=0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    share = float((S[:2] ** 2).sum() / (S**2).sum())
    return U[:, :2] * S[:2], share


class EmbeddingExplorer(anywidget.AnyWidget):
    """Characters placed by their learned embeddings; hover one to list its nearest neighbours."""

    _esm = Path(__file__).parent / "js" / "mlp.js"
    _css = Path(__file__).parent / "js" / "mlp.css"
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    groups = traitlets.List(traitlets.Unicode()).tag(sync=True)
    snapshots = traitlets.List(traitlets.Dict()).tag(sync=True)  # [{name, xy, vectors, note}]
    title = traitlets.Unicode("").tag(sync=True)

    @classmethod
    def from_tables(cls, tables: dict[str, torch.Tensor], vocab: Vocab, title: str = "",
                    keep: list[int] | None = None) -> EmbeddingExplorer:
        """One snapshot per named (V, d) embedding table; `keep` limits the tokens shown (default: all)."""
        ids = list(range(len(vocab))) if keep is None else list(keep)
        labels = [vocab.label(i) for i in ids]
        snapshots = []
        for name, table in tables.items():
            rows = table.detach()[ids]
            xy, share = pca_2d(rows)
            snapshots.append({
                "name": name,
                "xy": [[round(float(a), 4), round(float(b), 4)] for a, b in xy],
                "vectors": [[round(float(v), 4) for v in row] for row in rows],
                "note": f"{name}: the 2-D picture holds {share:.0%} of the variance of the {rows.shape[1]}-D "
                        "embeddings; the neighbour list uses all dimensions.",
            })
        return cls(labels=labels, groups=[char_group(s) for s in labels], snapshots=snapshots, title=title)


__all__ = ["EmbeddingExplorer", "char_group", "pca_2d"]
