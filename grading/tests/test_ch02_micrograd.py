"""Chapter 2 — micrograd. The oracle is PyTorch autograd in float64.

- Each op's local gradient (`ch02.add` ... `ch02.relu`) is tested by calling `out._backward()` directly
  (after setting `out.grad`), so these tests do not need your `backward()`.
- `ch02.backward` is tested on random expression graphs with reused nodes, diamonds, and graphs where
  the order of the backward pass matters.
- `ch02.neuron` and `ch02.train_step` are compared with a PyTorch re-implementation with the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storylib.micrograd import MLP, Neuron, Value, export_graph, logistic_loss, make_moons, train_step

F64 = torch.float64
RTOL, ATOL = 1e-10, 1e-12


def t(x: float, grad: bool = True) -> torch.Tensor:
    return torch.tensor(float(x), dtype=F64, requires_grad=grad)


def close(a: float, b: float, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def torch_grads(out: torch.Tensor, inputs: list[torch.Tensor], upstream: float) -> list[float]:
    grads = torch.autograd.grad(out, inputs, grad_outputs=torch.tensor(upstream, dtype=F64), allow_unused=True)
    return [0.0 if g is None else g.item() for g in grads]


def values(rng: np.random.Generator, n: int, low: float = -3.0, high: float = 3.0) -> list[float]:
    """Non-uniform test inputs: a mix of small, ordinary and larger magnitudes of both signs."""
    x = rng.standard_t(df=3, size=n) * rng.choice([0.1, 1.0, 2.5], size=n)
    return [float(v) for v in np.clip(x, low, high)]


# ---------------------------------------------------------------- local gradients, one op at a time

BINARY = {"add": (lambda a, b: a + b), "mul": (lambda a, b: a * b)}
UNARY = {
    "exp": (lambda a: a.exp(), torch.exp, (-3.0, 3.0)),
    "log": (lambda a: a.log(), torch.log, (0.05, 6.0)),
    "tanh": (lambda a: a.tanh(), torch.tanh, (-4.0, 4.0)),
    "relu": (lambda a: a.relu(), torch.relu, (-3.0, 3.0)),
}


def check_binary_local(name: str, seed: int, pre: bool) -> None:
    rng = np.random.default_rng(seed)
    op = BINARY[name]
    for x, y, g in zip(values(rng, 12), values(rng, 12), values(rng, 12), strict=True):
        a, b = Value(x), Value(y)
        ga0, gb0 = (float(rng.normal()), float(rng.normal())) if pre else (0.0, 0.0)
        a.grad, b.grad = ga0, gb0
        out = op(a, b)
        assert out._prev == (a, b), f"{name}: out._prev should be (self, other) (the forward is given)"
        out.grad = g
        out._backward()
        ta, tb = t(x), t(y)
        ea, eb = torch_grads(op(ta, tb), [ta, tb], g)
        assert close(a.grad, ga0 + ea), (
            f"a {name} b with a={x:.4g}, b={y:.4g}, out.grad={g:.4g}: a.grad should be {ga0 + ea:.10g}, "
            f"got {a.grad:.10g}" + (f" (a.grad was {ga0:.4g} before: add to it with +=)" if pre else "")
        )
        assert close(b.grad, gb0 + eb), (
            f"a {name} b with a={x:.4g}, b={y:.4g}, out.grad={g:.4g}: b.grad should be {gb0 + eb:.10g}, "
            f"got {b.grad:.10g}" + (f" (b.grad was {gb0:.4g} before: add to it with +=)" if pre else "")
        )


def check_same_operand(name: str, seed: int) -> None:
    """a + a and a * a: the one node is both operands, so it must receive both contributions."""
    rng = np.random.default_rng(seed)
    for x, g in zip(values(rng, 8), values(rng, 8), strict=True):
        a = Value(x)
        out = BINARY[name](a, a)
        out.grad = g
        out._backward()
        ta = t(x)
        (expected,) = torch_grads(BINARY[name](ta, ta), [ta], g)
        assert close(a.grad, expected), (
            f"a {name} a with a={x:.4g}, out.grad={g:.4g}: a is used twice, so a.grad should be {expected:.10g} "
            f"(both contributions), got {a.grad:.10g} — use += so the second does not overwrite the first"
        )


def check_unary_local(name: str, seed: int, pre: bool) -> None:
    rng = np.random.default_rng(seed)
    op, torch_op, (low, high) = UNARY[name]
    xs = [float(v) for v in rng.uniform(low, high, size=10)] + ([0.0, -1e-3, 2e-3] if name == "relu" else [])
    for x in xs:
        g = float(rng.normal() * 2)
        a = Value(x)
        g0 = float(rng.normal()) if pre else 0.0
        a.grad = g0
        out = op(a)
        out.grad = g
        out._backward()
        ta = t(x)
        (expected,) = torch_grads(torch_op(ta), [ta], g)
        assert close(a.grad, g0 + expected), (
            f"{name}(x) with x={x:.4g}, out.grad={g:.4g}: x.grad should be {g0 + expected:.10g}, got {a.grad:.10g}"
            + (f" (x.grad was {g0:.4g} before: add to it with +=)" if pre else "")
        )


@pytest.mark.exercise("ch02.add")
def test_add_local_gradient_matches_pytorch():
    check_binary_local("add", seed=1, pre=False)


@pytest.mark.exercise("ch02.add")
def test_add_accumulates_into_grad():
    check_binary_local("add", seed=2, pre=True)
    check_same_operand("add", seed=3)


@pytest.mark.exercise("ch02.mul")
def test_mul_local_gradient_matches_pytorch():
    check_binary_local("mul", seed=4, pre=False)


@pytest.mark.exercise("ch02.mul")
def test_mul_accumulates_into_grad():
    check_binary_local("mul", seed=5, pre=True)
    check_same_operand("mul", seed=6)


@pytest.mark.exercise("ch02.pow")
@pytest.mark.parametrize("pre", [False, True], ids=["fresh", "accumulates"])
def test_pow_local_gradient_matches_pytorch(pre):
    rng = np.random.default_rng(7 + pre)
    # Integer exponents on numbers of both signs; fractional ones only on positive numbers.
    cases = [(x, k) for k in (2, 3, -1, -2, 1, 0) for x in values(rng, 4) if abs(x) > 0.05]
    cases += [(float(x), k) for k in (0.5, 1.5, -0.5, 2.7) for x in rng.uniform(0.1, 4.0, size=4)]
    for x, k in cases:
        g = float(rng.normal() * 2)
        g0 = float(rng.normal()) if pre else 0.0
        a = Value(x)
        a.grad = g0
        out = a**k
        out.grad = g
        out._backward()
        ta = t(x)
        (expected,) = torch_grads(ta**k, [ta], g)
        assert close(a.grad, g0 + expected), (
            f"x**{k} with x={x:.4g}, out.grad={g:.4g}: x.grad should be {g0 + expected:.10g}, got {a.grad:.10g}"
            + (f" (x.grad was {g0:.4g} before: add to it with +=)" if pre else "")
        )


@pytest.mark.exercise("ch02.exp")
@pytest.mark.parametrize("pre", [False, True], ids=["fresh", "accumulates"])
def test_exp_local_gradient_matches_pytorch(pre):
    check_unary_local("exp", seed=10 + pre, pre=pre)


@pytest.mark.exercise("ch02.log")
@pytest.mark.parametrize("pre", [False, True], ids=["fresh", "accumulates"])
def test_log_local_gradient_matches_pytorch(pre):
    check_unary_local("log", seed=12 + pre, pre=pre)


@pytest.mark.exercise("ch02.tanh")
@pytest.mark.parametrize("pre", [False, True], ids=["fresh", "accumulates"])
def test_tanh_local_gradient_matches_pytorch(pre):
    check_unary_local("tanh", seed=14 + pre, pre=pre)


@pytest.mark.exercise("ch02.relu")
@pytest.mark.parametrize("pre", [False, True], ids=["fresh", "accumulates"])
def test_relu_local_gradient_matches_pytorch(pre):
    check_unary_local("relu", seed=16 + pre, pre=pre)


# ---------------------------------------------------------------- backward on whole graphs


def random_graph(seed: int, n_leaves: int = 4, n_ops: int = 30):
    """A random expression DAG built twice, from Values and from float64 tensors, with every op.

    Operands are drawn from all nodes so far (recent ones more often), so nodes get reused; each op is
    only applied where it is defined and well-conditioned. Returns (root, torch root, pairs), where pairs
    are the (Value, tensor) of every named node, leaves first.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for i, x in enumerate(values(rng, n_leaves, -2.0, 2.0)):
        pairs.append((Value(x, label=f"x{i}"), t(x)))
    binary = {
        "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
    }
    consts = {
        "c+": lambda a, c: c + a, "c-": lambda a, c: c - a, "c*": lambda a, c: c * a, "c/": lambda a, c: c / a,
        "+c": lambda a, c: a + c, "-c": lambda a, c: a - c, "*c": lambda a, c: a * c, "/c": lambda a, c: a / c,
    }
    unary = {
        "neg": lambda a: -a, "exp": lambda a: a.exp(), "log": lambda a: a.log(), "tanh": lambda a: a.tanh(),
        "relu": lambda a: a.relu(), "sq": lambda a: a**2, "cube": lambda a: a**3, "sqrt": lambda a: a**0.5,
        "inv": lambda a: a**-1, "pow1.5": lambda a: a**1.5,
    }
    unary_torch = {"exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "relu": torch.relu}
    positive_only = {"log", "sqrt", "pow1.5"}
    kinds = list(binary) + list(consts) + list(unary)
    made = 0
    while made < n_ops:
        kind = kinds[rng.integers(len(kinds))]
        # Prefer recent nodes, but any earlier node may be reused.
        pick = lambda: pairs[len(pairs) - 1 - min(int(rng.geometric(0.35)) - 1, len(pairs) - 1)]
        (va, ta), (vb, tb) = pick(), pick()
        a = va.data
        if kind in binary:
            if kind == "/" and abs(vb.data) < 0.2:
                continue
            v, tt = binary[kind](va, vb), binary[kind](ta, tb)
        elif kind in consts:
            c = float(rng.choice([-1.5, 0.5, 2.0, 3.0]))
            if kind == "c/" and abs(a) < 0.2:
                continue
            v, tt = consts[kind](va, c), consts[kind](ta, c)
        else:
            if (kind in positive_only and a < 0.05) or (kind == "inv" and abs(a) < 0.2) or (kind == "exp" and a > 3):
                continue
            if kind == "relu" and abs(a) < 1e-6:
                continue
            v = unary[kind](va)
            tt = unary_torch[kind](ta) if kind in unary_torch else unary[kind](ta)
        if not abs(v.data) < 30:  # keep numbers moderate so rtol 1e-10 is meaningful
            continue
        tt.retain_grad()
        v.label = f"v{made}"
        pairs.append((v, tt))
        made += 1
    # The output combines several nodes, so most of the graph gets a gradient.
    root, troot = pairs[-1]
    for k in (2, 5, 9):
        root, troot = root + pairs[-k][0] * 0.5, troot + pairs[-k][1] * 0.5
    return root, troot, pairs


def assert_grads_match(pairs, context: str) -> None:
    for v, tt in pairs:
        expected = 0.0 if tt.grad is None else tt.grad.item()
        assert close(v.grad, expected, atol=1e-10), (
            f"{context}: node {v.label} (op {v._op or 'leaf'!r}, data {v.data:.6g}) should have grad "
            f"{expected:.10g}, got {v.grad:.10g}"
        )


@pytest.mark.exercise("ch02.backward")
def test_backward_matches_pytorch_on_random_graphs():
    for seed in range(6):
        root, troot, pairs = random_graph(seed)
        assert close(root.data, troot.item()), "forward values differ from PyTorch (the forward is given code)"
        root.backward()
        troot.backward()
        assert root.grad == 1.0, f"after root.backward(), root.grad should be 1.0 (d root/d root), got {root.grad}"
        assert_grads_match(pairs, f"random graph {seed}")


@pytest.mark.exercise("ch02.backward")
def test_backward_reused_nodes_accumulate():
    rng = np.random.default_rng(20)
    for x0 in values(rng, 5):
        x = Value(x0, label="x")
        a = x * x + x  # x is used three times
        a.label = "a"
        b = a * a * x + a.tanh()  # a three times, x once more
        b.label = "b"
        tx = t(x0)
        ta = tx * tx + tx
        ta.retain_grad()
        tb = ta * ta * tx + torch.tanh(ta)
        b.backward()
        tb.backward()
        assert close(a.grad, ta.grad.item()), (
            f"a = x*x + x is used three times in b; a.grad should be {ta.grad.item():.10g}, got {a.grad:.10g}"
        )
        assert close(x.grad, tx.grad.item()), (
            f"x = {x0:.4g} is used in several places; x.grad should be {tx.grad.item():.10g} "
            f"(the sum over every use), got {x.grad:.10g}"
        )


@pytest.mark.exercise("ch02.backward")
def test_backward_runs_in_topological_order():
    """a reaches the output along a short and a long path: a must not pass on its grad before it has both."""
    for first_short in (True, False):
        x = Value(1.7, label="x")
        a = x * 2.0
        b = ((a * 3.0).tanh() + 0.3) * -1.5  # the long path from a to out
        out = a + b if first_short else b + a
        out.backward()
        tx = t(1.7)
        ta = tx * 2.0
        tout = ta + ((ta * 3.0).tanh() + 0.3) * -1.5
        tout.backward()
        assert close(x.grad, tx.grad.item()), (
            f"x.grad should be {tx.grad.item():.10g}, got {x.grad:.10g}: a node must run its _backward only after "
            "every node that uses it has run theirs (reverse topological order)"
        )


@pytest.mark.exercise("ch02.backward")
def test_backward_visits_each_node_once_in_a_diamond_chain():
    # v_{k+1} = f(v_k) * g(v_k): every node is used twice, so there are 2^depth paths to the input.
    depth = 12
    x = Value(0.4, label="x")
    nodes, calls = [x], {}
    v = x
    for _ in range(depth):
        left, right = v * 1.1, (v * 0.5 + 1.0).tanh()
        v = left + right
        nodes += [left, right, v]
    for node in nodes[1:]:
        inner = node._backward

        def counted(node=node, inner=inner):
            calls[id(node)] = calls.get(id(node), 0) + 1
            inner()

        node._backward = counted
    v.backward()
    tx = t(0.4)
    tv = tx
    for _ in range(depth):
        tv = tv * 1.1 + torch.tanh(tv * 0.5 + 1.0)
    tv.backward()
    assert close(x.grad, tx.grad.item()), f"x.grad should be {tx.grad.item():.10g}, got {x.grad:.10g}"
    repeated = [n for n in nodes[1:] if calls.get(id(n), 0) != 1]
    assert not repeated, (
        f"{len(repeated)} nodes had their _backward run {calls.get(id(repeated[0]), 0)} times instead of once: "
        "remember which nodes you have visited when building the topological order"
    )


# ---------------------------------------------------------------- neurons and MLPs


def torch_mlp(model: MLP):
    """The model's weights as float64 leaf tensors, and a function that runs the same network."""
    params = []
    for layer in model.layers:
        W = torch.tensor([[w.data for w in n.w] for n in layer.neurons], dtype=F64, requires_grad=True)
        b = torch.tensor([n.b.data for n in layer.neurons], dtype=F64, requires_grad=True)
        params.append((W, b, [n.act for n in layer.neurons]))

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = x
        for W, b, acts in params:
            z = W @ h + b
            h = torch.stack([torch.tanh(zi) if a == "tanh" else torch.relu(zi) if a == "relu" else zi
                             for zi, a in zip(z, acts, strict=True)])
        return h

    return params, forward


def assert_param_grads_match(model: MLP, params, context: str) -> None:
    for li, (layer, (W, b, _)) in enumerate(zip(model.layers, params, strict=True)):
        for ni, n in enumerate(layer.neurons):
            for wi, w in enumerate(n.w):
                assert close(w.grad, W.grad[ni, wi].item(), rtol=1e-9, atol=1e-11), (
                    f"{context}: layer {li} neuron {ni} weight {wi} should have grad "
                    f"{W.grad[ni, wi].item():.10g}, got {w.grad:.10g}"
                )
            assert close(n.b.grad, b.grad[ni].item(), rtol=1e-9, atol=1e-11), (
                f"{context}: layer {li} neuron {ni} bias should have grad {b.grad[ni].item():.10g}, got {n.b.grad:.10g}"
            )


@pytest.mark.exercise("ch02.neuron")
@pytest.mark.parametrize("act", ["tanh", "relu", "linear"])
def test_neuron_matches_pytorch(act):
    import random

    rng = np.random.default_rng(30)
    for nin in (1, 3, 7):
        n = Neuron(nin, act=act, rng=random.Random(nin))
        n.b.data = float(rng.normal())
        for _ in range(4):
            x = values(rng, nin)
            out = n(x)
            assert isinstance(out, Value), f"a neuron should return one Value, got {type(out).__name__}"
            z = sum(w.data * xi for w, xi in zip(n.w, x, strict=True)) + n.b.data
            expected = {"tanh": math.tanh(z), "relu": max(0.0, z), "linear": z}[act]
            assert close(out.data, expected), (
                f"{act} neuron with w={[round(w.data, 3) for w in n.w]}, b={n.b.data:.3f}, "
                f"x={[round(v, 3) for v in x]}: output should be {expected:.10g}, got {out.data:.10g}"
            )


@pytest.mark.exercise("ch02.neuron")
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_mlp_forward_and_gradients_match_pytorch(act):
    rng = np.random.default_rng(31)
    model = MLP(3, [5, 4, 2], act=act, seed=7)
    for layer in model.layers:  # non-zero biases, so a bias that is ignored shows up
        for n in layer.neurons:
            n.b.data = float(rng.normal() * 0.3)
    params, forward = torch_mlp(model)
    X = [values(rng, 3) for _ in range(5)]
    coefs = values(rng, 10)
    xs_v = [[Value(v) for v in x] for x in X]  # Values as inputs: they get gradients too
    outs = [model(x) for x in xs_v]
    assert all(isinstance(o, list) and len(o) == 2 for o in outs), "an MLP with 2 outputs should return 2 Values"
    xs_t = [torch.tensor(x, dtype=F64, requires_grad=True) for x in X]
    touts = [forward(x) for x in xs_t]
    for o, to in zip(outs, touts, strict=True):
        for oi, toi in zip(o, to, strict=True):
            assert close(oi.data, toi.item()), f"MLP output should be {toi.item():.10g}, got {oi.data:.10g}"
    # A scalar made from all outputs; backprop through the whole network.
    loss = sum((c * o for c, o in zip(coefs, [oi for o in outs for oi in o], strict=True)), Value(0.0))
    tloss = sum(c * o for c, o in zip(coefs, [oi for o in touts for oi in o], strict=True))
    model.zero_grad()
    loss.backward()
    tloss.backward()
    assert_param_grads_match(model, params, f"MLP({act})")
    for xv, xt in zip(xs_v, xs_t, strict=True):
        for v, g in zip(xv, xt.grad.tolist(), strict=True):
            assert close(v.grad, g, rtol=1e-9, atol=1e-11), f"an input's grad should be {g:.10g}, got {v.grad:.10g}"


# ---------------------------------------------------------------- training


def torch_logistic(scores: torch.Tensor, y: list[int]) -> torch.Tensor:
    return torch.log(1 + torch.exp(-torch.tensor(y, dtype=F64) * scores)).mean()


@pytest.mark.exercise("ch02.train_step")
def test_train_step_matches_pytorch_sgd():
    X, y = make_moons(13, noise=0.2, seed=3)
    model = MLP(2, [6, 5, 1], act="tanh", seed=11)
    params, forward = torch_mlp(model)
    lr = 0.37
    for step in range(3):
        tx = torch.tensor(X, dtype=F64)
        tloss = torch_logistic(torch.stack([forward(x)[0] for x in tx]), y)
        tloss.backward()
        loss = train_step(model, X, y, lr)
        assert isinstance(loss, float), f"train_step should return the loss as a float, got {type(loss).__name__}"
        assert close(loss, tloss.item()), (
            f"step {step}: train_step should return the loss before the update, {tloss.item():.10g}; got {loss:.10g}"
        )
        with torch.no_grad():
            for W, b, _ in params:
                W -= lr * W.grad
                b -= lr * b.grad
                W.grad = None
                b.grad = None
        for li, (layer, (W, b, _)) in enumerate(zip(model.layers, params, strict=True)):
            got = [[w.data for w in n.w] + [n.b.data] for n in layer.neurons]
            want = torch.cat([W, b[:, None]], dim=1).tolist()
            assert np.allclose(got, want, rtol=1e-9, atol=1e-11), (
                f"after step {step}, the parameters of layer {li} differ from gradient descent "
                "p.data -= lr * p.grad" + (" (did you zero the gradients before backward?)" if step else "")
            )


@pytest.mark.exercise("ch02.train_step")
def test_train_step_learns_two_moons():
    X, y = make_moons(24, noise=0.1, seed=5)
    model = MLP(2, [6, 1], act="tanh", seed=2)
    start = logistic_loss([model(x) for x in X], y).data
    losses = [train_step(model, X, y, lr=0.5) for _ in range(25)]
    end = logistic_loss([model(x) for x in X], y).data
    assert losses[0] == pytest.approx(start, rel=1e-12), "the first loss returned should be the loss before training"
    assert end < 0.75 * start, (
        f"25 steps of gradient descent should lower the loss well below {start:.3f}, got {end:.3f}"
    )


# ---------------------------------------------------------------- given code (not graded)


def test_forward_of_every_op():
    a, b = Value(1.5), Value(-0.4)
    checks = {
        "a+b": ((a + b).data, 1.1), "a-b": ((a - b).data, 1.9), "a*b": ((a * b).data, -0.6),
        "a/b": ((a / b).data, -3.75), "-a": ((-a).data, -1.5), "a**3": ((a**3).data, 3.375),
        "2+a": ((2 + a).data, 3.5), "2-a": ((2 - a).data, 0.5), "2*a": ((2 * a).data, 3.0),
        "3/a": ((3 / a).data, 2.0), "exp": (b.exp().data, math.exp(-0.4)), "log": (a.log().data, math.log(1.5)),
        "tanh": (b.tanh().data, math.tanh(-0.4)), "relu": (b.relu().data, 0.0),
    }
    for name, (got, want) in checks.items():
        assert close(got, want), f"{name}: {got} != {want}"


def test_make_moons_is_deterministic_and_balanced():
    X, y = make_moons(31, seed=4)
    assert (X, y) == make_moons(31, seed=4)
    assert len(X) == len(y) == 31 and all(len(p) == 2 for p in X)
    assert sorted(set(y)) == [-1, 1] and abs(sum(y)) <= 1


def test_export_graph_is_topological_and_json_able():
    import json

    x, w = Value(2.0, label="x"), Value(-3.0, label="w")
    out = (x * w + x).tanh()
    g = json.loads(json.dumps(export_graph(out)))
    assert [n["id"] for n in g["nodes"]] == list(range(len(g["nodes"])))
    assert all(j < n["id"] for n in g["nodes"] for j in n["inputs"]), "operands must come before their results"
    assert g["nodes"][-1]["op"] == "tanh" and len({n["label"] for n in g["nodes"]}) == len(g["nodes"])
    assert len(g["edges"]) == sum(len(n["inputs"]) for n in g["nodes"])
