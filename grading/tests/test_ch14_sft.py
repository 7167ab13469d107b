"""Chapter 14 — supervised finetuning: chat data made by rules, the masked loss, LoRA, the SFT step, evaluation.

Oracles are written out here: float64 PyTorch and plain Python loops; Hugging Face `peft` for LoRA. Data is made
here (synthetic stories, tiny random GPTs); nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import random
import re

import pytest
import torch
import torch.nn as nn

from storylib import conversations as CV
from storylib import lora
from storylib.data import synthetic_stories
from storylib.gpt2 import GPT, GPTConfig

# ---- section: conversations

WORD_RE = r"[^\W\d_]+(?:['’][^\W\d_]+)*"  # Chapter 11's words: letters, with inner apostrophes
OLD_NAMES = ("Tom", "Lily", "Ben", "Zoë", "Søren", "Mia", "D'Arcy", "Jo")
NEW_NAMES = ("Sam", "Amélie", "O'Neil", "Jean-Luc", "Ann Marie", "Max", "Łucja")


def _oracle_rename(text: str, old: str, new: str) -> str:
    """Left to right with str.find: an occurrence with a word character (isalnum or _) next to it is skipped."""
    out, i = [], 0
    while (j := text.find(old, i)) != -1:
        k = j + len(old)
        neighbours = (text[j - 1] if j > 0 else "") + (text[k] if k < len(text) else "")
        if any(c.isalnum() or c == "_" for c in neighbours):
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(text[i:j] + new)
            i = k
    return "".join(out) + text[i:]


def _decorated(story: str, old: str, rng) -> str:
    """The story with `old` put in at random places: whole, possessive, inside longer words, next to digits."""
    pieces = [f"{old}'s", f"{old}’s", f"({old})", f"{old}-{old}", f"{old}my", f"{old}ato", f"A{old.lower()}",
              f"{old}2", f"_{old}", f"{old.upper()}", f"{old.lower()}", f"{old},", f"{old}.", f'"{old}!"', old]
    words = story.split(" ")
    for piece in rng.sample(pieces, 7):
        words.insert(rng.randrange(len(words) + 1), piece)
    return rng.choice(["", old + " "]) + " ".join(words) + rng.choice(["", " " + old])


@pytest.mark.exercise("ch14.rename")
def test_rename_replaces_whole_words_only():
    rng = random.Random(14)
    for story in synthetic_stories(60, seed=22, unicode=True):
        old, new = rng.choice(OLD_NAMES), rng.choice(NEW_NAMES)
        text = _decorated(story, old, rng)
        got, want = CV.rename(text, old, new), _oracle_rename(text, old, new)
        assert got == want, f"rename({old!r} -> {new!r}) of {text!r}: got {got!r}, want {want!r}"


@pytest.mark.exercise("ch14.rename")
def test_rename_edge_cases():
    r = CV.rename
    assert r("Tom met Tommy and a Tomato. Tom's hat, Tom’s cap (Tom)!", "Tom", "Ben") == (
        "Ben met Tommy and a Tomato. Ben's hat, Ben’s cap (Ben)!"), "possessives change; Tommy and Tomato do not"
    assert r("tom Tom TOM Atom Tom2 Tom_ _Tom", "Tom", "Al") == "tom Al TOM Atom Tom2 Tom_ _Tom", (
        "case-sensitive, and a digit or underscore next to it makes it part of another word")
    assert r("Zoë and Zoëy met Lily-Rose.", "Zoë", "Mia") == "Mia and Zoëy met Lily-Rose.", "letters are Unicode"
    assert r("Lily-Rose and Lily.", "Lily", "Sue") == "Sue-Rose and Sue.", "a hyphen is not part of a word"
    assert r("Tom and Tom", "Tom", "Tommy") == "Tommy and Tommy", "one pass: the new name is not renamed again"
    assert r("Sam said: Sam.", "Sam", r"Al\1") == r"Al\1 said: Al\1.", "the new name is plain text, not a pattern"
    assert r("D'Arcy's dog", "D'Arcy", "Ann") == "Ann's dog" and r("no one here", "Tom", "Ben") == "no one here"
    with pytest.raises(ValueError):
        r("Tom", "", "Ben")


def _oracle_repeat_rate(text: str, n: int) -> float:
    """Each n-gram compared with every earlier one, in plain Python."""
    w = [x.lower() for x in re.findall(WORD_RE, text)]
    count = len(w) - n + 1
    if count <= 0:
        return 0.0
    repeats = sum(any(w[i:i + n] == w[j:j + n] for j in range(i)) for i in range(count))
    return repeats / count


@pytest.mark.exercise("ch14.repetition")
def test_repeated_ngram_rate_matches_a_loop_oracle():
    rng = random.Random(6)
    stories = synthetic_stories(40, seed=31, unicode=True)
    for k in range(90):
        story = stories[k % len(stories)]
        parts = story.replace("\n", " ").split(" ")
        if k % 3:  # a degenerate generation: phrases of the story said again, in other cases and punctuation
            pool = [" ".join(parts[i:i + rng.randint(1, 6)]) for i in range(0, len(parts), 3)]
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 25)))
            text = "".join(c.upper() if rng.random() < 0.1 else c for c in text) + rng.choice(["", " 42 ", "!!"])
        else:
            text = " ".join(parts[:rng.randint(0, len(parts))])
        n = rng.choice([1, 2, 3, 4, 5, 7])
        got, want = CV.repeated_ngram_rate(text, n), _oracle_repeat_rate(text, n)
        assert abs(got - want) < 1e-12, f"n={n}, text {text!r}: got {got}, want {want}"
    text = stories[0] + " " + stories[0]
    assert abs(CV.repeated_ngram_rate(text) - _oracle_repeat_rate(text, 4)) < 1e-12, "the default n is 4"


@pytest.mark.exercise("ch14.repetition")
def test_repeated_ngram_rate_edge_cases():
    rate = CV.repeated_ngram_rate
    assert rate("a b c a b c", 3) == 0.25, "grams abc bca cab abc: one of four repeats an earlier one"
    assert abs(rate("The cat. the CAT!", 2) - 1 / 3) < 1e-12, "words are lower-cased, punctuation dropped"
    assert rate("go go go go go", 1) == 0.8 and rate("go go go go go", 5) == 0.0
    assert rate("Hi there", 4) == 0.0 and rate("", 1) == 0.0, "fewer than n words: 0.0"
    assert rate("I can't, I can't 7 7 7", 2) == 1 / 3, "digits are not words; can't is one word"
    with pytest.raises(ValueError):
        rate("a b", 0)


# ---- section: lora

F64 = torch.float64
TINY = dict(block_size=17, vocab_size=67, n_layer=2, n_head=2, n_embd=12)  # the design's tiny GPT
LORA_SHAPES = [(7, 13, 3, True), (11, 5, 5, False), (9, 9, 1, True)]  # (in, out, r, bias): odd, non-square
GPT_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _random_linear(n_in: int, n_out: int, bias: bool, seed: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(_randn(n_out, n_in, seed=seed))
        if bias:
            lin.bias.copy_(_randn(n_out, seed=seed + 1) + 0.5)
    return lin


def _set_lora(layer, A: torch.Tensor, B: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """Give the learner's LoRA layer the test's A and B (parameters the test keeps, to read their gradients)."""
    pA, pB = nn.Parameter(A.clone()), nn.Parameter(B.clone())
    layer.lora_A, layer.lora_B = pA, pB
    return pA, pB


def _lora_oracle(x, W, b, A, B, scale):
    """y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ, written out in float64."""
    y = x @ W.t() + scale * ((x @ A.t()) @ B.t())
    return y if b is None else y + b


def _tiny_gpt(seed: int):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY)).to(F64).eval()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.2 * _randn(*p.shape, seed=seed * 100 + i))
    return model


def _tokens(seed: int, B: int = 3, T: int = 11) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def _linear_shapes(name: str) -> tuple[int, int]:
    """(in, out) of a GPT Linear of the tiny config, from its name."""
    C = TINY["n_embd"]
    return {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}[
        next(k for k in ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj") if name.endswith(k))]


def _err(a, b) -> float:
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


@pytest.mark.exercise("ch14.lora_forward")
def test_lora_forward_and_gradients_match_the_formula():
    for k, (n_in, n_out, r, bias) in enumerate(LORA_SHAPES):
        base, alpha = _random_linear(n_in, n_out, bias, seed=10 * k), 2.0 + 1.7 * k
        W, b = base.weight.detach().clone(), base.bias.detach().clone() if bias else None
        layer = lora.LoRALinear(base, r=r, alpha=alpha)
        x = _randn(2, 4, n_in, seed=10 * k + 2)
        fresh = layer(x).detach()  # lora_B starts at zero: the layer is the base layer
        assert _err(fresh, x @ W.t() + (0 if b is None else b)) < 1e-12, (
            f"a fresh LoRALinear({n_in}->{n_out}, r={r}) must compute base(x) (lora_B starts at zero)")
        A, B = _randn(r, n_in, seed=10 * k + 3), _randn(n_out, r, seed=10 * k + 4)
        pA, pB = _set_lora(layer, A, B)
        x = x.clone().requires_grad_()
        y = layer(x)
        scale = alpha / r
        want = _lora_oracle(x.detach(), W, b, A, B, scale)
        err = _err(y.detach(), want)
        assert err < 1e-10, (f"in={n_in}, out={n_out}, r={r}, alpha={alpha}: y differs from "
                             f"base(x) + (alpha/r)·x·Aᵀ·Bᵀ by {err:.3g} (is scale alpha / r = {scale:.4g}?)")
        g = _randn(*want.shape, seed=10 * k + 5)
        y.backward(g)
        xo, Ao, Bo = (t.detach().clone().requires_grad_() for t in (x, A, B))
        _lora_oracle(xo, W, b, Ao, Bo, scale).backward(g)
        for what, got, exp in (("lora_A", pA.grad, Ao.grad), ("lora_B", pB.grad, Bo.grad), ("x", x.grad, xo.grad)):
            assert got is not None, f"no gradient reached {what}: compute the LoRA path from lora_A and lora_B"
            assert _err(got, exp) < 1e-10, f"in={n_in}, out={n_out}, r={r}: the gradient of {what} is wrong"
        assert layer.base.weight.grad is None, "the base layer must be frozen (no gradient for base.weight)"


@pytest.mark.exercise("ch14.lora_forward")
def test_lora_dropout_reads_only_the_lora_path():
    n, p, alpha = 5, 0.4, 3.0
    base = _random_linear(n, n, True, seed=7)
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = lora.LoRALinear(base, r=n, alpha=alpha, dropout=p)
    _set_lora(layer, torch.eye(n, dtype=F64), torch.eye(n, dtype=F64))  # ΔW = scale · I: the path shows dropout(x)
    x = _randn(64, n, seed=8) + 2.0
    layer.eval()
    assert _err(layer(x).detach(), _lora_oracle(x, W, b, torch.eye(n, dtype=F64), torch.eye(n, dtype=F64),
                                                  alpha / n)) < 1e-10, "in eval mode dropout must be off"
    layer.train()
    kept = (layer(x).detach() - (x @ W.t() + b)) / (alpha / n)  # dropout(x): 0 or x / (1 - p), entry by entry
    dropped, scaled = kept.abs() < 1e-12, (kept - x / (1 - p)).abs() < 1e-9
    assert bool((dropped | scaled).all()), "in training, the LoRA path must read dropout(x) (inverted: x / (1 - p))"
    assert 0.15 < dropped.double().mean().item() < 0.65, "the base path must see x itself; dropout only on LoRA's"


@pytest.mark.exercise("ch14.lora_merge")
def test_lora_merge_folds_the_update_and_unmerge_restores_it():
    for k, (n_in, n_out, r, bias) in enumerate(LORA_SHAPES):
        base, alpha = _random_linear(n_in, n_out, bias, seed=20 + 10 * k), 5.0 - k
        W, b = base.weight.detach().clone(), base.bias.detach().clone() if bias else None
        layer = lora.LoRALinear(base, r=r, alpha=alpha)
        A, B = _randn(r, n_in, seed=23 + 10 * k), _randn(n_out, r, seed=24 + 10 * k)
        _set_lora(layer, A, B)
        x = _randn(3, n_in, seed=25 + 10 * k)
        want = _lora_oracle(x, W, b, A, B, alpha / r)
        merged_W = W + (alpha / r) * (B @ A)
        layer.merge()
        assert layer.merged, "merge() must set merged = True"
        err = _err(layer.base.weight.detach(), merged_W)
        assert err < 1e-12, f"in={n_in}, out={n_out}, r={r}: merged weight differs from W + (alpha/r)·B·A by {err:.3g}"
        assert _err(layer(x).detach(), want) < 1e-10, "the merged layer must compute what the unmerged one did"
        layer.merge()
        assert _err(layer.base.weight.detach(), merged_W) < 1e-12, "a second merge() must not add the update again"
        layer.unmerge()
        assert not layer.merged, "unmerge() must set merged = False"
        err = _err(layer.base.weight.detach(), W)
        assert err < 1e-12, f"unmerge() must restore the base weight: off by {err:.3g} (subtract the same update)"
        assert _err(layer(x).detach(), want) < 1e-10, "after unmerge() the layer must compute the same outputs"


@pytest.mark.exercise("ch14.lora_merge")
def test_merge_lora_and_remove_lora_on_a_tiny_gpt():
    model, idx = _tiny_gpt(seed=3), _tokens(4)
    plain_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = lora.inject_lora(model, targets=("c_attn", "c_fc", "mlp.c_proj"), r=3, alpha=4.0)
    merged_sd = dict(plain_sd)
    for i, name in enumerate(names):
        n_in, n_out = _linear_shapes(name)
        A, B = _randn(3, n_in, seed=40 + i), 0.3 * _randn(n_out, 3, seed=60 + i)
        _set_lora(model.get_submodule(name), A, B)
        merged_sd[f"{name}.weight"] = plain_sd[f"{name}.weight"] + (4.0 / 3) * (B @ A)
    oracle = GPT(GPTConfig(**TINY)).to(F64).eval()
    oracle.load_state_dict(merged_sd)
    want = oracle(idx)[0].detach()
    assert _err(model(idx)[0].detach(), want) < 1e-10, "the model with LoRA must equal the model with W + scale·B·A"
    lora.merge_lora(model)
    assert _err(model(idx)[0].detach(), want) < 1e-10, "merged and unmerged outputs must agree (to 1e-10)"
    for name in names:
        err = _err(model.get_submodule(f"{name}.base").weight.detach(), merged_sd[f"{name}.weight"])
        assert err < 1e-12, f"{name}: merge_lora did not fold scale·B·A into the base weight (off by {err:.3g})"
    lora.unmerge_lora(model)
    for name in names:
        err = _err(model.get_submodule(f"{name}.base").weight.detach(), plain_sd[f"{name}.weight"])
        assert err < 1e-12, f"{name}: unmerge_lora must restore the base weight (off by {err:.3g})"
    assert list(lora.remove_lora(model)) == list(names)
    assert set(model.state_dict()) == set(plain_sd), "remove_lora must leave a plain GPT (its own state dict keys)"
    assert _err(model(idx)[0].detach(), want) < 1e-10, "remove_lora must keep the merged update"


@pytest.mark.exercise("ch14.lora_inject")
def test_inject_lora_replaces_exactly_the_targets_and_freezes_the_rest():
    model, idx = _tiny_gpt(seed=5), _tokens(6)
    plain_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain_total = sum(v.numel() for k, v in plain_sd.items() if k != "lm_head.weight")  # tied to wte
    before = model(idx)[0].detach()
    r, alpha = 5, 3.0
    names = lora.inject_lora(model, targets=("c_attn", "mlp.c_proj"), r=r, alpha=alpha)
    expected = [f"transformer.h.{i}.{s}" for i in range(TINY["n_layer"]) for s in ("attn.c_attn", "mlp.c_proj")]
    assert list(names) == expected, f"inject_lora returned {names}, expected {expected}"
    for i in range(TINY["n_layer"]):
        for s in GPT_LINEARS:
            name = f"transformer.h.{i}.{s}"
            kind = repr(model.get_submodule(name)).partition("(")[0]  # the class name, also through the grader
            assert kind == ("LoRALinear" if name in expected else "Linear"), f"{name} is a {kind}"
    lora_names = sorted(f"{n}.{m}" for n in expected for m in ("lora_A", "lora_B"))
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == lora_names, (
        "after inject_lora only lora_A and lora_B may be trainable (freeze every other parameter)")
    keys = {(k[: -len(".weight")] + ".base.weight") if k[: -len(".weight")] in expected else k for k in plain_sd}
    keys = {(k[: -len(".bias")] + ".base.bias") if k[: -len(".bias")] in expected else k for k in keys}
    assert set(model.state_dict()) == keys | set(lora_names), "state dict keys: <layer>.base.weight, <layer>.lora_A"
    n_lora = sum(r * sum(_linear_shapes(n)) for n in expected)
    assert tuple(lora.count_parameters(model)) == (n_lora, plain_total + n_lora)
    assert _err(model(idx)[0].detach(), before) < 1e-12, "a fresh adapter (B = 0) must not change the model"

    params, merged_sd = {}, dict(plain_sd)
    for i, name in enumerate(expected):
        n_in, n_out = _linear_shapes(name)
        A, B = _randn(r, n_in, seed=70 + i), 0.3 * _randn(n_out, r, seed=80 + i)
        params[name] = (A, B, *_set_lora(model.get_submodule(name), A, B))
        merged_sd[f"{name}.weight"] = plain_sd[f"{name}.weight"] + (alpha / r) * (B @ A)
    model.train()
    model(idx, targets=_tokens(7))[1].backward()
    for n, p in model.named_parameters():
        if not n.endswith(("lora_A", "lora_B")):
            assert p.grad is None, f"{n} got a gradient: the base model must stay frozen"
    oracle = GPT(GPTConfig(**TINY)).to(F64)
    oracle.load_state_dict(merged_sd)
    oracle(idx, targets=_tokens(7))[1].backward()
    for name, (A, B, pA, pB) in params.items():
        G = oracle.get_submodule(name).weight.grad.detach()  # dL/dW of the merged weight
        assert _err(pB.grad, (alpha / r) * G @ A.t()) < 1e-10, f"{name}: dL/dB must be scale · dL/dW · Aᵀ"
        assert _err(pA.grad, (alpha / r) * B.t() @ G) < 1e-10, f"{name}: dL/dA must be scale · Bᵀ · dL/dW"

    with pytest.raises(ValueError, match="c_nope"):
        lora.inject_lora(_tiny_gpt(seed=8), targets=("c_attn", "c_nope"))
    assert len(lora.inject_lora(_tiny_gpt(seed=9), r=2)) == 4 * TINY["n_layer"], "default targets: every block Linear"

# ---- section: sft


def _oracle_masked_mean(logits, targets, mask) -> float:
    """Plain float64 loops: -log softmax(logits[b, t])[targets[b, t]] averaged over the positions with mask 1."""
    import math

    L, total, count = logits.double().tolist(), 0.0, 0
    for b, row in enumerate(mask.tolist()):
        for t, m in enumerate(row):
            if m:
                z = L[b][t]
                top = max(z)
                total += top + math.log(sum(math.exp(v - top) for v in z)) - z[int(targets[b, t])]
                count += 1
    return total / count


@pytest.mark.exercise("ch14.masked_loss")
def test_masked_cross_entropy_is_the_mean_over_masked_positions():
    from storylib import sft

    g = torch.Generator().manual_seed(1403)
    for B, T, V in ((1, 1, 2), (3, 7, 11), (2, 13, 29), (5, 4, 3)):
        logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
        targets = torch.randint(0, V, (B, T), generator=g)
        mask = torch.rand(B, T, generator=g) < 0.45
        mask[torch.randint(0, B, ()), torch.randint(0, T, ())] = True  # at least one position
        want = _oracle_masked_mean(logits, targets, mask)
        for m in (mask, mask.long(), mask.double()):
            got = sft.masked_cross_entropy(logits, targets, m)
            assert got.dim() == 0, "masked_cross_entropy returns a scalar"
            assert abs(float(got) - want) < 1e-9, f"B={B} T={T} V={V}: got {float(got)}, want {want}"
        # what the mask hides does not count: change the logits and targets there
        hidden = ~mask
        logits2 = torch.where(hidden[..., None], logits * -5 + 1, logits)
        targets2 = torch.where(hidden, (targets + 1) % V, targets)
        assert abs(float(sft.masked_cross_entropy(logits2, targets2, mask)) - want) < 1e-9, \
            "positions with mask 0 must not change the loss"
    with pytest.raises(ValueError):
        sft.masked_cross_entropy(logits, targets, torch.zeros(B, T))


def _random_examples(rng: random.Random, n: int, block_size: int, vocab: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(n):
        L = rng.randint(2, block_size + 1)
        ids = [rng.randrange(vocab) for _ in range(L)]
        start = rng.randrange(1, L)  # a chat's shape: context (0s), then a reply (1s), sometimes 0s again
        mask = [0] * start + [1] * (L - start)
        for i in rng.sample(range(L), k=min(L, 2)):
            mask[i] = rng.randint(0, 1)
        mask[-1] = 1  # the reply's closing <|end|> is always learned
        out.append((ids, mask))
    return out


@pytest.mark.exercise("ch14.sft_batch")
def test_sft_batch_shifts_masks_and_pads():
    from storylib import sft

    rng = random.Random(1405)
    for block_size in (1, 5, 17):
        vocab, pad = 37, rng.randrange(37)
        examples = _random_examples(rng, rng.randint(1, 6), block_size, vocab)
        x, y = sft.sft_batch(examples, block_size, pad)
        assert x.dtype == torch.int64 and y.dtype == torch.int64, "x and y are int64 (token ids, -100)"
        assert tuple(x.shape) == tuple(y.shape) == (len(examples), block_size)
        for i, (ids, mask) in enumerate(examples):
            n = len(ids) - 1
            want_x = ids[:-1] + [pad] * (block_size - n)
            want_y = [ids[t + 1] if mask[t + 1] else -100 for t in range(n)] + [-100] * (block_size - n)
            assert x[i].tolist() == want_x, f"row {i}: x = ids[:-1], then pad_id"
            assert y[i].tolist() == want_y, f"row {i}: y = ids[1:] where mask[1:] is 1, else -100; -100 on padding"
    with pytest.raises(ValueError):
        sft.sft_batch([(list(range(7)), [1] * 7)], 5, 0)


@pytest.mark.exercise("ch14.sft_batch")
def test_sft_step_loss_is_the_response_only_loss():
    """The SFT step: F.cross_entropy over sft_batch's (x, y) (what GPT.forward computes) is the mean loss of the
    reply tokens, whatever the logits say at the context and padding positions."""
    from storylib import sft

    rng, g = random.Random(1406), torch.Generator().manual_seed(1406)
    examples = _random_examples(rng, 4, 9, 23)
    x, y = sft.sft_batch(examples, 9, 0)
    logits = torch.randn(4, 9, 23, generator=g, dtype=torch.float64)
    targets = torch.zeros(4, 9, dtype=torch.int64)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    for i, (ids, m) in enumerate(examples):
        for t in range(len(ids) - 1):
            targets[i, t], mask[i, t] = ids[t + 1], bool(m[t + 1])
    got = torch.nn.functional.cross_entropy(logits.view(-1, 23), y.view(-1)).item()
    assert abs(got - _oracle_masked_mean(logits, targets, mask)) < 1e-9
