"""A computation-graph explorer for Chapter 2: see data flow forward and gradients flow backward.

    from storylib.widgets.graph import GraphExplorer
    GraphExplorer.neuron()                    # tanh(x1*w1 + x2*w2 + b)
    GraphExplorer(some_value, title="...")    # any small micrograd expression

The graph (from `storylib.micrograd.export_graph`) is a trait; forward and backward of the small
graph are re-implemented in the widget's JavaScript, so it stays live in the static book where no
Python kernel runs. Leaves get number inputs and sliders; "backward" runs the whole reverse sweep,
"step" runs one node's local gradient at a time, in reverse topological order, and says what it did.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from storylib.micrograd import Value, export_graph


class GraphExplorer(anywidget.AnyWidget):
    """Explore one small expression: edit its leaves, then watch backward fill in every grad."""

    _esm = Path(__file__).parent / "js" / "graph.js"
    _css = Path(__file__).parent / "js" / "graph.css"
    graph = traitlets.Dict().tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, root: Value | dict, title: str = "", **kwargs) -> None:
        graph = root if isinstance(root, dict) else export_graph(root)
        super().__init__(graph=graph, title=title, **kwargs)

    @classmethod
    def neuron(
        cls, x: tuple[float, float] = (1.5, -0.5), w: tuple[float, float] = (0.8, -1.2), b: float = -0.3
    ) -> GraphExplorer:
        """One tanh neuron with two inputs: o = tanh(x1*w1 + x2*w2 + b)."""
        return cls(neuron_expression(x, w, b), title="One neuron: o = tanh(x1·w1 + x2·w2 + b)")


def neuron_expression(
    x: tuple[float, float] = (1.5, -0.5), w: tuple[float, float] = (0.8, -1.2), b: float = -0.3
) -> Value:
    """o = tanh(x1*w1 + x2*w2 + b), with every node labelled."""
    x1, x2 = Value(x[0], label="x1"), Value(x[1], label="x2")
    w1, w2 = Value(w[0], label="w1"), Value(w[1], label="w2")
    bias = Value(b, label="b")
    x1w1 = x1 * w1
    x1w1.label = "x1w1"
    x2w2 = x2 * w2
    x2w2.label = "x2w2"
    s = x1w1 + x2w2
    s.label = "s"
    n = s + bias
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return o
