"""Chapter 2 — micrograd: a scalar autograd engine and a tiny neural network built on it.

Read this file top to bottom. It has four parts:

1. `Value`: a number that remembers how it was computed. Every operation makes a new `Value` whose
   `_prev` are the operands and whose `_backward` closure knows the operation's *local gradient*:
   given `out.grad` (d loss / d out), it adds d loss / d operand to each operand's `.grad`.
2. `Value.backward()`: sort the graph topologically and run every `_backward` from the output back
   to the leaves — the chain rule, applied once per node.
3. `Neuron`, `Layer`, `MLP`: a neural network is just a big expression made of `Value`s.
4. A loss, a training step, a two-moons dataset, and `export_graph` (the graph as JSON-able dicts,
   for the computation-graph widget).

Everything is plain Python floats: slow, but every number is one you can print and reason about.
Later chapters use PyTorch, whose autograd is this same idea applied to whole tensors at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence

# ---------------------------------------------------------------- 1. Value: a number with a history


class Value:
    """A scalar in a computation graph.

    data:      the number itself (a Python float).
    grad:      d(output)/d(this value), filled in by `backward()`; starts at 0.0.
    _prev:     the operands this value was computed from (a tuple, in order; may repeat a node).
    _op:       the operation that made it ('' for a leaf), e.g. '+', '*', '**2', 'tanh'.
    label:     an optional name, used when printing and drawing graphs.
    _backward: a closure that adds this node's contribution to the grads of its operands.
    """

    def __init__(self, data: float, _prev: tuple[Value, ...] = (), _op: str = "", label: str = "") -> None:
        self.data = float(data)
        self.grad = 0.0
        self._prev = tuple(_prev)
        self._op = _op
        self.label = label
        self._backward: Callable[[], None] = lambda: None  # a leaf has nothing to pass on

    def __repr__(self) -> str:
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.6g}, grad={self.grad:.6g})"

    # --- the primitive operations: forward is given, the local gradient (`_backward`) is the exercise.
    # Each `_backward` *adds* (+=) to the operands' grads: a node used twice receives two contributions.

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            """out = self + other:  d out/d self = 1,  d out/d other = 1."""
            ### BEGIN SOLUTION ch02.add (§2.3, 1 pt): both operands get 1 * out.grad; add it (+=), don't assign
            self.grad += out.grad
            other.grad += out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            """out = self * other:  d out/d self = other.data,  d out/d other = self.data."""
            ### BEGIN SOLUTION ch02.mul (§2.3, 1 pt): each operand's local gradient is the other one's data
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def __pow__(self, k: float) -> Value:
        assert isinstance(k, int | float), "only constant exponents: Value ** number"
        out = Value(self.data**k, (self,), f"**{k:g}")

        def _backward() -> None:
            """out = self ** k (k a constant):  d out/d self = k * self.data ** (k - 1)."""
            ### BEGIN SOLUTION ch02.pow (§2.3, 1 pt): the power rule, k * x**(k-1), times out.grad
            self.grad += k * self.data ** (k - 1) * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward() -> None:
            """out = e ** self:  d out/d self = e ** self = out.data."""
            ### BEGIN SOLUTION ch02.exp (§2.3, 1 pt): exp is its own derivative, and out.data already holds it
            self.grad += out.data * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def log(self) -> Value:
        assert self.data > 0, f"log needs a positive number, got {self.data}"
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:
            """out = ln(self):  d out/d self = 1 / self.data."""
            ### BEGIN SOLUTION ch02.log (§2.3, 1 pt): d ln(x)/dx = 1/x
            self.grad += (1.0 / self.data) * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        out = Value(math.tanh(self.data), (self,), "tanh")

        def _backward() -> None:
            """out = tanh(self):  d out/d self = 1 - tanh(self)**2 = 1 - out.data**2."""
            ### BEGIN SOLUTION ch02.tanh (§2.3, 1 pt): 1 - tanh(x)**2, and out.data is tanh(x)
            self.grad += (1.0 - out.data**2) * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(0.0, self.data), (self,), "relu")

        def _backward() -> None:
            """out = max(0, self):  d out/d self = 1 where self.data > 0, else 0 (we pick 0 at exactly 0)."""
            ### BEGIN SOLUTION ch02.relu (§2.3, 1 pt): out.grad passes through where the input was positive
            self.grad += (1.0 if self.data > 0 else 0.0) * out.grad
            ### END SOLUTION

        out._backward = _backward
        return out

    # --- everything else is built from the primitives, so it needs no gradient code of its own.

    def __neg__(self) -> Value:  # -self
        return self * -1

    def __sub__(self, other: Value | float) -> Value:  # self - other
        return self + (-other)

    def __truediv__(self, other: Value | float) -> Value:  # self / other
        other = other if isinstance(other, Value) else Value(other)
        return self * other**-1

    def __radd__(self, other: float) -> Value:  # other + self, e.g. 2 + x, or sum([...]) starting at 0
        return self + other

    def __rsub__(self, other: float) -> Value:  # other - self
        return other + (-self)

    def __rmul__(self, other: float) -> Value:  # other * self
        return self * other

    def __rtruediv__(self, other: float) -> Value:  # other / self
        return other * self**-1

    # ------------------------------------------------------------ 2. backpropagation

    def backward(self) -> None:
        """Fill in `.grad` of every node this value depends on: d self / d node.

        Sets self.grad = 1 (d self/d self), then calls each node's `_backward` exactly once, in
        reverse topological order: a node passes its gradient on only after *every* node that uses
        it has added its contribution. Grads accumulate, so call `zero_grad` (or build a fresh
        graph) before calling `backward` again.
        """
        ### BEGIN SOLUTION ch02.backward (§2.4, 3 pts): topo-sort by DFS (each node once), grad=1, _backward in reverse
        topo: list[Value] = []
        visited: set[int] = set()

        def build(node: Value) -> None:
            if id(node) not in visited:
                visited.add(id(node))
                for child in node._prev:
                    build(child)
                topo.append(node)  # after all its operands: operands come first

        build(self)
        self.grad = 1.0
        for node in reversed(topo):
            node._backward()
        ### END SOLUTION


# ---------------------------------------------------------------- 3. neurons, layers, networks


class Module:
    """Anything with parameters: it can list them and reset their gradients."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0


ACTIVATIONS = ("tanh", "relu", "linear")


class Neuron(Module):
    """One neuron: act(w · x + b), with nin weights w and a bias b."""

    def __init__(self, nin: int, act: str = "tanh", rng: random.Random | None = None) -> None:
        assert act in ACTIVATIONS, f"act must be one of {ACTIVATIONS}, got {act!r}"
        rng = rng or random.Random()
        self.w = [Value(rng.uniform(-1, 1), label=f"w{i}") for i in range(nin)]
        self.b = Value(0.0, label="b")
        self.act = act

    def __call__(self, x: Sequence[Value | float]) -> Value:
        """The neuron's output for inputs x (len(x) == len(self.w)), as one Value.

        act = w[0]*x[0] + w[1]*x[1] + ... + b, then tanh(act), relu(act), or act itself ('linear'),
        according to self.act.
        """
        ### BEGIN SOLUTION ch02.neuron (§2.6, 2 pts): sum of w_i * x_i plus b, then self.act
        assert len(x) == len(self.w), f"this neuron takes {len(self.w)} inputs, got {len(x)}"
        act = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        if self.act == "tanh":
            return act.tanh()
        if self.act == "relu":
            return act.relu()
        return act
        ### END SOLUTION

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        return f"{self.act.capitalize()}Neuron({len(self.w)})"


class Layer(Module):
    """nout neurons that all read the same nin inputs."""

    def __init__(self, nin: int, nout: int, act: str = "tanh", rng: random.Random | None = None) -> None:
        self.neurons = [Neuron(nin, act, rng) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | float]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer([{', '.join(str(n) for n in self.neurons)}])"


class MLP(Module):
    """A multi-layer perceptron: layers of sizes nouts, `act` in between, a linear last layer."""

    def __init__(self, nin: int, nouts: Sequence[int], act: str = "tanh", seed: int | None = 0) -> None:
        rng = random.Random(seed)
        sizes = [nin, *nouts]
        acts = [act] * (len(nouts) - 1) + ["linear"]
        self.layers = [Layer(sizes[i], sizes[i + 1], acts[i], rng) for i in range(len(nouts))]

    def __call__(self, x: Sequence[Value | float]) -> Value | list[Value]:
        for layer in self.layers:
            x = layer(x)
        return x[0] if len(x) == 1 else x

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return "MLP of [\n  " + ",\n  ".join(str(layer) for layer in self.layers) + "\n]"


# ---------------------------------------------------------------- 4. data, loss, training


def make_moons(n: int = 100, noise: float = 0.1, seed: int = 0) -> tuple[list[list[float]], list[int]]:
    """Two interleaving half circles in the plane: points X (n lists [x1, x2]) and labels y in {-1, +1}.

    The upper moon (label -1) is centred at (0, 0), the lower one (label +1) at (1, 0.5), each point
    jittered by Gaussian noise of standard deviation `noise`. No straight line separates them.
    """
    rng = random.Random(seed)
    X: list[list[float]] = []
    y: list[int] = []
    for i in range(n):
        upper = i < (n + 1) // 2
        t = math.pi * rng.random()
        if upper:
            p = [math.cos(t), math.sin(t)]
        else:
            p = [1.0 - math.cos(t), 0.5 - math.sin(t)]
        X.append([p[0] + rng.gauss(0, noise), p[1] + rng.gauss(0, noise)])
        y.append(-1 if upper else 1)
    order = list(range(n))
    rng.shuffle(order)
    return [X[i] for i in order], [y[i] for i in order]


def logistic_loss(scores: Sequence[Value], labels: Sequence[int]) -> Value:
    """Mean binary cross-entropy for scores (logits) and labels y in {-1, +1}:

        loss = mean_i log(1 + exp(-y_i * score_i))

    It is near 0 when the score has the right sign by a wide margin, and grows linearly when wrong.
    """
    assert len(scores) == len(labels) > 0
    losses = [(1 + (s * -float(y)).exp()).log() for s, y in zip(scores, labels, strict=True)]
    return sum(losses, Value(0.0)) * (1.0 / len(losses))


def accuracy(scores: Sequence[Value | float], labels: Sequence[int]) -> float:
    """Fraction of points whose score has the sign of its label."""
    data = [s.data if isinstance(s, Value) else s for s in scores]
    return sum((d > 0) == (y > 0) for d, y in zip(data, labels, strict=True)) / len(labels)


def train_step(model: MLP, X: Sequence[Sequence[float]], y: Sequence[int], lr: float) -> float:
    """One step of full-batch gradient descent on `logistic_loss`; returns the loss *before* the update.

    1. forward: a score model(x) for every x in X, and the loss of those scores against y;
    2. zero the model's gradients, then backward from the loss;
    3. update: every parameter p moves against its gradient, p.data -= lr * p.grad.
    """
    ### BEGIN SOLUTION ch02.train_step (§2.7, 2 pts): forward, loss, zero_grad, backward, p.data -= lr * p.grad
    scores = [model(x) for x in X]
    loss = logistic_loss(scores, y)
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        p.data -= lr * p.grad
    return loss.data
    ### END SOLUTION


def train(
    model: MLP,
    X: Sequence[Sequence[float]],
    y: Sequence[int],
    steps: int = 100,
    lr: float = 0.5,
    log_every: int = 0,
) -> list[float]:
    """Run `steps` steps of `train_step`; return the loss of every step."""
    history = []
    for k in range(steps):
        history.append(train_step(model, X, y, lr))
        if log_every and (k % log_every == 0 or k == steps - 1):
            print(f"step {k:4d}  loss {history[-1]:.4f}")
    return history


# ---------------------------------------------------------------- 5. the graph, for drawing


def topological_order(root: Value) -> list[Value]:
    """Every node `root` depends on, each operand before the nodes that use it (root last)."""
    topo: list[Value] = []
    visited: set[int] = set()

    def build(node: Value) -> None:
        if id(node) not in visited:
            visited.add(id(node))
            for child in node._prev:
                build(child)
            topo.append(node)

    build(root)
    return topo


def op_kind(node: Value) -> tuple[str, float | None]:
    """('pow', k) for a '**k' node, (op, None) otherwise ('' for a leaf)."""
    if node._op.startswith("**"):
        return "pow", float(node._op[2:])
    return node._op, None


def export_graph(root: Value, names: Iterable[str] = ()) -> dict:
    """The graph below `root` as JSON-able dicts, for the computation-graph widget.

    {"nodes": [{"id", "label", "op", "exponent", "inputs", "data", "grad"}, ...],  # topological order
     "edges": [{"source", "target"}, ...]}                                          # operand -> result
    Unlabelled nodes are named n0, n1, ... (skipping names already used and those in `names`).
    """
    topo = topological_order(root)
    index = {id(v): i for i, v in enumerate(topo)}
    taken = {v.label for v in topo if v.label} | set(names)
    counter = 0
    nodes, edges = [], []
    for i, v in enumerate(topo):
        label = v.label
        while not label:
            label = f"n{counter}" if f"n{counter}" not in taken else ""
            counter += 1
        taken.add(label)
        op, exponent = op_kind(v)
        inputs = [index[id(c)] for c in v._prev]
        nodes.append(
            {"id": i, "label": label, "op": op, "exponent": exponent, "inputs": inputs, "data": v.data,
             "grad": v.grad}
        )
        edges += [{"source": j, "target": i} for j in inputs]
    return {"nodes": nodes, "edges": edges}
