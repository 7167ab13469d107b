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


def _chat_tasks(tok, n_stories: int, seed: int, block_size: int = 96) -> list[dict]:
    from storylib.conversations import build_conversations
    from storylib.data import synthetic_stories
    from storylib.preferences import rl_tasks

    return rl_tasks(build_conversations(synthetic_stories(n_stories, seed=seed)), tok, block_size)


def test_iterative_dpo_samples_from_the_current_policy_and_ranks_by_the_rules(tok, monkeypatch):
    from storylib import preferences as P
    from storylib.lora import lora_state_dict

    base = tiny_gpt(7, embed_scale=5.0)
    policy, ref = rlhf.make_policy(base, r=2, alpha=4), rlhf.frozen(base)
    rounds = [_chat_tasks(tok, 3, seed=1), _chat_tasks(tok, 3, seed=2)]
    probe = torch.randint(0, 4096, (1, 9), generator=torch.Generator().manual_seed(0))
    calls, sample, score = [], P.sample_replies, P.score_replies

    def spy_sample(model, tok_, tasks, k, *args, **kw):  # the sampler sees a model that IS the policy right now
        with torch.no_grad():
            calls.append({"tasks": tasks, "k": k, "sampler": model(probe)[0], "policy": policy(probe)[0],
                          "lora": {n: v.clone() for n, v in lora_state_dict(policy).items()}})
        calls[-1]["replies"] = sample(model, tok_, tasks, k, *args, **kw)
        return calls[-1]["replies"]

    monkeypatch.setattr(P, "sample_replies", spy_sample)
    log = rlhf.train_iterative_dpo(policy, ref, rounds, tok, k=3, min_gap=0.0, steps=4, beta=0.5, batch_size=2,
                                   lr=5e-2, warmup=0, seed=0, max_new_tokens=6, quiet=True)
    assert [e["round"] for e in log] == [0, 1] and len(calls) == 2
    for call, tasks in zip(calls, rounds, strict=True):
        assert call["tasks"] is tasks and call["k"] == 3
        assert torch.allclose(call["sampler"], call["policy"], atol=1e-4), "sampled from the policy as it is now"
    moved = max((calls[1]["lora"][n] - calls[0]["lora"][n]).abs().max().item() for n in calls[0]["lora"])
    assert moved > 0, "round 1 samples from the policy that round 0 trained"
    assert not torch.allclose(calls[1]["sampler"], calls[0]["sampler"])
    for e, call, tasks in zip(log, calls, rounds, strict=True):
        want = [P.reward(t["spec"], r["text"], r["stopped"], t["previous"])["total"]
                for t, rs in zip(tasks, call["replies"], strict=True) for r in rs]
        assert e["sampled_reward"] == pytest.approx(np.mean(want)), "the rules' reward of the round's own samples"
        assert e["pairs"] == len(P.make_pairs(tasks, call["replies"], score(tasks, call["replies"]), min_gap=0.0,
                                              all_pairs=True))
        assert e["tasks"] == len(tasks) and e["kl_reply"] >= 0.0
    assert log[0]["kl_reply"] == pytest.approx(0.0, abs=1e-9), "round 0 samples the untrained policy: KL 0"
    assert log[1]["kl_reply"] > 0.0


def test_iterative_dpo_puts_back_the_last_adapter_within_the_kl_limit(tok):
    from storylib.lora import lora_state_dict

    base = tiny_gpt(8, embed_scale=5.0)
    policy, ref = rlhf.make_policy(base, r=2, alpha=4), rlhf.frozen(base)
    start = {n: v.clone() for n, v in lora_state_dict(policy).items()}
    tasks = _chat_tasks(tok, 6, seed=3)
    log = rlhf.train_iterative_dpo(policy, ref, [tasks[:3], tasks[3:6]], tok, k=3, min_gap=0.0, steps=4, beta=0.5,
                                   batch_size=2, lr=5e-2, warmup=0, max_new_tokens=6, kl_stop=1e-6, quiet=True)
    assert [e["round"] for e in log] == [0, 1] and "stopped" in log[1] and "pairs" not in log[1]
    assert log[1]["kl_reply"] > 1e-6
    for n, v in lora_state_dict(policy).items():
        assert torch.equal(v, start[n]), "round 0's training went past the limit: the adapter before it is back"


def test_iterative_dpo_check_and_time_limit(tok):
    base = tiny_gpt(9)
    policy, ref = rlhf.make_policy(base, r=2, alpha=4), rlhf.frozen(base)
    tasks = _chat_tasks(tok, 8, seed=4)
    log = rlhf.train_iterative_dpo(policy, ref, [tasks[:2], tasks[2:4], tasks[4:6]], tok, k=2, min_gap=0.0, steps=1,
                                   batch_size=2, max_new_tokens=4, check_tasks=tasks[6:8], max_seconds=0.0,
                                   quiet=True)
    assert [e["round"] for e in log] == [0, "check"], "no second round fits in 0 s; the check still runs"
    assert log[0]["stopped"].startswith("time") and log[1]["tasks"] == len(tasks[6:8])


def test_dpo_with_length_normalised_logprobs(tok):
    base = tiny_gpt(2)
    pairs = toy_pairs(16, seed=3)
    logs = {}
    for norm in (False, True):
        policy = rlhf.make_policy(base, r=4, alpha=8)
        logs[norm] = rlhf.train_dpo(policy, rlhf.frozen(base), pairs, tok, steps=10, beta=5.0 if norm else 0.5,
                                    batch_size=8, lr=1e-2, warmup=0, length_norm=norm, quiet=True)
    assert logs[True][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    ratio = logs[False][0]["chosen_logp"] / logs[True][0]["chosen_logp"]  # sums / means: the replies' mean length
    rows = [rlhf.pair_rows(p, tok, 96) for p in pairs]
    assert 3 < ratio < max(len(r[1][0]) + 1 for r in rows)
    assert logs[True][-1]["margin"] > 0.0 and logs[True][-1]["loss"] < logs[True][0]["loss"]


def _scored(pairs: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    for p in pairs:
        lo = rng.random() * 0.5
        p["scores"] = {"chosen": lo + rng.choice([0.05, 0.12, 0.17, 0.25, 0.4, 0.6]), "rejected": lo}
    return pairs


def test_reward_model_mean_pooling_reads_only_the_reply(tok):
    rm = rlhf.reward_model_from(tiny_gpt(11), pooling="mean")
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    prompts, replies = [[5, 17, 40, 8], [9, 3]], [([3, 11, 12], True), ([60, 2], False)]
    full, last, m = rlhf._rm_inputs(prompts, replies, tok, torch.device("cpu"))
    assert m.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0]], "the reply's ids and its <|end|>"
    with torch.no_grad():
        h = rm.gpt.hidden(full).double()
        want = torch.stack([h[0, 4:8].mean(0), h[1, 2:4].mean(0)]) @ rm.head.weight.double()[0] + rm.head.bias.double()
    assert torch.allclose(rm.score(prompts, replies, tok).double(), want, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        rlhf.RewardModel(tiny_gpt(11), pooling="max")
    log = rlhf.train_reward_model(rm, toy_pairs(48, seed=0), tok, steps=40, batch_size=16, lr=3e-3, warmup=2,
                                  head_dropout=0.1, quiet=True)
    assert log[-1]["loss"] < 0.3 and rlhf.pair_accuracy(rm, toy_pairs(40, seed=1), tok) >= 0.9


def test_split_pairs_by_request_and_freezing_the_lower_blocks(tok):
    pairs = toy_pairs(60, seed=4)
    pairs += [dict(p, chosen=p["chosen"] + " ball") for p in pairs[:20]]  # a second pair for 20 requests
    train, val = rlhf.split_pairs(pairs, 0.25, seed=1)
    key = lambda p: str(p["messages"])  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in val} and len(train) + len(val) == len(pairs)
    assert 0.1 < len({key(p) for p in val}) / len({key(p) for p in pairs}) < 0.4
    rm = rlhf.reward_model_from(tiny_gpt(12, n_embd=32))
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    n = rlhf.freeze_lower_blocks(rm, 0)
    assert n == 32 * 2 + 33, "only the final LayerNorm and the head"
    rlhf.train_reward_model(rm, train, tok, steps=5, batch_size=8, lr=1e-2, warmup=0, train_layers=0, quiet=True)
    after = rm.state_dict()
    for k in ("gpt.transformer.h.0.attn.c_attn.weight", "gpt.transformer.wte.weight"):
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["head.weight"], before["head.weight"])
    with pytest.raises(ValueError):
        rlhf.freeze_lower_blocks(rm, 2)


def test_reward_model_early_stopping_keeps_the_best_validation_check(tok):
    rm = rlhf.reward_model_from(tiny_gpt(13))
    train, val = toy_pairs(48, seed=5), toy_pairs(24, seed=6)
    log = rlhf.train_reward_model(rm, train, tok, steps=24, batch_size=16, lr=2e-2, warmup=2, weight_decay=0.1,
                                  val_pairs=val, eval_every=4, quiet=True)
    checks = [e for e in log if "val_accuracy" in e]
    assert [e["step"] for e in checks] == [3, 7, 11, 15, 19, 23]
    best = max(checks, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert log[-1]["best_val_step"] == best["step"]
    acc, loss = rlhf._pair_metrics(rm, val, tok)
    assert acc == best["val_accuracy"] and loss == pytest.approx(best["val_loss"], abs=1e-5), "the best weights back"
    short = rlhf.train_reward_model(rlhf.reward_model_from(tiny_gpt(13)), train, tok, steps=40, batch_size=16,
                                    lr=0.0, warmup=0, val_pairs=val, eval_every=2, patience=2, quiet=True)
    assert len(short) == 6, "lr 0: no check improves on the first, so it stops after two more"


def test_accuracy_by_gap_buckets(tok):
    rm = rlhf.reward_model_from(tiny_gpt(14))
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    pairs = _scored(toy_pairs(50, seed=7), seed=8)
    buckets = rlhf.accuracy_by_gap(rm, pairs, tok, edges=(0.1, 0.2, 0.3))
    assert [(b["lo"], b["hi"]) for b in buckets] == [(None, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, None)]
    assert sum(b["n"] for b in buckets) == len(pairs)
    right = [rlhf.pair_accuracy(rm, [p], tok) for p in pairs]
    for b in buckets:
        lo, hi = b["lo"] if b["lo"] is not None else -math.inf, b["hi"] if b["hi"] is not None else math.inf
        gaps = [p["scores"]["chosen"] - p["scores"]["rejected"] for p in pairs]
        got = [r for r, g in zip(right, gaps, strict=True) if lo <= g < hi]
        assert b["n"] == len(got) and b["accuracy"] == pytest.approx(np.mean(got))
    assert rlhf.pair_accuracy(rm, pairs, tok) == pytest.approx(
        sum(b["n"] * b["accuracy"] for b in buckets) / len(pairs))
