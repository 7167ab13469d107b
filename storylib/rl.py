"""Chapter 15: learning from preferences — a reward model, DPO, PPO with a KL leash, and GRPO.

The losses and estimators of the chapter, each a few lines of tensor code on per-token log-probabilities:

    sequence_logprob      log p(reply | prompt): the masked sum of per-token log-probabilities
    bradley_terry_loss    the reward model's loss: -log σ(r_chosen - r_rejected)
    dpo_loss              Direct Preference Optimisation: the same loss on β·(log-ratio to a frozen reference)
    kl_penalty            per-token estimates of KL(policy ‖ reference) from sampled tokens (k1, k2, k3)
    gae                   generalised advantage estimation over a reply, right to left
    ppo_clip_loss         PPO's clipped surrogate objective
    value_loss            the value head's clipped squared error
    grpo_advantages       GRPO: each reply's reward standardised within its group of replies to one prompt

Every function takes (B, T) tensors with a 0/1 `mask` of the positions that are reply tokens (the prompt and the
padding are 0), so a batch of replies of different lengths is one tensor. The training loops that use them are in
storylib.rlhf; the programmatic reward and the preference pairs in storylib.preferences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask.to(x.dtype)).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the positions where mask is 1 (all of them, every row pooled). Raises ValueError when the
    mask selects nothing."""
    m = mask.to(x.dtype)
    if not bool(m.sum() > 0):
        raise ValueError("the mask selects no position")
    return (x * m).sum() / m.sum()


# ----------------------------------------------------------------------------- log-probabilities of replies


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | logits[b, t]): (B, T, V) logits and (B, T) ids → (B, T), in float32 or float64.

    A negative target (-100: nothing to learn there) must not break the lookup: its position gets some finite
    value, which the mask of the caller removes."""
    ### BEGIN SOLUTION ch15.token_logprobs (§15.3, 2 pts): each row of logits as log-probabilities; pick the target's
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.gather(F.log_softmax(logits, -1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ### END SOLUTION


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(reply | prompt) per row: the sum of log p(targets[b, t]) over the positions where mask[b, t] == 1.

    logits (B, T, V): the model's output at each position; targets (B, T): the next ids (any value where the mask is
    0, e.g. -100); mask (B, T) of 0/1. Returns (B,) in the float type of the log-softmax (at least float32).
    """
    ### BEGIN SOLUTION ch15.sequence_logprob (§15.3, 1 pt): a reply's probability is a product over its tokens only
    return _masked_sum(token_logprobs(logits, targets), mask)
    ### END SOLUTION


# ----------------------------------------------------------------------------- rewards from preferences


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """The reward model's loss on preference pairs: mean of -log σ(r_chosen - r_rejected) (Bradley & Terry, 1952;
    Ouyang et al. 2022). Written with logsigmoid, which stays finite for large margins of either sign."""
    ### BEGIN SOLUTION ch15.bradley_terry (§15.2, 1 pt): P(chosen wins) is a sigmoid of the margin; finite at any margin
    return -F.logsigmoid(r_chosen - r_rejected).mean()
    ### END SOLUTION


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimisation (Rafailov et al. 2023) from sequence log-probabilities, all (B,).

    The implicit reward of a reply is β·(log π(y|x) - log π_ref(y|x)); the loss is Bradley–Terry on those rewards:
    mean of -log σ(r_chosen - r_rejected). Returns (loss, r_chosen, r_rejected), the rewards detached (for the
    margins and accuracy a training log shows). At the start (π = π_ref) the loss is ln 2.
    """
    ### BEGIN SOLUTION ch15.dpo_loss (§15.3, 2 pts): the implicit reward is a log-ratio to the reference
    r_chosen = beta * (policy_chosen - ref_chosen)
    r_rejected = beta * (policy_rejected - ref_rejected)
    return bradley_terry_loss(r_chosen, r_rejected), r_chosen.detach(), r_rejected.detach()
    ### END SOLUTION


# ----------------------------------------------------------------------------- the KL leash


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimates of KL(π ‖ π_ref) from the log-probabilities of tokens SAMPLED from π (Schulman 2020):

        k1 = log π - log π_ref                     unbiased, can be negative
        k2 = ½ (log π - log π_ref)²                biased, low variance, ≥ 0
        k3 = (r - 1) - log r,  r = π_ref / π       unbiased and ≥ 0

    Their means over many samples estimate the KL; k1 is what PPO's reward subtracts per token.
    """
    if kind not in ("k1", "k2", "k3"):
        raise ValueError(f"unknown KL estimator {kind!r}: k1, k2 or k3")
    ### BEGIN SOLUTION ch15.kl_penalty (§15.4, 2 pts): all three are functions of the per-token log-ratio
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(-log_ratio) + log_ratio  # (r - 1) - log r, accurate for r near 1
    ### END SOLUTION


# ----------------------------------------------------------------------------- PPO


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's reply tokens.

    rewards, values (B, T): the reward received after the token at t and the value head's estimate at t; mask (B, T)
    marks the reply's tokens, one contiguous run per row. After a row's last reply token the episode ends (the
    next value is 0). δ_t = r_t + γ V_{t+1} - V_t; A_t = δ_t + γλ A_{t+1}, from right to left.
    Returns (advantages, returns = advantages + values), both 0 outside the mask.
    """
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m  # outside the reply nothing counts: the value after its end is 0
    ### BEGIN SOLUTION ch15.gae (§15.5, 3 pts): walk each reply from its end back to its start; stop at the mask
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m
    ### END SOLUTION


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss to minimise, averaged over the masked tokens:
    -min(ρ A, clip(ρ, 1 - ε, 1 + ε) A) with ρ = exp(logp - old_logp): no token gains by moving its probability
    further than a factor 1 ± ε from the policy that sampled it."""
    ### BEGIN SOLUTION ch15.ppo_clip (§15.5, 2 pts): the probability ratio to the sampling policy, pessimistic about A
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -masked_mean(surrogate, mask)
    ### END SOLUTION


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """The value head's loss: ½ max((V - R)², (V_clipped - R)²) averaged over the masked tokens, V_clipped within
    ±clip of the values at sampling time (as in the PPO implementations of the RLHF papers)."""
    ### BEGIN SOLUTION ch15.value_loss (§15.5, 2 pts): the value moves only so far from the old one; the worse error
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    ### END SOLUTION


# ----------------------------------------------------------------------------- GRPO


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024): rewards (B,) of B = G·group_size replies, each group the replies to
    one prompt, consecutive; each reward minus its group's mean, over its group's standard deviation (+ eps).
    A group whose replies all scored the same gets zeros: it says nothing about which reply is better."""
    if group_size < 2 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"need groups of at least 2 and (G·{group_size},) rewards, got shape {tuple(rewards.shape)}")
    ### BEGIN SOLUTION ch15.grpo_advantages (§15.6, 2 pts): the group is the baseline: each reply vs its siblings
    groups = rewards.view(-1, group_size)
    adv = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)
    return adv.view(-1)
    ### END SOLUTION
