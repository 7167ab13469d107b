"""Interactive widgets for the book (anywidget, self-contained JavaScript, no network).

A lazy index: `from storylib.widgets import BigramExplorer` imports only that widget's module, so a
learner's stubbed exercises elsewhere in storylib never stop a chapter's widget from loading.

Each widget's front end is an ES module and a style sheet, js/<module>.js and js/<module>.css (`make lint` runs
eslint on them). anywidget loads a module from a blob: URL, where it cannot import another file, so the helpers
several widgets share live in js/_dom.js and `front_end` puts them before the widget's own code.
"""

from __future__ import annotations

import importlib
from pathlib import Path

JS = Path(__file__).parent / "js"

_WIDGETS = {
    "AttentionExplorer": "storylib.widgets.attention",
    "BigramExplorer": "storylib.widgets.bigram",
    "EmbeddingExplorer": "storylib.widgets.mlp",
    "GraphExplorer": "storylib.widgets.graph",
    "TokenViewer": "storylib.widgets.tokens",
    "LossMaskView": "storylib.widgets.datasets",
    "StoryChat": "storylib.widgets.chat",
    "ReplyCompare": "storylib.widgets.compare",
    "DenoiseViewer": "storylib.widgets.denoise",
    "StrideExplorer": "storylib.widgets.strides",
    "FloatExplorer": "storylib.widgets.floats",
}

__all__ = sorted(_WIDGETS)


def front_end(module: str) -> str:
    """The ES module of one widget: js/_dom.js, then js/<module>.js."""
    return (JS / "_dom.js").read_text(encoding="utf-8") + "\n" + (JS / f"{module}.js").read_text(encoding="utf-8")


def __getattr__(name: str):
    if name in _WIDGETS:
        return getattr(importlib.import_module(_WIDGETS[name]), name)
    raise AttributeError(f"module 'storylib.widgets' has no attribute {name!r}")
