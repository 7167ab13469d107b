"""Chapter 2: the computation-graph explorer works in the built book, and its gradients are right."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.e2e


def expected_neuron_grads(x1: float, x2: float, w1: float, w2: float, b: float) -> dict[str, float]:
    """o = tanh(x1*w1 + x2*w2 + b), differentiated by hand (independent of the widget and of storylib)."""
    n = x1 * w1 + x2 * w2 + b
    o = math.tanh(n)
    dn = 1 - o * o  # do/dn; every node upstream of n gets it times its local gradient
    return {"o": 1.0, "n": dn, "s": dn, "b": dn, "x1w1": dn, "x2w2": dn,
            "x1": w1 * dn, "w1": x1 * dn, "x2": w2 * dn, "w2": x2 * dn}


def shown(explorer, kind: str, label: str) -> float:
    text = explorer.locator(f'[data-testid="{kind}-{label}"]').text_content()
    return float(text.split()[-1])


def test_graph_explorer_backward_matches_the_chain_rule(open_chapter):
    page = open_chapter("ch02_micrograd", min_widgets=2)
    explorer = page.locator('[data-testid="graph-explorer"]').first
    explorer.wait_for()

    inputs = {"x1": 2.0, "x2": -0.5, "w1": 0.8, "w2": -0.7, "b": -0.3}
    explorer.locator('[data-testid="input-x1"]').fill("2")
    explorer.locator('[data-testid="input-w2"]').fill("-0.7")
    # After an input changes, the forward pass is redone and the grads are stale (0).
    n = 2.0 * 0.8 + -0.5 * -0.7 - 0.3
    assert shown(explorer, "data", "o") == pytest.approx(math.tanh(n), abs=1e-4)
    assert shown(explorer, "grad", "w1") == 0.0

    explorer.locator('[data-testid="backward"]').click()
    want = expected_neuron_grads(**inputs)
    for label, g in want.items():
        assert shown(explorer, "grad", label) == pytest.approx(g, abs=1e-4), f"grad of {label}"

    # Stepping through gives the same grads: one click seeds o.grad = 1, then one per operation.
    explorer.locator('[data-testid="reset"]').click()
    assert shown(explorer, "grad", "x1") == 0.0
    for _ in range(1 + 5):
        explorer.locator('[data-testid="step"]').click()
    assert "done" in explorer.locator('[data-testid="explain"]').text_content()
    for label, g in want.items():
        assert shown(explorer, "grad", label) == pytest.approx(g, abs=1e-4), f"grad of {label} after stepping"


def test_reused_node_collects_every_contribution(open_chapter):
    page = open_chapter("ch02_micrograd", min_widgets=2)
    explorer = page.locator('[data-testid="graph-explorer"]').nth(1)
    explorer.locator('[data-testid="input-x"]').fill("1.1")
    explorer.locator('[data-testid="backward"]').click()
    # y = (log(x*x + x) + x^-1.5) / relu(exp(x) + k), k = -2: dy/dx by the quotient and chain rules.
    x, k = 1.1, -2.0
    v = math.log(x * x + x) + x**-1.5
    w = math.exp(x) + k
    dv = (2 * x + 1) / (x * x + x) - 1.5 * x**-2.5
    dy_dx = dv / w - v * math.exp(x) / w**2
    assert shown(explorer, "grad", "x") == pytest.approx(dy_dx, abs=1e-4)
    assert shown(explorer, "grad", "k") == pytest.approx(-v / w**2, abs=1e-4)
