"""Build solutions/ch15_rl.ipynb, the nbgrader source notebook of Chapter 15 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch15_rl", title="Chapter 15 — RL: a reward model, DPO, PPO with a KL leash, GRPO")
nb.markdown(
    """
    In this notebook you write the losses and estimators of learning from preferences, all in `storylib/rl.py`, in
    the order of the book: the reward model's Bradley–Terry loss, the log-probability of a reply (per token, then
    summed over the reply), DPO, the KL leash that keeps the policy near the chat model it started from, PPO's
    generalised advantage estimation, clipped objective and value loss, and GRPO's group-normalised advantages.

    Every function works on (B, T) tensors of per-token numbers with a 0/1 `mask` of the reply's positions, so a
    batch of replies of different lengths is one tensor. The small cells use hand-made and random tensors (fast);
    the graded cells run the package tests of one exercise against *your* `storylib`. The last cell trains a toy
    policy with your DPO loss and shows the margin between the chosen and the rejected reply grow.
    """
)
nb.code(
    """
    import math

    import torch

    torch.manual_seed(0)
    B, T, V = 2, 6, 7
    logits = torch.randn(B, T, V, dtype=torch.float64)  # a model's output at each position
    mask = torch.tensor([[0, 0, 1, 1, 1, 0],  # row 0: a prompt of 2 tokens, a reply of 3, then padding
                         [0, 1, 1, 1, 1, 1]])  # row 1: a prompt of 1 token, a reply of 5
    targets = torch.randint(0, V, (B, T)).masked_fill(mask == 0, -100)  # -100: nothing to learn there
    """,
    locked=True,
)
nb.exercise(
    "ch15.bradley_terry",
    try_it="""
    r_chosen = torch.tensor([2.0, 0.5, -1.0, 60.0])
    r_rejected = torch.tensor([1.0, 0.5, 1.0, -60.0])  # margins 1, 0, -2, 120
    print(bradley_terry_loss(r_chosen, r_rejected))
    print(sum(math.log(1 + math.exp(-m)) for m in (1, 0, -2, 120)) / 4, "(the same number)")
    print(bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0])), "(expected 200, not inf)")
    """,
)
nb.exercise(
    "ch15.token_logprobs",
    try_it="""
    lp = token_logprobs(logits, targets)
    print(lp)
    print(torch.log_softmax(logits[1, 2], -1)[targets[1, 2]], "(the same as lp[1, 2])")
    print("finite where the target is -100:", torch.isfinite(lp).all().item())
    """,
)
nb.exercise(
    "ch15.sequence_logprob",
    try_it="""
    from storylib.rl import token_logprobs

    print(sequence_logprob(logits, targets, mask))
    print(token_logprobs(logits, targets)[0, 2:5].sum(), "(row 0: the sum over its three reply tokens)")
    """,
)
nb.exercise(
    "ch15.dpo_loss",
    try_it="""
    pc, pr = torch.tensor([-12.0, -30.0]), torch.tensor([-15.0, -28.0])  # log π(chosen), log π(rejected)
    loss, r_c, r_r = dpo_loss(pc, pr, pc, pr, beta=0.1)
    print(loss.item(), "(expected ln 2 = 0.6931: the policy is still the reference)")
    loss, r_c, r_r = dpo_loss(pc + 2, pr - 1, pc, pr, beta=0.1)
    print(r_c, r_r, "(expected 0.2 and -0.1 for both pairs)")
    print(loss.item(), "(lower than ln 2: the policy prefers the chosen replies more than the reference does)")
    """,
)
nb.question(
    "ch15_q_dpo",
    points=1,
    prompt="""
    During a DPO run with β = 0.1, the policy has raised log π(chosen) by 3 nats above the reference and lowered
    log π(rejected) by 2 nats below it. What is this pair's loss? Set `pair_loss` (a float).
    """,
    solution="pair_loss = math.log(1 + math.exp(-0.1 * (3 - (-2))))",
    test="assert abs(pair_loss - 0.47407698418010663) < 1e-6, 'the margin is β·(3 - (-2)) = 0.5; -log σ(0.5)'",
)
nb.exercise(
    "ch15.kl_penalty",
    try_it="""
    logp = torch.tensor([-1.0, -2.0, -0.5])  # log π of three sampled tokens
    ref_logp = torch.tensor([-1.5, -1.0, -0.5])  # log π_ref of the same tokens
    for kind in ("k1", "k2", "k3"):
        print(kind, kl_penalty(logp, ref_logp, kind))
    print("(expected k1 [0.5, -1, 0], k2 [0.125, 0.5, 0], k3 [0.1065, 0.7183, 0])")
    """,
)
nb.exercise(
    "ch15.gae",
    try_it="""
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])  # the reward arrives after the reply's last token
    values = torch.tensor([[0.0, 0.5, 0.5, 0.5, 9.9]])  # 9.9 is on padding: it must not count
    reply = torch.tensor([[0, 1, 1, 1, 0]])
    adv, ret = gae(rewards, values, reply, gamma=1.0, lam=1.0)
    print(ret, "(expected [[0, 1, 1, 1, 0]]: with γ = λ = 1 the return is the reward still to come)")
    print(adv, "(expected [[0, 0.5, 0.5, 0.5, 0]])")
    """,
)
nb.exercise(
    "ch15.ppo_clip",
    try_it="""
    old_logp = torch.full((1, 3), -1.0)
    logp = old_logp + torch.tensor([[0.0, 0.5, -0.5]])  # ratios 1, 1.65, 0.61
    adv = torch.ones(1, 3)
    print(ppo_clip_loss(logp, old_logp, adv, torch.ones(1, 3), clip=0.2))
    print("(expected -(1 + 1.2 + 0.607) / 3 = -0.936: the ratio 1.65 counts as 1.2, the 0.61 in full)")
    """,
)
nb.exercise(
    "ch15.value_loss",
    try_it="""
    values, old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 1.0]])
    print(value_loss(values, old_values, returns, torch.ones(1, 2), clip=0.2))
    print("(expected (½·0.3² + ½·1²) / 2 = 0.2725: the first value may only reach 0.7, so its error counts as 0.3)")
    """,
)
nb.exercise(
    "ch15.grpo_advantages",
    try_it="""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])  # two prompts, three replies each
    print(grpo_advantages(rewards, group_size=3))
    print("(expected [1.155, -0.577, -0.577, 0, 0, 0]: the second group says nothing about which reply is better)")
    """,
)
nb.markdown(
    """
    ## Your DPO trains a policy

    A toy policy: a bigram table of logits over 6 tokens (the logits of the next token are the row of the current
    one), starting as a copy of a frozen reference. Each prompt is two tokens; two preference pairs say which of
    two replies is better. A few dozen steps of gradient descent on *your* `dpo_loss`, with the log-probabilities
    from *your* `sequence_logprob` (the prompt masked out), raise the implicit reward of the chosen replies above
    the rejected ones; *your* `kl_penalty` tells how far the policy moved from the reference on the chosen replies.
    """
)
nb.code(
    """
    from storylib.rl import dpo_loss, kl_penalty, sequence_logprob, token_logprobs

    torch.manual_seed(0)
    chosen = torch.tensor([[0, 3, 1, 2, 3, 4], [0, 5, 2, 3, 4, 1]])  # prompt (2 tokens), then the reply
    rejected = torch.tensor([[0, 3, 1, 5, 5, 5], [0, 5, 5, 5, 3, 4]])
    reply = torch.tensor([[0, 1, 1, 1, 1]] * 2)  # of the 5 predictions, the first is the prompt's second token
    W_ref = torch.randn(6, 6) * 0.5  # the reference: row a holds the logits of the token after a
    W = W_ref.clone().requires_grad_()  # the policy starts as the reference


    def logprob(table, seqs):
        \"\"\"log π(reply | prompt) for each row of seqs under a bigram table.\"\"\"
        return sequence_logprob(table[seqs[:, :-1]], seqs[:, 1:], reply)


    with torch.no_grad():
        ref_chosen, ref_rejected = logprob(W_ref, chosen), logprob(W_ref, rejected)
    for step in range(41):
        loss, r_c, r_r = dpo_loss(logprob(W, chosen), logprob(W, rejected), ref_chosen, ref_rejected, beta=0.5)
        W.grad = None
        loss.backward()
        with torch.no_grad():
            W -= 0.5 * W.grad  # plain gradient descent
        if step % 8 == 0:
            print(f"step {step:2d}  loss {loss.item():.3f}  margin {(r_c - r_r).mean().item():+.3f}")

    with torch.no_grad():
        lp = token_logprobs(W[chosen[:, :-1]], chosen[:, 1:])
        ref_lp = token_logprobs(W_ref[chosen[:, :-1]], chosen[:, 1:])
        kl = (kl_penalty(lp, ref_lp, "k3") * reply).sum() / reply.sum()
        for name, seqs in (("chosen", chosen), ("rejected", rejected)):
            before, after = logprob(W_ref, seqs).exp().tolist(), logprob(W, seqs).exp().tolist()
            print(f"P({name} reply | prompt), reference -> policy:",
                  ", ".join(f"{x:.5f} -> {y:.5f}" for x, y in zip(before, after, strict=True)))
    print(f"k3 estimate of KL(policy ‖ reference) per chosen token: {kl.item():.3f} nats")
    """,
    locked=True,
)
nb.markdown(
    """
    ## What next

    The book's chapter runs these same functions on the chat storyteller: a reward model trained with your
    Bradley–Terry loss, DPO on preference pairs scored by Chapter 14's rules, PPO with your GAE, clipped objective,
    value loss and KL leash, and GRPO with your group advantages — and a table of what each bought and cost (§15.8).
    """
)

if __name__ == "__main__":
    print(nb.write())
