"""Models and helpers that the graded tests hand to the learner's code.

They live here, not in the test files, because the grader runs the learner's code in a separate worker
process (grading/remote.py): objects of these classes are sent there (pickled one way, to the worker), so
the worker must be able to import their classes. Nothing here holds an expected value or an assertion.
"""

from __future__ import annotations

import asyncio

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    """Embedding -> Linear -> LayerNorm -> tanh -> Linear: matrices, biases and gains, odd sizes."""

    def __init__(self, vocab: int = 13, emb: int = 7, hidden: int = 11, out: int = 5):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.fc1 = nn.Linear(emb, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, idx):
        return self.fc2(torch.tanh(self.ln(self.fc1(self.emb(idx)))))


class TiedLM(nn.Module):
    """A GPT-shaped toy: embeddings, LayerNorms, linear layers with biases, and a head tied to the embedding."""

    def __init__(self, vocab: int = 61, C: int = 22):
        super().__init__()
        self.wte = nn.Embedding(vocab, C)
        self.wpe = nn.Embedding(17, C)
        self.ln_1 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(3 * C, C)
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one parameter, two names


class CausalLM(nn.Module):
    """A one-layer causal transformer language model from torch.nn parts, no dropout."""

    def __init__(self, vocab: int = 29, C: int = 18, T: int = 11):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, C), nn.Embedding(T, C)
        self.layer = nn.TransformerEncoderLayer(C, 2, dim_feedforward=4 * C, dropout=0.0, batch_first=True)
        self.head = nn.Linear(C, vocab)

    def forward(self, idx, targets):
        T = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=self.head.weight.dtype)
        x = self.layer(self.wte(idx) + self.wpe(torch.arange(T)), src_mask=mask, is_causal=True)
        logits = self.head(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class ByteTokenizer:
    """V - 2 ordinary tokens (a letter or two each) and two specials: enough for StreamDecoder and the Engine."""

    def __init__(self, V: int):
        letters = "abcdefghijklmnopqrstuvwxyz .,"
        self.vocab = {i: (letters[i % len(letters)] * (1 + i // len(letters))).encode() for i in range(V - 2)}
        self.special_tokens = {"<|endoftext|>": V - 2, "<|end|>": V - 1}
        self.vocab.update({i: s.encode() for s, i in self.special_tokens.items()})



async def scripted_events(script: list[tuple[str, str]], usage: dict | None = None, fill: dict | None = None):
    """The engine's events for a reply, as the server yields them; the usage counts are filled in just before
    "done", as the server does (they are known only when the reply is done)."""
    for kind, payload in script:
        await asyncio.sleep(0)
        if kind == "done" and usage is not None:
            usage.update(fill or {})
        yield (kind, payload)


def run_stream(stream_chunks, script: list[tuple[str, str]], fill: dict | None = None, **kw) -> bytes:
    """All the bytes `stream_chunks` sends for a scripted reply (with `usage=` when `fill` is given)."""
    usage: dict | None = {} if fill is not None else None

    async def collect():
        events = scripted_events(script, usage, fill)
        extra = {"usage": usage} if usage is not None else {}
        return b"".join([c async for c in stream_chunks(events, **kw, **extra)])

    return asyncio.run(collect())


def course_copy(module: str):
    """The course's own copy of a module (e.g. `cuda_labs.lab01_map`), loaded under a private name in the grader:
    its given float64 references are oracles, so they must not come from the learner's copy of the file."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "_course_copy_" + module.replace(".", "_")
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / (module.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
