"""Build solutions/ch02_micrograd.ipynb, the nbgrader source notebook of Chapter 2 (micrograd).

    .venv/bin/python scripts/notebooks/build_ch02_micrograd.py      # then `make exercises`
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402


def build() -> Path:
    nb = SolutionNotebook("ch02_micrograd", title="Chapter 2 — micrograd: backpropagation from scratch")
    nb.markdown(
        """
        In this notebook you write the heart of a scalar autograd engine, `storylib/micrograd.py`, and use it
        to train a small neural network. Read the book chapter alongside (§2.1–§2.7): each exercise below
        says which section teaches it.

        Work in order. First the seven *local gradients* (the `_backward` closure of each operation); they
        are checked one node at a time, without a backward pass. Then `Value.backward`, which calls them in
        reverse topological order. Then a neuron, and one step of gradient descent.

        Edit the file, save, and run the graded cell under each exercise (or `llm101n check ch02` in a
        terminal). This notebook reloads your `storylib` automatically.
        """
    )
    nb.code("import math\n\nimport torch")

    nb.markdown("## Local gradients (§2.3)\n\nEach `_backward` *adds* `local gradient × out.grad` to the grads of "
                "its operands. Try one by setting `out.grad` yourself and calling `out._backward()`.")
    nb.exercise("ch02.add", try_it="""
        a, b = Value(2.0), Value(-3.0)
        out = a + b
        out.grad = 5.0
        out._backward()
        a.grad, b.grad          # both should be 5.0
    """)
    nb.exercise("ch02.mul", try_it="""
        a, b = Value(2.0), Value(-3.0)
        out = a * b
        out.grad = 5.0
        out._backward()
        a.grad, b.grad          # (-15.0, 10.0): each gets the *other* operand times out.grad
    """)
    nb.exercise("ch02.pow", try_it="""
        x = Value(3.0)
        out = x**2
        out.grad = 1.0
        out._backward()
        x.grad                  # 6.0
    """)
    nb.exercise("ch02.exp", try_it="""
        x = Value(1.0)
        out = x.exp()
        out.grad = 1.0
        out._backward()
        x.grad, math.e          # the same number
    """)
    nb.exercise("ch02.log", try_it="""
        x = Value(4.0)
        out = x.log()
        out.grad = 1.0
        out._backward()
        x.grad                  # 0.25
    """)
    nb.exercise("ch02.tanh", try_it="""
        x = Value(0.5)
        out = x.tanh()
        out.grad = 1.0
        out._backward()
        x.grad, 1 - math.tanh(0.5) ** 2
    """)
    nb.exercise("ch02.relu", try_it="""
        for v in (-2.0, 3.0):
            x = Value(v)
            out = x.relu()
            out.grad = 1.0
            out._backward()
            print(v, x.grad)    # 0.0 for the negative input, 1.0 for the positive one
    """)

    nb.markdown("## The backward pass (§2.4)")
    nb.exercise("ch02.backward", try_it="""
        x = Value(3.0, label="x")
        y = x * x + x           # x is used three times
        y.backward()
        x.grad                  # 2x + 1 = 7.0
    """)
    nb.question(
        "ch02_q_chain",
        points=1,
        prompt=r"""
        Let $f(x) = \tanh(x^2 - 1)\cdot x$. Use **your engine** (build the expression from a `Value`, call
        `backward()`) to compute $f'(0.8)$, and store the number in `df_dx` (a Python float).
        """,
        solution="""
        x = Value(0.8)
        f = (x**2 - 1).tanh() * x
        f.backward()
        df_dx = x.grad
        """,
        test="""
        xt = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        (torch.tanh(xt**2 - 1) * xt).backward()
        assert isinstance(df_dx, float), f"df_dx should be a float, got {type(df_dx).__name__}"
        assert abs(df_dx - xt.grad.item()) < 1e-9, f"f'(0.8) should be {xt.grad.item():.6f}, got {df_dx:.6f}"
        """,
    )

    nb.markdown("## A neuron, and training (§2.6, §2.7)")
    nb.exercise("ch02.neuron", try_it="""
        import random

        n = Neuron(3, act="tanh", rng=random.Random(0))
        out = n([1.0, -2.0, 0.5])
        print(out, "  expected", math.tanh(sum(w.data * x for w, x in zip(n.w, [1.0, -2.0, 0.5])) + n.b.data))
    """)
    nb.exercise("ch02.train_step", try_it="""
        from storylib.micrograd import MLP, make_moons

        X, y = make_moons(40, noise=0.1, seed=0)
        model = MLP(2, [6, 6, 1], seed=0)
        for step in range(30):
            loss = train_step(model, X, y, lr=0.8)
            if step % 5 == 0:
                print(step, round(loss, 4))   # should go down
    """)
    nb.question(
        "ch02_q_margin",
        points=1,
        prompt=r"""
        The logistic loss of one point is $\ell = \log(1 + e^{-y s})$ for a score $s$ and a label $y = \pm 1$.
        With your engine, find $\partial \ell / \partial s$ for $s = 1.2$ and $y = -1$ (a confident, wrong
        score) and store it in `dl_ds`. Is the gradient positive or negative, and which way will gradient
        descent move the score?
        """,
        solution="""
        s = Value(1.2)
        loss = (1 + (s * 1.0).exp()).log()      # -y * s with y = -1
        loss.backward()
        dl_ds = s.grad
        """,
        test="""
        expected = 1 / (1 + math.exp(-1.2))     # sigma(-y s) * (-y)
        assert abs(dl_ds - expected) < 1e-9, f"dl/ds should be {expected:.6f}, got {dl_ds}"
        """,
    )
    return nb.write()


if __name__ == "__main__":
    print("wrote", build())
