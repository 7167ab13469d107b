"""storylib.rlhf (Chapter 15 §15.2–15.7): the reward model, DPO, PPO and GRPO each move a tiny GPT the way they
should within a few steps; the batches' masks; KL 0 at the start; the RL adapter loads through load_chat_model.
Tiny random GPTs with the course's tokenizer (it has the chat specials); toy preferences and toy rewards."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from storylib import rlhf

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "models" / "storyteller" / "tokenizer.json")
WORDS = "the a dog cat ran sat jumped big small red sun moon hill park boy girl played saw".split()


@pytest.fixture(scope="module")
def tok():
    from storylib.train import load_tokenizer

    return load_tokenizer(TOKENIZER)[0]


def tiny_gpt(seed: int = 0, n_embd: int = 32, embed_scale: float = 1.0):
    from storylib.gpt2 import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=96, vocab_size=4160, n_layer=1, n_head=2, n_embd=n_embd, dropout=0.0))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(embed_scale)  # larger logits: a toy policy with room to move
    return model.eval()


def toy_pairs(n: int, seed: int) -> list[dict]:
    """Chosen replies contain the word "ball" somewhere, rejected ones do not; otherwise random words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = [rng.choice(WORDS) for _ in range(rng.randrange(3, 9))], [rng.choice(WORDS) for _ in range(6)]
        a.insert(rng.randrange(len(a) + 1), "ball")
        out.append({"messages": [{"role": "user", "content": f"Tell me a story about the {rng.choice(WORDS)}."}],
                    "chosen": " ".join(a), "rejected": " ".join(b), "source": "rules",
                    "stopped": {"chosen": rng.random() < 0.5, "rejected": True}})
    return out


def test_reply_batch_masks_the_reply_and_its_end():
    x, y, mask, last = rlhf.reply_batch([[1, 2, 3], [4, 5]], [([7, 8], True), ([9], False)], end_id=99, pad_id=0)
    assert x.tolist() == [[1, 2, 3, 7, 8], [4, 5, 0, 0, 0]]
    assert y.tolist() == [[2, 3, 7, 8, 99], [5, 9, -100, -100, -100]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert last.tolist() == [4, 1]
    assert rlhf._full(x, y, 0).tolist() == [[1, 2, 3, 7, 8, 99], [4, 5, 9, 0, 0, 0]]
    with pytest.raises(ValueError, match="no token"):
        rlhf.reply_batch([[1]], [([], False)], 99, 0)


def test_reply_logprobs_match_a_float64_oracle():
    model = tiny_gpt(3)
    x, y, mask, _ = rlhf.reply_batch([[5, 17, 40], [8]], [([3, 11], True), ([60, 2, 9], False)], 99, 0)
    got = rlhf.reply_logprobs(model, x, y, temperature=0.7)
    with torch.no_grad():
        logits = model(x)[0].double() / 0.7
    want = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose((got * mask).double(), want * mask, atol=1e-5)


def test_reward_model_learns_a_toy_preference(tok):
    rm = rlhf.reward_model_from(tiny_gpt(1))
    train, heldout = toy_pairs(48, seed=0), toy_pairs(40, seed=1)
    assert rlhf.pair_accuracy(rm, heldout, tok) == 0.0, "a zero head scores every reply the same: no pair right"
    log = rlhf.train_reward_model(rm, train, tok, steps=40, batch_size=16, lr=3e-3, warmup=2, quiet=True)
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert log[-1]["loss"] < 0.3
    assert rlhf.pair_accuracy(rm, heldout, tok) >= 0.9


def test_correlation_matches_numpy_and_ranks():
    rng = np.random.default_rng(0)
    a = rng.normal(size=37)
    b = a + rng.normal(size=37)
    b[:5] = b[5]  # ties
    c = rlhf.correlation(a, b)
    assert c["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    ranks = [sorted(b).index(v) + (sorted(b).count(v) - 1) / 2 for v in b]  # brute-force tie-averaged ranks
    assert c["spearman"] == pytest.approx(np.corrcoef(np.argsort(np.argsort(a)), ranks)[0, 1])
    assert rlhf.correlation([1, 2, 3], [3, 2, 1])["spearman"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        rlhf.correlation([1.0], [2.0])


def test_dpo_starts_at_ln2_and_raises_the_margin(tok):
    base = tiny_gpt(2)
    policy, ref = rlhf.make_policy(base, r=4, alpha=8), rlhf.frozen(base)
    pairs = toy_pairs(24, seed=2)
    log = rlhf.train_dpo(policy, ref, pairs, tok, steps=15, beta=0.5, batch_size=8, lr=1e-2, warmup=0, quiet=True)
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and log[0]["margin"] == 0.0
    assert log[-1]["margin"] > 0.5 and log[-1]["accuracy"] == 1.0 and log[-1]["loss"] < log[0]["loss"] - 0.2
    assert all(not p.requires_grad for p in ref.parameters())


def _toy_reward(model):
    """reward = fraction of the reply's tokens among the 300 whose embeddings point most along a fixed direction u
    (a policy can learn it by turning its last hidden state towards u)."""
    u = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(7))
    good = set(torch.topk(model.transformer.wte.weight.detach() @ u, 300).indices.tolist())

    def fn(tasks, replies):
        return [sum(i in good for i in ids) / max(len(ids), 1) for ids, _ in replies]

    return fn


def _mean_reward(policy, tok, tasks, fn, seed=123) -> float:
    replies = rlhf.rollout(policy, tok, [t["prompt"] for t in tasks] * 8, seed, 8, 64)
    return float(np.mean(fn(tasks * 8, replies)))


def _toy_tasks(tok, n: int = 6) -> list[dict]:
    from storylib.chat_template import render_chat

    return [{"prompt": render_chat([{"role": "user", "content": f"Tell me about the {w}."}], tok,
                                   add_generation_prompt=True)[0]} for w in WORDS[:n]]


def test_ppo_raises_a_toy_reward_with_kl_zero_at_the_start(tok):
    base = tiny_gpt(4, n_embd=16, embed_scale=20.0)
    policy, ref = rlhf.make_policy(base, r=4, alpha=8), rlhf.frozen(base)
    tasks, fn = _toy_tasks(tok, 16), _toy_reward(base)
    before = _mean_reward(policy, tok, tasks, fn)
    log = rlhf.train_ppo(policy, ref, fn, tasks, tok, steps=8, n_prompts=16, kl_coef=0.01, lr=3e-2, epochs=2,
                         minibatch=4, max_new_tokens=8, seed=0, quiet=True)
    assert log[0]["kl"] == 0.0 and log[0]["kl_reply"] == 0.0, "the policy starts as the reference"
    assert {"reward", "kl", "clip_frac", "value_loss"} <= set(log[0])
    after = _mean_reward(policy, tok, tasks, fn)
    assert after > before + 0.15, (before, after)
    assert log[-1]["kl"] > 0.0


def test_grpo_raises_a_toy_reward(tok):
    base = tiny_gpt(5, n_embd=16, embed_scale=20.0)
    policy, ref = rlhf.make_policy(base, r=4, alpha=8), rlhf.frozen(base)
    tasks, fn = _toy_tasks(tok), _toy_reward(base)
    before = _mean_reward(policy, tok, tasks, fn)
    log = rlhf.train_grpo(policy, ref, fn, tasks, tok, steps=8, n_prompts=4, group_size=4, kl_coef=0.01, lr=3e-2,
                          epochs=2, minibatch=8, max_new_tokens=8, seed=0, quiet=True)
    assert log[0]["kl"] == 0.0
    after = _mean_reward(policy, tok, tasks, fn)
    assert after > before + 0.15, (before, after)


def test_evaluate_policy_and_kl_of_a_model_to_itself(tok):
    from storylib.conversations import build_conversations
    from storylib.data import synthetic_stories
    from storylib.lora import lora_layers
    from storylib.preferences import rl_tasks

    base = tiny_gpt(6)
    tasks = rl_tasks(build_conversations(synthetic_stories(3, seed=1)), tok, base.config.block_size)
    policy = rlhf.make_policy(base, r=2, alpha=4)
    ev = rlhf.evaluate_policy(policy, tok, tasks, rlhf.frozen(base), max_new_tokens=6, batch_size=4)
    assert ev["kl_token"] == 0.0 and ev["kl_reply"] == 0.0 and ev["n"] == len(tasks) == len(ev["records"])
    assert 0.0 <= ev["reward"] <= 1.0 and 0.0 <= ev["ok_rate"] <= 1.0
    assert ev["reward"] == pytest.approx(np.mean([r["reward"] for r in ev["records"]]))
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B.normal_(0, 0.5)
    assert rlhf.evaluate_policy(policy, tok, tasks, rlhf.frozen(base), max_new_tokens=6)["kl_token"] > 0.0


def test_rl_adapter_loads_through_load_chat_model(tmp_path):
    from chat_model import fake_chat_model

    from storylib.lora import lora_layers
    from storylib.sft import load_chat_model

    chat = fake_chat_model(tmp_path / "models")
    model, tok = load_chat_model(chat)
    policy = rlhf.make_policy(model, r=2, alpha=4)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    out = rlhf.save_rl_adapter(policy, tmp_path / "models" / "storyteller-rl", base=str(chat), extra={"method": "t"})
    loaded, tok2 = load_chat_model(out)
    assert tok2.special_tokens == tok.special_tokens
    x = torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got, sft = policy(x)[0], loaded(x)[0], model(x)[0]
    assert not lora_layers(loaded), "merged: a plain GPT"
    assert (want - sft).abs().max() > 1e-2, "the adapter changes the model"
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
