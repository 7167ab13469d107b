"""Chapter 15 — learning from preferences: log-probabilities of replies, Bradley–Terry, DPO, the KL leash, PPO, GRPO.

Oracles are written out here, differently from the reference: a float64 loop over positions with torch.log_softmax
per row for the token and sequence log-probabilities, and the softmax's own derivative (one-hot minus p) for their
gradient; `math.log(1 + exp(-m))` per pair for Bradley–Terry, and the DPO paper's formula transcribed per pair in
float64 (Rafailov et al. 2023, eq. 7; the same as TRL's sigmoid loss); for the KL estimators, two explicit
categorical distributions whose exact KL is a float64 sum, and the sample means of many seeded draws (tolerances
from the exact variance, so any seed passes); for GAE, the brute-force sum over l of (γλ)^l δ_{t+l} within each reply,
and its two ends (λ = 1: discounted reward-to-go; λ = 0: δ); PPO's min(ρA, clip(ρ)A) and the value head's clipped
error per token in float64, with their gradients written case by case; for GRPO, per-group means and unbiased standard
deviations in plain Python, and the invariances a standardisation must have. Nothing is downloaded.
"""

from __future__ import annotations

import math

import pytest
import torch

from storylib import rl


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than several, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def err(a, b) -> float:
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


def reply_mask(spans: list[tuple[int, int]], T: int) -> torch.Tensor:
    """(B, T) int64 0/1: row b is 1 on positions spans[b][0] .. spans[b][1] - 1 (one contiguous reply)."""
    mask = torch.zeros(len(spans), T, dtype=torch.int64)
    for b, (s, e) in enumerate(spans):
        mask[b, s:e] = 1
    return mask


def spans_for(B: int, T: int) -> list[tuple[int, int]]:
    """B replies that start and end at different places: a full row, a last-token reply, one in the middle, ..."""
    spans = [(0, T), (T - 1, T), (1, T - 1), (T // 2, T), (T // 3, T // 2 + 1), (0, 1), (2, T - 2), (T - 3, T - 1)]
    spans = [(s, e) for s, e in spans if 0 <= s < e <= T]
    while len(spans) < B:
        spans.append((len(spans) % T, T))
    return spans[:B]


def logits_for(B: int, T: int, V: int, seed: int) -> torch.Tensor:
    """Peaked, off-centre rows: a different scale and offset per row, so no row is uniform."""
    scale = 0.5 + 3 * torch.rand(B, T, 1, generator=gen(seed + 1), dtype=torch.float64)
    return randn(B, T, V, seed=seed) * scale + 7.0


def loop_logprob(logits: torch.Tensor, b: int, t: int, y: int) -> float:
    return float(torch.log_softmax(logits[b, t].double(), dim=-1)[y])


# ----------------------------------------------------------------------------- ch15.token_logprobs


@pytest.mark.exercise("ch15.token_logprobs")
@pytest.mark.parametrize("B, T, V", [(3, 7, 11), (1, 5, 2), (5, 1, 29)])
def test_token_logprobs_match_a_loop_over_positions(B, T, V):
    logits = logits_for(B, T, V, seed=B * 100 + T * 10 + V)
    targets = torch.randint(0, V, (B, T), generator=gen(V))
    got = rl.token_logprobs(logits, targets)
    assert got.shape == (B, T), f"token_logprobs should return shape ({B}, {T}), got {tuple(got.shape)}"
    assert got.dtype == torch.float64, f"float64 logits should give float64 log-probabilities, got {got.dtype}"
    for b in range(B):
        for t in range(T):
            want = loop_logprob(logits, b, t, int(targets[b, t]))
            assert abs(float(got[b, t]) - want) < 1e-12, (
                f"position ({b}, {t}), target {int(targets[b, t])}: got {float(got[b, t]):.6f}, want {want:.6f} "
                "(log-softmax over the vocabulary, then the target's entry)"
            )


@pytest.mark.exercise("ch15.token_logprobs")
def test_token_logprobs_padding_targets_and_low_precision():
    B, T, V = 4, 9, 13
    logits = logits_for(B, T, V, seed=41) * 40  # logits in the hundreds: exp overflows float32 unless stabilised
    targets = torch.randint(0, V, (B, T), generator=gen(42))
    pad = torch.rand(B, T, generator=gen(43)) < 0.4
    assert pad.any() and (~pad).any(), "test setup: some padding, some real targets"
    targets[pad] = -100
    for dtype in (torch.float32, torch.bfloat16):
        got = rl.token_logprobs(logits.to(dtype), targets)
        assert got.dtype == torch.float32, f"{dtype} logits should give float32 log-probabilities, got {got.dtype}"
        assert torch.isfinite(got).all(), f"{dtype}: a -100 target or a large logit gave a non-finite log-probability"
        for b, t in (~pad).nonzero().tolist():
            want = loop_logprob(logits.to(dtype), b, t, int(targets[b, t]))
            assert abs(float(got[b, t]) - want) < 1e-3 * max(1.0, abs(want)), (
                f"{dtype}, position ({b}, {t}): got {float(got[b, t]):.4f}, want {want:.4f}"
            )


# ----------------------------------------------------------------------------- ch15.sequence_logprob


@pytest.mark.exercise("ch15.sequence_logprob")
@pytest.mark.parametrize("B, T, V", [(5, 9, 7), (3, 4, 23), (2, 1, 5)])
def test_sequence_logprob_matches_a_masked_loop(B, T, V):
    logits = logits_for(B, T, V, seed=7 * B + T + V)
    spans = spans_for(B, T)
    mask = reply_mask(spans, T)
    mask[-1] = 0  # a row with no reply at all: its log-probability is the empty sum, 0
    targets = torch.randint(0, V, (B, T), generator=gen(T))
    targets[mask == 0] = -100  # as sft_batch writes them: nothing to learn there
    for m in (mask, mask.bool(), mask.double()):
        got = rl.sequence_logprob(logits, targets, m)
        assert got.shape == (B,), f"sequence_logprob should return shape ({B},), got {tuple(got.shape)}"
        for b in range(B):
            want = sum(loop_logprob(logits, b, t, int(targets[b, t])) for t in range(T) if mask[b, t])
            assert abs(float(got[b]) - want) < 1e-10, (
                f"row {b} (reply at {spans[b] if b < B - 1 else 'nowhere'}, mask {m.dtype}): got {float(got[b]):.6f}, "
                f"want {want:.6f}: the sum of the reply tokens' log-probabilities, nothing from the other positions"
            )


@pytest.mark.exercise("ch15.sequence_logprob")
def test_sequence_logprob_gradient_reaches_only_the_reply_positions():
    B, T, V = 3, 8, 6
    logits = logits_for(B, T, V, seed=61).requires_grad_()
    mask = reply_mask([(2, 6), (0, 3), (5, 8)], T)
    targets = torch.randint(0, V, (B, T), generator=gen(62)).masked_fill(mask == 0, -100)
    w = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    (rl.sequence_logprob(logits, targets, mask) * w).sum().backward()
    assert logits.grad is not None, "no gradient reached the logits"
    p = torch.softmax(logits.detach(), -1)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                want = w[b] * (torch.nn.functional.one_hot(targets[b, t], V).double() - p[b, t])
                assert err(logits.grad[b, t], want) < 1e-12, (
                    f"position ({b}, {t}) of the reply: d log p(y) / d logits is one_hot(y) - softmax(logits)"
                )
            else:
                assert not logits.grad[b, t].any(), f"position ({b}, {t}) is not in the reply: its gradient must be 0"


# ----------------------------------------------------------------------------- ch15.bradley_terry


def _bt_pair(m: float) -> float:
    return math.log(1 + math.exp(-m))


@pytest.mark.exercise("ch15.bradley_terry")
def test_bradley_terry_matches_the_per_pair_formula_with_large_margins():
    n = 37
    r_c = randn(n, seed=70) * 3 + 0.5
    r_r = randn(n, seed=71) * 2 - 0.3
    r_c[:4] = torch.tensor([60.0, -60.0, 30.0, 0.0], dtype=torch.float64)
    r_r[:4] = torch.tensor([-0.0, 0.0, 90.0, 0.0], dtype=torch.float64)  # margins 60, -60, -60, 0
    loss = rl.bradley_terry_loss(r_c, r_r)
    assert loss.dim() == 0, f"the loss should be a 0-dim tensor, got shape {tuple(loss.shape)}"
    want = sum(_bt_pair(float(c - r)) for c, r in zip(r_c, r_r, strict=True)) / n
    assert abs(loss.item() - want) < 1e-12, f"mean of -log σ(r_chosen - r_rejected) is {want:.9f}, got {loss.item()}"
    one = rl.bradley_terry_loss(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert abs(one.item() - math.log(2)) < 1e-15, "a pair with equal rewards costs ln 2: a coin flip"
    # float32, margins of ±200: σ(-200) is 0 in float32, so -log σ must be computed without forming σ
    m = torch.tensor([200.0, -200.0, -150.0, 90.0], dtype=torch.float32)
    loss32 = rl.bradley_terry_loss(m, torch.zeros(4))
    want32 = (0 + 200 + 150 + _bt_pair(90.0)) / 4
    assert math.isfinite(loss32.item()), "margins of ±200 in float32 gave a non-finite loss: use a stable form"
    assert abs(loss32.item() - want32) < 1e-4 * want32, f"float32, margins ±200: want {want32}, got {loss32.item()}"


@pytest.mark.exercise("ch15.bradley_terry")
def test_bradley_terry_gradient_raises_the_chosen_and_lowers_the_rejected():
    n = 11
    r_c = (randn(n, seed=80) * 2).requires_grad_()
    r_r = (randn(n, seed=81) * 2 + 0.5).requires_grad_()
    rl.bradley_terry_loss(r_c, r_r).backward()
    assert r_c.grad is not None and r_r.grad is not None, "the loss must be differentiable in both rewards"
    assert (r_c.grad < 0).all(), "descending the loss must raise every chosen reward (its gradient is negative)"
    assert (r_r.grad > 0).all(), "descending the loss must lower every rejected reward (its gradient is positive)"
    margin = (r_c - r_r).detach()
    want = -torch.sigmoid(-margin) / n  # d/dm of -log σ(m) = -σ(-m), averaged over the pairs
    assert err(r_c.grad, want) < 1e-12 and err(r_r.grad, -want) < 1e-12, "d loss / d r_chosen = -σ(-margin) / n"
    shifted = rl.bradley_terry_loss(r_c.detach() + 5.0, r_r.detach() + 5.0)
    assert abs(shifted.item() - rl.bradley_terry_loss(r_c.detach(), r_r.detach()).item()) < 1e-12, (
        "only the margin matters: adding the same number to both rewards changes nothing"
    )


# ----------------------------------------------------------------------------- ch15.dpo_loss


def _logps(n: int, seed: int) -> torch.Tensor:
    """Sequence log-probabilities: negative, tens of nats, different per reply."""
    return -(5 + 60 * torch.rand(n, generator=gen(seed), dtype=torch.float64))


def _dpo_pair(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """The paper's eq. 7 for one pair: -log σ(β log π(yw)/π_ref(yw) - β log π(yl)/π_ref(yl))."""
    z = beta * (pc - rc) - beta * (pr - rr)
    return math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z))


@pytest.mark.exercise("ch15.dpo_loss")
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_is_ln2_with_zero_margins_when_the_policy_is_the_reference(beta):
    pc, pr = _logps(9, seed=90), _logps(9, seed=91)
    loss, r_c, r_r = rl.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta)
    assert abs(loss.item() - math.log(2)) < 1e-12, f"β={beta}: at the start (π = π_ref) the loss is ln 2"
    assert r_c.shape == (9,) and r_r.shape == (9,), "the implicit rewards are one per pair, shape (B,)"
    assert not r_c.any() and not r_r.any(), "at the start every implicit reward is 0"


@pytest.mark.exercise("ch15.dpo_loss")
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 3.0])
def test_dpo_loss_matches_the_papers_formula(beta):
    n = 23
    pc, pr, rc, rr = (_logps(n, seed=100 + k) for k in range(4))
    loss, r_c, r_r = rl.dpo_loss(pc, pr, rc, rr, beta)
    assert loss.dim() == 0, f"the loss should be a 0-dim tensor, got shape {tuple(loss.shape)}"
    want = sum(_dpo_pair(*map(float, x), beta) for x in zip(pc, pr, rc, rr, strict=True)) / n
    assert abs(loss.item() - want) < 1e-12 * max(1.0, want), f"β={beta}: want {want:.9f}, got {loss.item()}"
    for i in range(n):
        assert abs(float(r_c[i]) - beta * float(pc[i] - rc[i])) < 1e-12, "r_chosen = β (log π - log π_ref), chosen"
        assert abs(float(r_r[i]) - beta * float(pr[i] - rr[i])) < 1e-12, "r_rejected = β (log π - log π_ref)"


@pytest.mark.exercise("ch15.dpo_loss")
def test_dpo_gradient_raises_the_chosen_lowers_the_rejected_and_rewards_are_detached():
    n, beta = 7, 0.3
    pc = _logps(n, seed=110).requires_grad_()
    pr = _logps(n, seed=111).requires_grad_()
    rc, rr = _logps(n, seed=112), _logps(n, seed=113)  # the frozen reference: no gradient
    loss, r_c, r_r = rl.dpo_loss(pc, pr, rc, rr, beta)
    assert not r_c.requires_grad and not r_r.requires_grad, "the returned rewards are for logging: detach them"
    loss.backward()
    assert pc.grad is not None and pr.grad is not None, "the loss must be differentiable in the policy log-probs"
    assert (pc.grad < 0).all(), "descending the loss must raise log π(chosen) (negative gradient)"
    assert (pr.grad > 0).all(), "descending the loss must lower log π(rejected) (positive gradient)"
    z = beta * ((pc - rc) - (pr - rr)).detach()
    want = -beta * torch.sigmoid(-z) / n  # each pair weighed by how wrong its implicit reward model is
    assert err(pc.grad, want) < 1e-12 and err(pr.grad, -want) < 1e-12, "d loss / d log π(chosen) = -β σ(-z) / n"


# ----------------------------------------------------------------------------- ch15.kl_penalty


P = [0.42, 0.25, 0.15, 0.1, 0.05, 0.03]  # the policy π
Q = [0.15, 0.3, 0.05, 0.2, 0.2, 0.1]  # the reference π_ref


@pytest.mark.exercise("ch15.kl_penalty")
def test_kl_estimators_per_token():
    logp = randn(4, 13, seed=120) - 2
    ref = logp + randn(4, 13, seed=121) * 1.5
    ref[0, :3] = logp[0, :3]  # some tokens where π and π_ref agree
    k1, k2, k3 = (rl.kl_penalty(logp, ref, k) for k in ("k1", "k2", "k3"))
    for k, name in ((k1, "k1"), (k2, "k2"), (k3, "k3")):
        assert k.shape == logp.shape, f"{name} is per token: shape {tuple(logp.shape)}, got {tuple(k.shape)}"
    assert err(rl.kl_penalty(logp, ref), k1) == 0, "the default estimator is k1"
    for b in range(4):
        for t in range(13):
            lr = float(logp[b, t] - ref[b, t])  # log π - log π_ref of the sampled token
            r = math.exp(-lr)
            assert abs(float(k1[b, t]) - lr) < 1e-12, "k1 = log π - log π_ref"
            assert abs(float(k2[b, t]) - 0.5 * lr * lr) < 1e-12, "k2 = ½ (log π - log π_ref)²"
            assert abs(float(k3[b, t]) - ((r - 1) - math.log(r))) < 1e-10 * max(1.0, r), "k3 = (r - 1) - log r"
    assert (k3 >= 0).all() and (k2 >= 0).all(), "k2 and k3 are never negative"
    assert (k1 < 0).any(), "test setup: k1 is negative on some tokens"
    grid = torch.linspace(-30, 30, 121, dtype=torch.float64)
    assert (rl.kl_penalty(grid, torch.zeros_like(grid), "k3") >= 0).all(), "k3 ≥ 0 for any log-ratio"
    for bad in ("k4", "kl", "K1"):
        with pytest.raises(ValueError):
            rl.kl_penalty(logp, ref, bad)


@pytest.mark.exercise("ch15.kl_penalty")
def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    p, q = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    log_ratio = torch.log(p) - torch.log(q)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(P, Q, strict=True))  # exact KL(π ‖ π_ref)
    n = 200 * 500
    tokens = torch.multinomial(p, n, replacement=True, generator=gen(130)).view(200, 500)  # sampled from π
    logp, ref = torch.log(p)[tokens], torch.log(q)[tokens]
    exact = {  # E over π of each estimator, and its standard deviation, by the sum over the 6 tokens
        "k1": log_ratio,
        "k2": 0.5 * log_ratio**2,
        "k3": (q / p - 1) - torch.log(q / p),
    }
    for kind, values in exact.items():
        mean = float((p * values).sum())
        std = math.sqrt(float((p * (values - mean) ** 2).sum()))
        got = float(rl.kl_penalty(logp, ref, kind).mean())
        assert abs(got - mean) < 5 * std / math.sqrt(n), (
            f"{kind}: the mean over {n} sampled tokens is {got:.5f}, but its expectation is {mean:.5f}"
        )
        if kind == "k2":
            assert abs(mean - kl) > 0.02, "test setup: k2's expectation is not the KL (it is biased)"
        else:
            assert abs(mean - kl) < 1e-12, f"{kind} is unbiased: E[{kind}] = KL = {kl:.5f}"
            assert abs(got - kl) < 5 * std / math.sqrt(n), f"{kind}: the mean {got:.5f} should approach KL {kl:.5f}"


# ----------------------------------------------------------------------------- ch15.gae


def _gae_brute(rewards, values, spans, gamma, lam):
    """For each t of a reply s..e-1: A_t = Σ_l (γλ)^l δ_{t+l}, δ_u = r_u + γ V_{u+1} - V_u, V_e = 0 (it ended)."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    for b, (s, e) in enumerate(spans):
        r = [float(x) for x in rewards[b]]
        v = [float(x) for x in values[b]]

        def delta(u, r=r, v=v, e=e):
            return r[u] + gamma * (v[u + 1] if u + 1 < e else 0.0) - v[u]

        for t in range(s, e):
            adv[b][t] = sum((gamma * lam) ** l * delta(t + l) for l in range(e - t))
    return torch.tensor(adv, dtype=torch.float64)


def _gae_inputs(B, T, seed):
    spans = spans_for(B, T)
    rewards = randn(B, T, seed=seed) * 0.5 + torch.rand(B, T, generator=gen(seed + 1), dtype=torch.float64)
    values = randn(B, T, seed=seed + 2) + 0.3  # also outside the replies: the value head reads the padding too
    return spans, reply_mask(spans, T), rewards, values


@pytest.mark.exercise("ch15.gae")
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.5), (0.8, 1.0)])
def test_gae_matches_brute_force(gamma, lam):
    B, T = 6, 11
    spans, mask, rewards, values = _gae_inputs(B, T, seed=int(gamma * 100 + lam * 10))
    assert len({s for s, _ in spans}) > 2 and len({e for _, e in spans}) > 2, "test setup: varied reply spans"
    adv, ret = rl.gae(rewards, values, mask, gamma, lam)
    assert adv.shape == (B, T) and ret.shape == (B, T), "gae returns (advantages, returns), each (B, T)"
    want = _gae_brute(rewards, values, spans, gamma, lam)
    for b, (s, e) in enumerate(spans):
        assert err(adv[b], want[b]) < 1e-12, (
            f"γ={gamma}, λ={lam}, row {b} (reply at {s}..{e - 1}): advantages {adv[b].tolist()}, "
            f"want {want[b].tolist()}"
        )
    assert err(ret, (want + values) * mask) < 1e-12, "returns = advantages + values on the reply, 0 elsewhere"
    assert not adv[mask == 0].any() and not ret[mask == 0].any(), "outside the reply both must be 0"
    adv_b, _ = rl.gae(rewards, values, mask.bool(), gamma, lam)
    assert err(adv_b, adv) < 1e-15, "a bool mask means the same as a 0/1 mask"


@pytest.mark.exercise("ch15.gae")
def test_gae_lambda_one_is_reward_to_go_and_lambda_zero_is_the_td_error():
    B, T, gamma = 5, 9, 0.9
    spans, mask, rewards, values = _gae_inputs(B, T, seed=140)
    _, ret = rl.gae(rewards, values, mask, gamma, 1.0)
    adv0, _ = rl.gae(rewards, values, mask, gamma, 0.0)
    for b, (s, e) in enumerate(spans):
        for t in range(s, e):
            to_go = sum(gamma ** (u - t) * float(rewards[b, u]) for u in range(t, e))
            assert abs(float(ret[b, t]) - to_go) < 1e-12, (
                f"λ = 1, row {b}, t = {t}: the return is the reward-to-go {to_go:.6f}, got {float(ret[b, t])}"
            )
            next_v = float(values[b, t + 1]) if t + 1 < e else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            assert abs(float(adv0[b, t]) - delta) < 1e-12, f"λ = 0, row {b}, t = {t}: the advantage is δ_t = {delta}"
    assert not ret[mask == 0].any() and not adv0[mask == 0].any(), "outside the reply both must be 0"


# ----------------------------------------------------------------------------- ch15.ppo_clip


def _ppo_inputs(seed: int, B: int = 8, T: int = 16):
    spans = spans_for(B, T)
    old = randn(B, T, seed=seed) - 1.5
    logp = old + randn(B, T, seed=seed + 1) * 0.4  # ratios from about 0.3 to 3: many outside 1 ± ε
    adv = randn(B, T, seed=seed + 2) * 1.7 + 0.2
    # row 0 is all reply: a few tokens of each case, whatever the seed (ε ≤ 0.35)
    lr = torch.tensor([0.5] * 3 + [-0.5] * 3 + [-0.5] * 3 + [0.01] * 3, dtype=torch.float64)
    adv[0, :12] = torch.tensor([1.0] * 3 + [-1.0] * 3 + [1.3] * 3 + [0.7] * 3, dtype=torch.float64)
    logp[0, :12] = old[0, :12] + lr  # past 1 + ε with A > 0, below 1 - ε with A < 0 or A > 0, inside
    return spans, reply_mask(spans, T), logp, old, adv


@pytest.mark.exercise("ch15.ppo_clip")
@pytest.mark.parametrize("clip", [0.2, 0.1, 0.35])
def test_ppo_clip_loss_matches_the_per_token_objective(clip):
    _, mask, logp, old, adv = _ppo_inputs(seed=int(clip * 100))
    loss = rl.ppo_clip_loss(logp, old, adv, mask, clip)
    assert loss.dim() == 0, f"the loss should be a 0-dim tensor, got shape {tuple(loss.shape)}"
    terms, clipped = [], 0
    for b, t in mask.nonzero().tolist():
        rho, a = math.exp(float(logp[b, t] - old[b, t])), float(adv[b, t])
        terms.append(min(rho * a, min(max(rho, 1 - clip), 1 + clip) * a))
        clipped += not 1 - clip <= rho <= 1 + clip
    assert clipped > 5 and len(terms) - clipped > 5, "test setup: tokens inside and outside the clip range"
    want = -sum(terms) / len(terms)
    assert abs(loss.item() - want) < 1e-12, (
        f"ε={clip}: -mean over the reply tokens of min(ρA, clip(ρ, 1-ε, 1+ε) A) is {want:.9f}, got {loss.item():.9f}"
    )


@pytest.mark.exercise("ch15.ppo_clip")
def test_ppo_clip_gradient_vanishes_where_the_ratio_left_the_range_in_the_improving_direction():
    clip = 0.2
    _, mask, logp0, old, adv = _ppo_inputs(seed=150)
    logp = logp0.clone().requires_grad_()
    rl.ppo_clip_loss(logp, old, adv, mask, clip).backward()
    assert logp.grad is not None, "no gradient reached logp"
    n = int(mask.sum())
    rho = torch.exp(logp0 - old)
    cases = {"inside": 0, "stopped": 0, "unclipped": 0}
    for b in range(8):
        for t in range(16):
            g, r, a = float(logp.grad[b, t]), float(rho[b, t]), float(adv[b, t])
            if not mask[b, t]:
                assert g == 0, f"({b}, {t}) is not a reply token: its gradient must be 0"
            elif (a > 0 and r > 1 + clip) or (a < 0 and r < 1 - clip):
                cases["stopped"] += 1
                assert g == 0, (f"({b}, {t}): ρ = {r:.3f}, A = {a:.3f}: the ratio already moved past 1 ± ε the way A "
                                "wants, so this token's gradient must be 0")
            else:
                cases["inside" if 1 - clip <= r <= 1 + clip else "unclipped"] += 1
                assert abs(g - (-r * a / n)) < 1e-12, f"({b}, {t}): ρ = {r:.3f}, A = {a:.3f}: the gradient is -ρA/n"
    assert min(cases.values()) > 2, f"test setup: every case should occur, got {cases}"


@pytest.mark.exercise("ch15.ppo_clip")
def test_ppo_clip_at_the_sampling_policy_is_minus_the_mean_advantage():
    _, mask, _, old, adv = _ppo_inputs(seed=160, B=7, T=13)
    logp = old.clone().requires_grad_()
    loss = rl.ppo_clip_loss(logp, old, adv, mask, 0.2)
    selected = [float(adv[b, t]) for b, t in mask.nonzero().tolist()]
    assert abs(loss.item() + sum(selected) / len(selected)) < 1e-12, "at ρ = 1 the loss is -mean(A) over the reply"
    loss.backward()
    assert err(logp.grad, -adv * mask / len(selected)) < 1e-12, "at ρ = 1 the gradient is the policy gradient -A/n"


# ----------------------------------------------------------------------------- ch15.value_loss


def _value_inputs(seed: int, B: int = 8, T: int = 12):
    old = randn(B, T, seed=seed)
    values = old + randn(B, T, seed=seed + 1) * 0.4  # many moved further than ±clip
    returns = old + randn(B, T, seed=seed + 2)
    # row 0 is all reply: whatever the seed, tokens that moved past the clip (ε ≤ 0.5) with the clipped error the
    # larger (0..2) and the smaller (3..5)
    old[0, :6] = torch.tensor([0.1] * 6, dtype=torch.float64)
    values[0, :6] = torch.tensor([0.7] * 3 + [-0.6] * 3, dtype=torch.float64)
    returns[0, :6] = torch.tensor([1.1] * 3 + [0.6] * 3, dtype=torch.float64)
    return reply_mask(spans_for(B, T), T), values, old, returns


@pytest.mark.exercise("ch15.value_loss")
@pytest.mark.parametrize("clip", [0.2, 0.5])
def test_value_loss_matches_the_per_token_formula(clip):
    mask, values, old, returns = _value_inputs(seed=int(clip * 10) + 170)
    loss = rl.value_loss(values, old, returns, mask, clip)
    assert loss.dim() == 0, f"the loss should be a 0-dim tensor, got shape {tuple(loss.shape)}"
    terms, moved = [], 0
    for b, t in mask.nonzero().tolist():
        v, v_old, ret = float(values[b, t]), float(old[b, t]), float(returns[b, t])
        v_clipped = v_old + min(max(v - v_old, -clip), clip)
        terms.append(0.5 * max((v - ret) ** 2, (v_clipped - ret) ** 2))
        moved += abs(v - v_old) > clip
    assert moved > 3, "test setup: some values moved further than the clip"
    want = sum(terms) / len(terms)
    assert abs(loss.item() - want) < 1e-12, f"clip={clip}: want {want:.9f}, got {loss.item():.9f}"
    unclipped = rl.value_loss(old, old, returns, mask, clip)
    want0 = sum(0.5 * float(old[b, t] - returns[b, t]) ** 2 for b, t in mask.nonzero().tolist()) / len(terms)
    assert abs(unclipped.item() - want0) < 1e-12, "when the values have not moved, the loss is ½ mean((V - R)²)"


@pytest.mark.exercise("ch15.value_loss")
def test_value_loss_gradient():
    clip = 0.2
    mask, values0, old, returns = _value_inputs(seed=180)
    values = values0.clone().requires_grad_()
    rl.value_loss(values, old, returns, mask, clip).backward()
    assert values.grad is not None, "no gradient reached the values"
    n, frozen = int(mask.sum()), 0
    for b in range(8):
        for t in range(12):
            g = float(values.grad[b, t])
            v, v_old, ret = float(values0[b, t]), float(old[b, t]), float(returns[b, t])
            v_clipped = v_old + min(max(v - v_old, -clip), clip)
            if not mask[b, t]:
                assert g == 0, f"({b}, {t}) is not a reply token: its gradient must be 0"
            elif abs(v - v_old) > clip and (v_clipped - ret) ** 2 > (v - ret) ** 2:
                frozen += 1
                assert g == 0, f"({b}, {t}): the clipped error is the larger and no longer depends on V: gradient 0"
            else:
                assert abs(g - (v - ret) / n) < 1e-12, f"({b}, {t}): the gradient of ½(V - R)² / n is (V - R) / n"
    assert frozen > 2, "test setup: some tokens where the clipped error wins"


# ----------------------------------------------------------------------------- ch15.grpo_advantages


def _grouped_rewards(G: int, k: int, seed: int) -> torch.Tensor:
    """G groups of k rewards, each group with its own mean and spread (≥ 0.5)."""
    centre = randn(G, 1, seed=seed) * 3
    spread = 0.5 + 2 * torch.rand(G, 1, generator=gen(seed + 1), dtype=torch.float64)
    z = randn(G, k, seed=seed + 2)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, keepdim=True)  # so each group's spread is exactly `spread`
    return (centre + spread * z).view(-1)


@pytest.mark.exercise("ch15.grpo_advantages")
@pytest.mark.parametrize("G, k", [(7, 2), (5, 3), (3, 8)])
def test_grpo_advantages_standardise_each_group(G, k):
    rewards = _grouped_rewards(G, k, seed=190 + k)
    adv = rl.grpo_advantages(rewards, k)
    assert adv.shape == (G * k,), f"one advantage per reply: shape ({G * k},), got {tuple(adv.shape)}"
    for g in range(G):
        r = [float(x) for x in rewards[g * k:(g + 1) * k]]
        mean = sum(r) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (k - 1))  # unbiased, as torch.std
        a = adv[g * k:(g + 1) * k].tolist()
        for i in range(k):
            want = (r[i] - mean) / std
            assert abs(a[i] - want) < 1e-5, f"group {g}, reply {i}: want (r - group mean) / group std = {want:.6f}"
        assert abs(sum(a) / k) < 1e-9, f"group {g}: the advantages of a group average 0"
        sd = math.sqrt(sum(x * x for x in a) / (k - 1))
        assert abs(sd - 1) < 1e-5, f"group {g}: the advantages of a group have (unbiased) standard deviation 1"
    for bad, size in ((rewards.view(G, k), k), (rewards[:-1], k), (rewards, 1)):
        with pytest.raises(ValueError):
            rl.grpo_advantages(bad, size)


@pytest.mark.exercise("ch15.grpo_advantages")
def test_grpo_advantages_constant_groups_and_invariances():
    G, k = 6, 4
    rewards = _grouped_rewards(G, k, seed=200)
    rewards[4:8] = 0.7  # a group whose replies all scored the same: no signal
    rewards[16:20] = 3.1
    adv = rl.grpo_advantages(rewards, k)
    assert adv[4:8].abs().max() < 1e-8 and adv[16:20].abs().max() < 1e-8, "a constant group gets zero advantages"
    assert adv[:4].abs().max() > 0.1, "the other groups do not"
    shift = torch.repeat_interleave(randn(G, seed=201) * 10, k)
    scale = torch.repeat_interleave(0.3 + 5 * torch.rand(G, generator=gen(202), dtype=torch.float64), k)
    assert err(rl.grpo_advantages(rewards + shift, k), adv) < 1e-6, "adding a constant to a group changes nothing"
    live = torch.ones(G * k, dtype=torch.bool)
    live[4:8], live[16:20] = False, False
    scaled = rl.grpo_advantages(rewards * scale, k)
    assert err(scaled[live], adv[live]) < 1e-4, "scaling a group by a positive number changes nothing"
