"""Plots for Chapter 8 and the lab pages, drawn from the committed benchmark JSON (no GPU needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "cuda_labs_h100.json"


def load(path: Path = RESULTS) -> dict:
    return json.loads(Path(path).read_text())


def bars(labels, values, reference, ref_label, unit, title, goal=None):
    """Horizontal bars of each version, with the baseline measured in the same run as a dashed line (and, when
    `goal` is given, the lab's goal for the reader's kernel as a dotted one)."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    ax.barh(labels, values, color="tab:blue")
    ax.axvline(reference, color="k", ls="--", label=f"{ref_label}: {reference:,.0f} {unit}")
    if goal is not None:
        ax.axvline(goal, color="tab:red", ls=":", label=f"goal for your kernel: {goal:,.0f} {unit}")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.1f} ({100 * v / reference:.0f}%)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def grid_picture(title: str, grids: list[tuple[str, np.ndarray, int]]):
    """2-D arrays side by side, colour = which block/thread computes each element, lines every `tile` elements."""
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.4), squeeze=False)
    for ax, (name, owner, tile) in zip(axes[0], grids, strict=True):
        ax.imshow(owner % 20, cmap="tab20", interpolation="nearest", vmin=0, vmax=19)
        for x in np.arange(tile, owner.shape[0], tile) - 0.5:
            ax.axhline(x, color="black", lw=1)
            ax.axvline(x, color="black", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def access_picture(title: str, reads: list[tuple[str, np.ndarray]], note: str = ""):
    """Which thread touches which address: one row of cells per array, colour = thread (or warp) index."""
    fig, axes = plt.subplots(len(reads), 1, figsize=(8, 0.9 * len(reads) + 0.6), squeeze=False)
    for ax, (name, owner) in zip(axes[:, 0], reads, strict=True):
        owner = np.atleast_2d(owner)
        ax.imshow(np.ma.masked_less(owner, 0), cmap="tab20", aspect="auto", interpolation="nearest")
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_xticks([])
    axes[0, 0].set_title(title, fontsize=10)
    if note:
        axes[-1, 0].set_xlabel(note, fontsize=8)
    fig.tight_layout()
    return fig
