"""Interactive widgets for the book (anywidget, self-contained JavaScript, no network).

A lazy index: `from storylib.widgets import BigramExplorer` imports only that widget's module, so a
learner's stubbed exercises elsewhere in storylib never stop a chapter's widget from loading.

Each widget's front end is a self-contained ES module and a style sheet, js/<module>.js and js/<module>.css
(`make lint` runs eslint on them). anywidget reads them once; it would watch them for edits only with
ANYWIDGET_HMR=1 and the watchfiles package (live reload while writing a widget in JupyterLab).
"""

from __future__ import annotations

import importlib

_WIDGETS = {
    "AttentionExplorer": "storylib.widgets.attention",
    "BigramExplorer": "storylib.widgets.bigram",
    "EmbeddingExplorer": "storylib.widgets.mlp",
    "GraphExplorer": "storylib.widgets.graph",
    "TokenViewer": "storylib.widgets.tokens",
    "LossMaskView": "storylib.widgets.datasets",
    "StoryChat": "storylib.widgets.chat",
}

__all__ = sorted(_WIDGETS)


def __getattr__(name: str):
    if name in _WIDGETS:
        return getattr(importlib.import_module(_WIDGETS[name]), name)
    raise AttributeError(f"module 'storylib.widgets' has no attribute {name!r}")
