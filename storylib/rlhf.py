"""Chapter 15 §15.2–15.7 — the training loops: a reward model, DPO, PPO with a KL leash and a value head, GRPO.

The losses are storylib.rl's; the sampler is Chapter 12's (storylib.sft.generate_replies, the KV cache); the
optimiser is Chapter 7's (storylib.optim.AdamW, update, and Chapter 3's warmup_cosine_lr). Nothing here samples,
clips or steps on its own.

    RewardModel, reward_model_from   the storyteller's trunk + a scalar head on the last token's (or the mean) state
    train_reward_model, pair_accuracy, accuracy_by_gap, rm_scores, correlation
    split_pairs, freeze_lower_blocks  a validation split by request, and fewer trainable weights: against overfitting
    make_policy                      the merged chat model + a fresh LoRA adapter; the reference is the chat model
    reply_batch, reply_logprobs      (prompt, reply) batches, a mask on the reply's tokens, per-token log-probs
    train_dpo                        Direct Preference Optimisation on pairs (rl.dpo_loss)
    train_iterative_dpo              rounds of: sample from the current policy, rank by the rules, pair, train_dpo
    train_ppo                        rollouts, per-token KL penalty (k1), terminal reward, value head, GAE, clipped loss
    train_grpo                       k replies per prompt, group-normalised advantages, k3 KL in the loss
    evaluate_policy                  held-out prompts: programmatic reward, each rule's pass rate, KL to SFT, drift
    save_rl_adapter                  the policy's adapter in a folder storylib.sft.load_chat_model reads

A batch of replies is x (B, T): prompt + reply (+ <|end|> when the reply stopped by itself) without its last id,
y = the next ids, mask = 1 where y is a reply token (or its <|end|>). The policy's log-probabilities are read at
temperature `temperature` (logits / temperature), the same temperature its rollouts are sampled with (ROLLOUT_SAMPLING:
1.0, no top-p), so PPO's ratios compare the distribution that really sampled the tokens.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from storylib import rl

if TYPE_CHECKING:
    from storylib.gpt2 import GPT
    from storylib.tokenizer import RegexTokenizer

ROLLOUT_SAMPLING = {"temperature": 1.0, "top_p": None}  # on-policy: what the log-probs below describe
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
Reply = tuple[list[int], bool]  # (new ids, stopped by <|end|>)


def amp(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU, nothing on the CPU (log-softmax and the losses run in float32 either way)."""
    return torch.autocast("cuda", torch.bfloat16) if torch.device(device).type == "cuda" else contextlib.nullcontext()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _optimizer(params: Sequence[nn.Parameter], lr: float, weight_decay: float = 0.0):
    from storylib.optim import AdamW

    return AdamW([p for p in params if p.requires_grad], lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    from storylib.mlp import warmup_cosine_lr

    return warmup_cosine_lr(step, steps, lr, warmup=min(warmup, max(steps - 1, 0)), lr_min=0.1 * lr)


# ----------------------------------------------------------------------------- batches of replies


def reply_batch(prompts: Sequence[Sequence[int]], replies: Sequence[Reply], end_id: int, pad_id: int,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, mask, last) for (prompt, reply) rows: seq = prompt + reply ids (+ end_id when it stopped);
    x = seq[:-1], y = seq[1:] right-padded (x with pad_id, y with -100), mask (float) 1 where y is a reply token
    or its end_id, last (B,) the position in x of the row's last id (x[last] = seq[-2]: reading it predicts
    the final id). Raises ValueError for a row with no reply token."""
    seqs, starts = [], []
    for p, (ids, stopped) in zip(prompts, replies, strict=True):
        seq = [*p, *ids, *([end_id] if stopped else [])]
        if len(seq) == len(p):
            raise ValueError("a reply with no token and no <|end|>: nothing to score")
        seqs.append(seq)
        starts.append(len(p) - 1)  # y[len(p) - 1] is the reply's first id
    T = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.int64)
    y = torch.full((len(seqs), T), -100, dtype=torch.int64)
    mask = torch.zeros(len(seqs), T)
    for i, (s, a) in enumerate(zip(seqs, starts, strict=True)):
        x[i, :len(s) - 1] = torch.tensor(s[:-1])
        y[i, :len(s) - 1] = torch.tensor(s[1:])
        mask[i, a:len(s) - 1] = 1.0
    last = torch.tensor([len(s) - 2 for s in seqs])
    return x.to(device), y.to(device), mask.to(device), last.to(device)


def reply_logprobs(model: GPT, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(y[b, t] | x[b, :t+1]) (B, T) in float32, from the logits / temperature (rl.token_logprobs)."""
    return rl.token_logprobs(_logits(model, x, temperature), y)


def pair_rows(pair: dict, tok: RegexTokenizer, block_size: int) -> tuple[list[int], Reply, Reply] | None:
    """(prompt ids, chosen, rejected) of a preference pair: the prompt is render_chat(messages) with the
    generation prompt, each reply its encoded text, stopped as the pair says (True when it does not say); a reply
    that does not fit block_size ids with its prompt is cut (and then did not stop). None when the prompt leaves
    under 16 tokens."""
    from storylib.chat_template import render_chat
    from storylib.fastbpe import encode_ordinary

    prompt, _ = render_chat(pair["messages"], tok, add_generation_prompt=True)
    room = block_size - len(prompt)  # the whole sequence fits the context: the reward model reads all of it
    if room < 16:
        return None
    out = []
    for which in ("chosen", "rejected"):
        ids = encode_ordinary(tok, pair[which])
        stopped = bool(pair.get("stopped", {}).get(which, True))
        if len(ids) + stopped > room:
            ids, stopped = ids[:room], False
        out.append((ids, stopped))
    return prompt, out[0], out[1]


def _pair_data(pairs: Sequence[dict], tok: RegexTokenizer, block_size: int) -> list[tuple]:
    rows = [pair_rows(p, tok, block_size) for p in pairs]
    rows = [r for r in rows if r is not None]
    if not rows:
        raise ValueError("no preference pair fits the context")
    return rows


def _ids(tok: RegexTokenizer) -> tuple[int, int]:
    from storylib.sft import pad_id_of

    return tok.special_tokens["<|end|>"], pad_id_of(tok)


def _batches(n: int, batch_size: int, rng: random.Random):
    """Endless minibatches of indices, a new shuffled order every epoch."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i:i + batch_size]


# ----------------------------------------------------------------------------- §15.2 the reward model


class RewardModel(nn.Module):
    """r(prompt, reply): the storyteller's trunk (GPT.hidden: blocks and final LayerNorm; its LM head unused) and a
    scalar head. pooling "last" reads the hidden state of the sequence's LAST id — the reply's closing <|end|> when
    it stopped, else its last token: the one position that has read the whole request and the whole reply; "mean"
    reads the mean of the reply's positions (each has read the request and the reply so far)."""

    def __init__(self, gpt: GPT, pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.gpt, self.pooling = gpt, pooling
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, last: torch.Tensor, reply_mask: torch.Tensor | None = None,
                dropout: float = 0.0) -> torch.Tensor:
        """idx (B, T) ids, last (B,) the position of each row's last id, reply_mask (B, T) 1 on the reply's ids
        (needed by "mean" pooling) → rewards (B,) in float32. dropout: on the pooled vector (training only)."""
        with amp(idx.device):
            h = self.gpt.hidden(idx)
        if self.pooling == "mean":
            if reply_mask is None:
                raise ValueError("mean pooling needs the reply's mask")
            m = reply_mask.to(h.dtype)[..., None]
            pooled = ((h * m).sum(1) / m.sum(1).clamp(min=1.0)).float()
        else:
            pooled = h[torch.arange(idx.size(0), device=idx.device), last].float()
        return self.head(nn.functional.dropout(pooled, dropout, training=dropout > 0)).squeeze(-1)

    def score(self, prompts: Sequence[Sequence[int]], replies: Sequence[Reply], tok: RegexTokenizer,
              batch_size: int = 64) -> torch.Tensor:
        """Rewards (B,) of (prompt, reply) rows, without gradients, on the CPU."""
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                out.append(self(*_rm_inputs(prompts[i:i + batch_size], replies[i:i + batch_size], tok,
                                            _device(self))).cpu())
        return torch.cat(out)


def _full(x: torch.Tensor, y: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The whole sequence (x with its final id appended): x's positions, one longer, padding where y is -100."""
    full = torch.cat([x, torch.full_like(x[:, :1], pad_id)], 1)
    full[:, 1:] = torch.where(y >= 0, y, full[:, 1:])
    return full


def _rm_inputs(prompts: Sequence[Sequence[int]], replies: Sequence[Reply], tok: RegexTokenizer,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(whole sequences, the position of each one's last id, the mask of its reply's ids) for the reward model."""
    end_id, pad_id = _ids(tok)
    x, y, mask, last = reply_batch(prompts, replies, end_id, pad_id, device)
    return _full(x, y, pad_id), last + 1, torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)


def reward_model_from(chat_model: GPT, pooling: str = "last") -> RewardModel:
    """A reward model whose trunk is a copy of the chat model (every weight trainable) and whose head starts at 0."""
    rm = RewardModel(copy.deepcopy(chat_model), pooling).to(_device(chat_model))
    rm.requires_grad_(True)
    return rm.eval()  # no dropout in the trunk: the scores of a pair must differ only by the replies


def _rm_batch(rm: RewardModel, rows: Sequence[tuple], tok: RegexTokenizer,
              dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [r[0] for r in rows] * 2
    replies = [r[1] for r in rows] + [r[2] for r in rows]
    r = rm(*_rm_inputs(prompts, replies, tok, _device(rm)), dropout=dropout)
    return r[:len(rows)], r[len(rows):]


def freeze_lower_blocks(rm: RewardModel, train_layers: int | None) -> int:
    """Leave only the top `train_layers` blocks of the trunk, its final LayerNorm and the head trainable (None: every
    weight). Fewer trainable weights overfit a few thousand pairs less, and the frozen lower blocks keep what
    pre-training taught. Returns the number of trainable parameters."""
    blocks = rm.gpt.transformer.h
    if train_layers is not None:
        if not 0 <= train_layers <= len(blocks):
            raise ValueError(f"train_layers must be in 0..{len(blocks)}, got {train_layers}")
        rm.requires_grad_(False)
        for block in list(blocks)[len(blocks) - train_layers:]:
            block.requires_grad_(True)
        rm.gpt.transformer.ln_f.requires_grad_(True)
        rm.head.requires_grad_(True)
    return sum(p.numel() for p in rm.parameters() if p.requires_grad)


def split_pairs(pairs: Sequence[dict], val_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, validation) pairs split BY REQUEST (the pair's messages): pairs of one request share replies, so a
    split by pair would let the validation side see its replies in training."""
    keys = sorted({json.dumps(p["messages"], sort_keys=True) for p in pairs})
    random.Random(seed).shuffle(keys)
    val = set(keys[:round(val_fraction * len(keys))])
    side = [json.dumps(p["messages"], sort_keys=True) in val for p in pairs]
    return [p for p, v in zip(pairs, side, strict=True) if not v], [p for p, v in zip(pairs, side, strict=True) if v]


def train_reward_model(rm: RewardModel, pairs: Sequence[dict], tok: RegexTokenizer, steps: int, batch_size: int = 32,
                       lr: float = 3e-5, warmup: int = 10, grad_clip: float = 1.0, seed: int = 0,
                       weight_decay: float = 0.0, head_dropout: float = 0.0, train_layers: int | None = None,
                       val_pairs: Sequence[dict] = (), eval_every: int = 50, patience: int | None = None,
                       quiet: bool = False) -> list[dict]:
    """Bradley–Terry training (rl.bradley_terry_loss) of the reward model on preference pairs, with Chapter 7's
    AdamW and update and a warm-up + cosine schedule. Returns the log: {"step", "loss", "accuracy", "lr"} per step.

    Against overfitting a few thousand pairs: weight_decay (AdamW's, decoupled), head_dropout (on the pooled vector),
    train_layers (freeze_lower_blocks), and early stopping: with val_pairs (split_pairs: other requests than the
    training pairs'), every eval_every steps and at the end the validation accuracy and loss join the log entry
    ("val_accuracy", "val_loss"), and the weights of the best check (accuracy, then loss) are put back at the end;
    patience: stop after that many checks without a better one."""
    from storylib.optim import update

    rows = _pair_data(pairs, tok, rm.gpt.config.block_size)
    freeze_lower_blocks(rm, train_layers)
    trainable = [p for p in rm.parameters() if p.requires_grad]
    opt = _optimizer(trainable, lr, weight_decay)
    batches, log = _batches(len(rows), min(batch_size, len(rows)), random.Random(seed)), []
    best, best_state, since = None, None, 0
    for step in tqdm(range(steps), desc="reward model", disable=quiet):
        rc, rr = _rm_batch(rm, [rows[i] for i in next(batches)], tok, head_dropout)
        loss = rl.bradley_terry_loss(rc, rr)
        lr_t = _lr(step, steps, lr, warmup)
        update(opt, loss, lr_t, grad_clip)
        log.append({"step": step, "loss": loss.item(), "accuracy": (rc > rr).float().mean().item(), "lr": lr_t})
        if val_pairs and ((step + 1) % eval_every == 0 or step == steps - 1):
            acc, vloss = _pair_metrics(rm, val_pairs, tok)
            log[-1].update(val_accuracy=acc, val_loss=vloss)
            if best is None or (acc, -vloss) > best:
                best, since = (acc, -vloss), 0
                best_state = {k: v.detach().clone() for k, v in rm.state_dict().items()}
            else:
                since += 1
            if patience is not None and since >= patience:
                break
    if best_state is not None:
        rm.load_state_dict(best_state)
        log[-1]["best_val_step"] = next(e["step"] for e in log if e.get("val_accuracy") == best[0]
                                        and e.get("val_loss") == -best[1])
    return log


@torch.no_grad()
def _pair_right(rm: RewardModel, pairs: Sequence[dict], tok: RegexTokenizer,
                batch_size: int = 64) -> tuple[list[bool | None], list[float]]:
    """Per pair: whether the reward model scores chosen above rejected (None: the pair does not fit the context),
    and the Bradley–Terry loss of those that fit."""
    rows = [pair_rows(p, tok, rm.gpt.config.block_size) for p in pairs]
    fit = [i for i, r in enumerate(rows) if r is not None]
    if not fit:
        raise ValueError("no preference pair fits the context")
    right: list[bool | None] = [None] * len(pairs)
    losses = []
    for i in range(0, len(fit), batch_size):
        idx = fit[i:i + batch_size]
        rc, rr = _rm_batch(rm, [rows[j] for j in idx], tok)
        for j, ok in zip(idx, (rc > rr).tolist(), strict=True):
            right[j] = ok
        losses += nn.functional.softplus(rr - rc).tolist()  # -log σ(rc - rr), per pair
    return right, losses


def _pair_metrics(rm: RewardModel, pairs: Sequence[dict], tok: RegexTokenizer) -> tuple[float, float]:
    right, losses = _pair_right(rm, pairs, tok)
    kept = [r for r in right if r is not None]
    return sum(kept) / len(kept), float(np.mean(losses))


def pair_accuracy(rm: RewardModel, pairs: Sequence[dict], tok: RegexTokenizer, batch_size: int = 64) -> float:
    """The fraction of pairs whose chosen reply the reward model scores above the rejected one."""
    right = [r for r in _pair_right(rm, pairs, tok, batch_size)[0] if r is not None]
    return sum(right) / len(right)


def accuracy_by_gap(rm: RewardModel, pairs: Sequence[dict], tok: RegexTokenizer,
                    edges: Sequence[float] = (0.1, 0.15, 0.2, 0.3, 0.5)) -> list[dict]:
    """Pair accuracy by the gap between the pair's programmatic rewards (pair["scores"]), in buckets [edges[i],
    edges[i+1]) and a last one from edges[-1] up (a first one below edges[0] when there are such pairs): a learned
    model can hardly tell replies the rules score a hair apart. [{"lo", "hi", "n", "accuracy"}] (lo / hi None: no
    bound, JSON has no infinity; n = 0: accuracy None)."""
    right = _pair_right(rm, pairs, tok)[0]
    gaps = [p["scores"]["chosen"] - p["scores"]["rejected"] for p in pairs]
    bounds = [*([-math.inf] if min(gaps) < edges[0] else []), *edges, math.inf]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        got = [r for r, g in zip(right, gaps, strict=True) if lo <= g < hi and r is not None]
        out.append({"lo": None if lo == -math.inf else lo, "hi": None if hi == math.inf else hi, "n": len(got),
                    "accuracy": sum(got) / len(got) if got else None})
    return out


def rm_scores(rm: RewardModel, tasks: Sequence[dict], replies: Sequence[Reply], tok: RegexTokenizer,
              batch_size: int = 64) -> list[float]:
    """The reward model's score of each task's reply (a task: sft.turn_tasks' dict, its "prompt" ids)."""
    return rm.score([t["prompt"] for t in tasks], replies, tok, batch_size).tolist()


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank (Spearman's convention)."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a))
    for v in np.unique(a):
        same = a == v
        ranks[same] = ranks[same].mean()
    return ranks


def correlation(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of two score lists (numpy; Spearman = Pearson of the tie-averaged ranks)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equal lists of at least 2 scores, got {len(a)} and {len(b)}")

    def pearson(u: np.ndarray, v: np.ndarray) -> float:
        u, v = u - u.mean(), v - v.mean()
        d = math.sqrt(float((u * u).sum() * (v * v).sum()))
        return float((u * v).sum() / d) if d > 0 else 0.0

    return {"pearson": pearson(a, b), "spearman": pearson(_ranks(a), _ranks(b))}


# ----------------------------------------------------------------------------- §15.3 the policy and DPO


def make_policy(chat_model: GPT, r: int = 8, alpha: float = 16.0, targets: Sequence[str] = LORA_TARGETS) -> GPT:
    """The policy: a copy of the (merged) chat model with a fresh LoRA adapter (B = 0: it starts equal to the chat
    model), only the adapter trainable, in eval mode (no dropout: log-probs must be those that sampled)."""
    from storylib.lora import inject_lora

    policy = copy.deepcopy(chat_model)
    inject_lora(policy, targets=targets, r=r, alpha=alpha)
    return policy.eval()


def frozen(model: GPT) -> GPT:
    """The model itself, frozen and in eval mode: the reference π_ref."""
    return model.requires_grad_(False).eval()


def _seq_logps(policy: GPT, ref: GPT, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, length_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    logp = rl.sequence_logprob(_logits(policy, x, temperature), y, mask)
    with torch.no_grad():
        ref_logp = rl.sequence_logprob(_logits(ref, x, temperature), y, mask)
    if length_norm:  # per reply token: a long reply no longer weighs more than a short one
        n = mask.sum(1).clamp(min=1.0)
        logp, ref_logp = logp / n, ref_logp / n
    return logp, ref_logp


def _logits(model: GPT, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    with amp(x.device):
        logits, _ = model(x)
    return logits.float() / temperature


def train_dpo(policy: GPT, ref: GPT, pairs: Sequence[dict], tok: RegexTokenizer, steps: int, beta: float = 0.1,
              batch_size: int = 32, lr: float = 2e-4, warmup: int = 10, grad_clip: float = 1.0, seed: int = 0,
              length_norm: bool = False, quiet: bool = False) -> list[dict]:
    """DPO (rl.dpo_loss on rl.sequence_logprob of policy and frozen reference) over preference pairs. Returns
    the log per step: loss, margin (mean r_chosen - r_rejected, the implicit rewards), accuracy (r_chosen >
    r_rejected), chosen_logp and rejected_logp (mean policy log-probs), lr. length_norm: log-probs averaged over
    the reply's tokens instead of summed (as SimPO, Meng et al. 2024), so that length alone does not make a margin;
    β then scales a per-token quantity and wants to be ~100× larger."""
    from storylib.optim import update

    rows = _pair_data(pairs, tok, policy.config.block_size)
    end_id, pad_id = _ids(tok)
    opt = _optimizer(list(policy.parameters()), lr)
    batches, log = _batches(len(rows), min(batch_size, len(rows)), random.Random(seed)), []
    for step in tqdm(range(steps), desc="DPO", disable=quiet):
        b = [rows[i] for i in next(batches)]
        x, y, mask, _ = reply_batch([r[0] for r in b] * 2, [r[1] for r in b] + [r[2] for r in b], end_id, pad_id,
                                    _device(policy))
        logp, ref_logp = _seq_logps(policy, ref, x, y, mask, length_norm=length_norm)
        n = len(b)
        loss, rc, rr = rl.dpo_loss(logp[:n], logp[n:], ref_logp[:n], ref_logp[n:], beta)
        lr_t = _lr(step, steps, lr, warmup)
        update(opt, loss, lr_t, grad_clip)
        log.append({"step": step, "loss": loss.item(), "margin": (rc - rr).mean().item(),
                    "accuracy": (rc > rr).float().mean().item(), "chosen_logp": logp[:n].mean().item(),
                    "rejected_logp": logp[n:].mean().item(), "lr": lr_t})
    return log


def train_iterative_dpo(policy: GPT, ref: GPT, rounds: Sequence[Sequence[dict]], tok: RegexTokenizer, *, k: int = 4,
                        min_gap: float = 0.1, all_pairs: bool = True, steps: int = 100, beta: float = 0.1,
                        batch_size: int = 32, lr: float = 2e-4, warmup: int = 10, length_norm: bool = False,
                        seed: int = 0, sample_batch: int = 128, max_new_tokens: int | None = None,
                        check_tasks: Sequence[dict] = (), kl_stop: float | None = None,
                        max_seconds: float | None = None, quiet: bool = False) -> list[dict]:
    """Iterative, on-policy DPO (Xu et al. 2023 "Some things are more CRINGE than others"; Yuan et al. 2024
    "Self-rewarding language models"). Offline DPO learns from pairs of the SFT model's replies; once the policy has
    moved, those pairs no longer show the mistakes it makes now, and DPO stalls. So, for each round's tasks:

      sample   k replies per task from the CURRENT policy (storylib.preferences.sample_replies: Chapter 12's KV
               cache at CHAT_SAMPLING, as the prefs stage samples, on a merged copy of the policy)
      score    by the rules (preferences.score_replies), and measure the policy's KL to ref on these replies
      pair     preferences.make_pairs: the best reply against the worst (all_pairs: every two), gaps under
               min_gap and identical texts dropped
      train    `steps` of train_dpo on the new pairs, continuing the same adapter, against the same frozen ref

    The reference stays `ref` (the SFT model) in every round: the KL budget is measured to it, and a reference
    that followed the policy would let every round walk another β-leash further. rounds: each round's tasks
    (fresh ones each round). check_tasks: one reply each from the final policy, its reward and KL (a last
    measurement; none when empty). kl_stop: when the KL per reply measured at the start of a round (or on
    check_tasks) exceeds it, the adapter of the round before is put back and the loop stops. max_seconds: no new
    round that would end after this time (each round's time predicted by the last one).
    Returns one entry per round: round, tasks, pairs, sampled_reward (the rules' mean over the round's samples: the
    policy as the previous round left it), kl_reply and kl_token (kl_to_reference on them), loss, margin,
    accuracy (train_dpo's, mean of the round's last 10 steps), sample_seconds, train_seconds, seconds; a final
    entry (round "check") for check_tasks; "stopped" on the entry where a limit stopped the loop."""
    from storylib import preferences as P
    from storylib.lora import lora_state_dict
    from storylib.sft import plain_copy

    def measure(tasks: Sequence[dict], n: int, round_seed: int) -> tuple[list, list, dict, float]:
        t0 = time.time()
        replies = P.sample_replies(plain_copy(policy).eval(), tok, tasks, n, seed=round_seed, batch_size=sample_batch,
                                   max_new_tokens=max_new_tokens)
        scores = P.score_replies(tasks, replies)
        flat = [(r["ids"], r["stopped"]) for rs in replies for r in rs]
        kl = kl_to_reference(policy, ref, tok, [t["prompt"] for t in tasks for _ in range(n)], flat)
        return replies, scores, kl, time.time() - t0

    def over(kl: dict) -> bool:
        return kl_stop is not None and kl["kl_reply"] > kl_stop

    start, log, last = time.time(), [], None
    snapshot = {n: v.clone() for n, v in lora_state_dict(policy).items()}
    if not all(rounds):
        raise ValueError("every round needs at least one task")
    for r, tasks in enumerate(rounds):
        elapsed = time.time() - start
        if max_seconds is not None and log and elapsed + log[-1]["seconds"] > max_seconds:
            log[-1]["stopped"] = f"time: {elapsed:.0f} s + a round of {log[-1]['seconds']:.0f} s > {max_seconds:.0f} s"
            break
        t0 = time.time()
        replies, scores, kl, sample_s = measure(tasks, k, seed + 1009 * (r + 1))
        flat = [s for ss in scores for s in ss]
        entry = {"round": r, "tasks": len(tasks), "sampled_reward": float(np.mean(flat)), **kl,
                 "sample_seconds": round(sample_s, 1)}
        if over(kl):
            policy.load_state_dict(snapshot, strict=False)
            log.append({**entry, "stopped": f"KL {kl['kl_reply']:.2f} > {kl_stop}: the previous round's adapter kept",
                        "seconds": time.time() - t0})
            return log
        snapshot = {n: v.clone() for n, v in lora_state_dict(policy).items()}
        pairs = P.make_pairs(tasks, replies, scores, min_gap=min_gap, all_pairs=all_pairs)
        entry["pairs"] = len(pairs)
        if pairs:
            t1 = time.time()
            last = train_dpo(policy, ref, pairs, tok, steps, beta=beta, batch_size=batch_size, lr=lr, warmup=warmup,
                             seed=seed + r, length_norm=length_norm, quiet=True)
            entry["train_seconds"] = round(time.time() - t1, 1)
            entry.update({m: float(np.mean([e[m] for e in last[-10:]])) for m in ("loss", "margin", "accuracy")})
        entry["seconds"] = time.time() - t0
        log.append(entry)
        if not quiet:
            tqdm.write(f"iterative DPO round {r}: {len(tasks)} tasks, sampled reward {entry['sampled_reward']:.3f}, "
                       f"KL/reply {kl['kl_reply']:.2f}, {len(pairs)} pairs, loss {entry.get('loss', float('nan')):.3f}"
                       f" ({entry['seconds']:.0f} s)")
    if check_tasks:  # (a KL stop has returned above)
        _, scores, kl, sample_s = measure(check_tasks, 1, seed + 7)
        entry = {"round": "check", "tasks": len(check_tasks), "sampled_reward": float(np.mean([s[0] for s in scores])),
                 **kl, "sample_seconds": round(sample_s, 1), "seconds": sample_s}
        if over(kl):
            policy.load_state_dict(snapshot, strict=False)
            entry["stopped"] = f"KL {kl['kl_reply']:.2f} > {kl_stop}: the previous round's adapter kept"
        log.append(entry)
    return log


# ----------------------------------------------------------------------------- §15.4–15.6 PPO and GRPO


class ValueHead(nn.Module):
    """V(state): a scalar read from the policy trunk's hidden state at each position (starts at 0)."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.head = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h.float()).squeeze(-1)


def _policy_forward(policy: GPT, x: torch.Tensor, y: torch.Tensor, temperature: float,
                    value_head: ValueHead | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (B, T) and, with a value head, values (B, T): one pass through the trunk."""
    with amp(x.device):
        h = policy.hidden(x)
        logits = policy.lm_head(h)
    logp = rl.token_logprobs(logits.float() / temperature, y)
    return logp, (value_head(h) if value_head is not None else None)


def rollout(policy: GPT, tok: RegexTokenizer, prompts: Sequence[Sequence[int]], seed: int, max_new_tokens: int,
            batch_size: int, sampling: dict | None = None) -> list[Reply]:
    """Replies sampled from the policy with Chapter 12's batched KV-cache sampler (storylib.sft.generate_replies),
    by length buckets (storylib.preferences.generate_bucketed), at ROLLOUT_SAMPLING unless `sampling` says."""
    from storylib.preferences import generate_bucketed

    return generate_bucketed(policy, tok, prompts, seed, max_new_tokens, batch_size,
                             **(ROLLOUT_SAMPLING if sampling is None else sampling))


RewardFn = Callable[[Sequence[dict], Sequence[Reply]], Sequence[float]]


def programmatic_reward_fn(tok: RegexTokenizer) -> RewardFn:
    """reward_fn(tasks, replies) → storylib.preferences.reward's total of each (decoded) reply."""
    from storylib.preferences import reward

    def fn(tasks: Sequence[dict], replies: Sequence[Reply]) -> list[float]:
        return [reward(t["spec"], tok.decode([i for i in ids if i < tok.n_vocab]), stopped, t["previous"])["total"]
                for t, (ids, stopped) in zip(tasks, replies, strict=True)]

    return fn


def rm_reward_fn(rm: RewardModel, tok: RegexTokenizer, mean: float = 0.0, std: float = 1.0) -> RewardFn:
    """reward_fn(tasks, replies) → the reward model's score, standardised: (r - mean) / std (e.g. the mean and
    standard deviation of its scores on the SFT model's replies), so that β means the same for any reward model."""

    def fn(tasks: Sequence[dict], replies: Sequence[Reply]) -> list[float]:
        return ((rm.score([t["prompt"] for t in tasks], replies, tok) - mean) / std).tolist()

    return fn


def _rollout_tensors(policy: GPT, ref: GPT, tok: RegexTokenizer, prompts: Sequence[Sequence[int]],
                     replies: Sequence[Reply], temperature: float, value_head: ValueHead | None,
                     batch_size: int) -> dict[str, torch.Tensor]:
    """x, y, mask, last and, without gradients, the sampling policy's log-probs (old_logp), the reference's and
    the value head's values, in minibatches (the rows padded to one length)."""
    end_id, pad_id = _ids(tok)
    x, y, mask, last = reply_batch(prompts, replies, end_id, pad_id, _device(policy))
    old, ref_lp, vals = [], [], []
    with torch.no_grad():
        for i in range(0, x.size(0), batch_size):
            lp, v = _policy_forward(policy, x[i:i + batch_size], y[i:i + batch_size], temperature, value_head)
            old.append(lp)
            vals.append(v if v is not None else torch.zeros_like(lp))
            ref_lp.append(reply_logprobs(ref, x[i:i + batch_size], y[i:i + batch_size], temperature))
    return {"x": x, "y": y, "mask": mask, "last": last, "old_logp": torch.cat(old), "ref_logp": torch.cat(ref_lp),
            "values": torch.cat(vals)}


def _sample_tasks(tasks: Sequence[dict], n: int, rng: random.Random) -> list[dict]:
    return [tasks[i] for i in rng.sample(range(len(tasks)), min(n, len(tasks)))]


def _whiten(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = rl.masked_mean(adv, mask)
    var = rl.masked_mean((adv - mean) ** 2, mask)
    return (adv - mean) * torch.rsqrt(var + 1e-8) * mask


def _text(tok: RegexTokenizer, ids: Sequence[int]) -> str:
    return tok.decode([i for i in ids if i < tok.n_vocab])


def train_ppo(policy: GPT, ref: GPT, reward_fn: RewardFn, tasks: Sequence[dict], tok: RegexTokenizer, steps: int, *,
              n_prompts: int = 64, kl_coef: float = 0.05, lr: float = 1e-4, epochs: int = 2, minibatch: int = 16,
              clip: float = 0.2, vf_coef: float = 0.1, gamma: float = 1.0, lam: float = 0.95,
              max_new_tokens: int = 256, gen_batch: int = 128, temperature: float = 1.0, grad_clip: float = 1.0,
              warmup: int = 0, seed: int = 0, value_head: ValueHead | None = None, log_fn: RewardFn | None = None,
              keep_samples: int = 0, max_seconds: float | None = None, quiet: bool = False) -> list[dict]:
    """PPO for RLHF (Ouyang et al. 2022): each step samples n_prompts tasks and one reply each from the policy
    (Chapter 12's sampler at `temperature`), scores each reply once with reward_fn (its terminal reward), and
    trains the policy's LoRA and a value head (on the policy trunk) for `epochs` passes of minibatches:

      per-token reward  r_t = -kl_coef · k1(π_old, π_ref)_t, plus reward_fn's score at the reply's last token
      advantages        rl.gae(r, V_old, mask, γ, λ), whitened over the batch; returns = A + V_old
      loss              rl.ppo_clip_loss(logp, old_logp, A, mask, clip) + vf_coef · rl.value_loss(V, V_old, R, mask)

    log_fn: a second reward (e.g. the programmatic one while optimising a learned RM) logged beside it.
    Returns the log per step: reward (reward_fn's mean), logged_reward (log_fn's), kl (k3 mean per reply token),
    kl_reply (k1 sum per reply), clip_frac, value_loss, pg_loss, reply_len, seconds; keep_samples: the step's
    first replies' texts. max_seconds: stop after the step that passes this wall-clock time (a GPU budget)."""
    from storylib.optim import update

    value_head = value_head or ValueHead(policy.config.n_embd).to(_device(policy))
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = _optimizer(params, lr)
    rng, log = random.Random(seed), []
    n_updates = steps * epochs * math.ceil(n_prompts / minibatch)
    u = 0
    start = time.time()
    for step in tqdm(range(steps), desc="PPO", disable=quiet):
        if max_seconds is not None and time.time() - start > max_seconds:
            break
        t0 = time.time()
        batch = _sample_tasks(tasks, n_prompts, rng)
        prompts = [t["prompt"] for t in batch]
        replies = rollout(policy, tok, prompts, seed + 1000 * step, max_new_tokens, gen_batch,
                          {"temperature": temperature, "top_p": None})
        scores = torch.tensor(list(reward_fn(batch, replies)), dtype=torch.float32)
        d = _rollout_tensors(policy, ref, tok, prompts, replies, temperature, value_head, minibatch)
        mask = d["mask"]
        k1 = rl.kl_penalty(d["old_logp"], d["ref_logp"], "k1") * mask
        rewards = -kl_coef * k1
        rows = torch.arange(mask.size(0), device=mask.device)
        rewards[rows, d["last"]] += scores.to(mask.device)
        adv, returns = rl.gae(rewards, d["values"], mask, gamma, lam)
        adv = _whiten(adv, mask)
        stats: dict[str, list[float]] = {"clip_frac": [], "value_loss": [], "pg_loss": []}
        for _ in range(epochs):
            order = torch.randperm(mask.size(0), generator=torch.Generator().manual_seed(seed + step)).tolist()
            for i in range(0, len(order), minibatch):
                idx = torch.tensor(order[i:i + minibatch], device=mask.device)
                m = mask[idx]
                logp, values = _policy_forward(policy, d["x"][idx], d["y"][idx], temperature, value_head)
                pg = rl.ppo_clip_loss(logp, d["old_logp"][idx], adv[idx], m, clip)
                vl = rl.value_loss(values, d["values"][idx], returns[idx], m, clip)
                update(opt, pg + vf_coef * vl, _lr(u, n_updates, lr, warmup), grad_clip)
                u += 1
                with torch.no_grad():
                    ratio = torch.exp(logp - d["old_logp"][idx])
                    stats["clip_frac"].append(rl.masked_mean(((ratio - 1).abs() > clip).float(), m).item())
                stats["value_loss"].append(vl.item())
                stats["pg_loss"].append(pg.item())
        entry = {"step": step, "reward": scores.mean().item(),
                 "kl": rl.masked_mean(rl.kl_penalty(d["old_logp"], d["ref_logp"], "k3"), mask).item(),
                 "kl_reply": k1.sum(1).mean().item(), "reply_len": mask.sum(1).mean().item(),
                 **{k: float(np.mean(v)) for k, v in stats.items()}}
        if log_fn is not None:
            entry["logged_reward"] = float(np.mean(list(log_fn(batch, replies))))
        if keep_samples:
            entry["samples"] = [_text(tok, ids) for ids, _ in replies[:keep_samples]]
        entry["seconds"] = time.time() - t0
        log.append(entry)
        if not quiet:
            tqdm.write(f"PPO {step}: reward {entry['reward']:.3f} kl {entry['kl']:.4f} "
                       f"clip {entry['clip_frac']:.3f} value loss {entry['value_loss']:.4f}"
                       + (f" logged {entry['logged_reward']:.3f}" if log_fn else ""))
    return log


def train_grpo(policy: GPT, ref: GPT, reward_fn: RewardFn, tasks: Sequence[dict], tok: RegexTokenizer, steps: int, *,
               n_prompts: int = 32, group_size: int = 4, kl_coef: float = 0.04, lr: float = 1e-4, epochs: int = 1,
               minibatch: int = 16, clip: float = 0.2, max_new_tokens: int = 256, gen_batch: int = 128,
               temperature: float = 1.0, grad_clip: float = 1.0, warmup: int = 0, seed: int = 0,
               keep_samples: int = 0, max_seconds: float | None = None, quiet: bool = False) -> list[dict]:
    """GRPO (Shao et al. 2024): each step samples n_prompts tasks and group_size replies to each, scores them with
    reward_fn, and gives every token of a reply its group-normalised reward (rl.grpo_advantages) as advantage.
    No value head. loss = rl.ppo_clip_loss(logp, old_logp, A, mask, clip) + kl_coef · mean k3(π, π_ref) over the
    reply tokens (the KL in the loss, as in the paper, not in the reward). Returns the log per step: reward, kl
    (k3 mean per token), kl_reply, clip_frac, pg_loss, zero_groups (groups whose replies all scored the same),
    reply_len, seconds. max_seconds: stop after the step that passes this wall-clock time."""
    from storylib.optim import update

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = _optimizer(params, lr)
    rng, log = random.Random(seed), []
    n_rows = n_prompts * group_size
    n_updates = steps * epochs * math.ceil(n_rows / minibatch)
    u = 0
    start = time.time()
    for step in tqdm(range(steps), desc="GRPO", disable=quiet):
        if max_seconds is not None and time.time() - start > max_seconds:
            break
        t0 = time.time()
        batch = [t for t in _sample_tasks(tasks, n_prompts, rng) for _ in range(group_size)]  # groups consecutive
        prompts = [t["prompt"] for t in batch]
        replies = rollout(policy, tok, prompts, seed + 1000 * step, max_new_tokens, gen_batch,
                          {"temperature": temperature, "top_p": None})
        scores = torch.tensor(list(reward_fn(batch, replies)), dtype=torch.float32)
        adv_seq = rl.grpo_advantages(scores, group_size)
        d = _rollout_tensors(policy, ref, tok, prompts, replies, temperature, None, minibatch)
        mask = d["mask"]
        adv = adv_seq.to(mask.device)[:, None] * mask
        stats: dict[str, list[float]] = {"clip_frac": [], "pg_loss": []}
        for _ in range(epochs):
            order = torch.randperm(mask.size(0), generator=torch.Generator().manual_seed(seed + step)).tolist()
            for i in range(0, len(order), minibatch):
                idx = torch.tensor(order[i:i + minibatch], device=mask.device)
                m = mask[idx]
                logp, _ = _policy_forward(policy, d["x"][idx], d["y"][idx], temperature)
                pg = rl.ppo_clip_loss(logp, d["old_logp"][idx], adv[idx], m, clip)
                kl = rl.masked_mean(rl.kl_penalty(logp, d["ref_logp"][idx], "k3"), m)
                update(opt, pg + kl_coef * kl, _lr(u, n_updates, lr, warmup), grad_clip)
                u += 1
                with torch.no_grad():
                    ratio = torch.exp(logp - d["old_logp"][idx])
                    stats["clip_frac"].append(rl.masked_mean(((ratio - 1).abs() > clip).float(), m).item())
                stats["pg_loss"].append(pg.item())
        groups = scores.view(-1, group_size)
        entry = {"step": step, "reward": scores.mean().item(),
                 "kl": rl.masked_mean(rl.kl_penalty(d["old_logp"], d["ref_logp"], "k3"), mask).item(),
                 "kl_reply": (rl.kl_penalty(d["old_logp"], d["ref_logp"], "k1") * mask).sum(1).mean().item(),
                 "zero_groups": int((groups.max(1).values == groups.min(1).values).sum()),
                 "reply_len": mask.sum(1).mean().item(), **{k: float(np.mean(v)) for k, v in stats.items()}}
        if keep_samples:
            entry["samples"] = [_text(tok, ids) for ids, _ in replies[:keep_samples]]
        entry["seconds"] = time.time() - t0
        log.append(entry)
        if not quiet:
            tqdm.write(f"GRPO {step}: reward {entry['reward']:.3f} kl {entry['kl']:.4f} "
                       f"clip {entry['clip_frac']:.3f} tied groups {entry['zero_groups']}")
    return log


# ----------------------------------------------------------------------------- §15.7 evaluation and saving


@torch.no_grad()
def kl_to_reference(model: GPT, ref: GPT, tok: RegexTokenizer, prompts: Sequence[Sequence[int]],
                    replies: Sequence[Reply], batch_size: int = 32) -> dict[str, float]:
    """KL(model ‖ ref) estimated on the model's own replies: k3 per reply token (mean over all reply tokens) and
    per reply (the mean over replies of its tokens' k3 sum), from the log-probs at temperature 1."""
    end_id, pad_id = _ids(tok)
    tok_sum, n_tok, per_reply = 0.0, 0.0, []
    for i in range(0, len(prompts), batch_size):
        x, y, mask, _ = reply_batch(prompts[i:i + batch_size], replies[i:i + batch_size], end_id, pad_id,
                                    _device(model))
        k3 = rl.kl_penalty(reply_logprobs(model, x, y), reply_logprobs(ref, x, y), "k3") * mask
        tok_sum, n_tok = tok_sum + float(k3.sum()), n_tok + float(mask.sum())
        per_reply += k3.sum(1).tolist()
    return {"kl_token": tok_sum / max(n_tok, 1.0), "kl_reply": float(np.mean(per_reply))}


@torch.no_grad()
def evaluate_policy(model: GPT, tok: RegexTokenizer, tasks: Sequence[dict], ref: GPT | None = None, *,
                    plain_stories: Sequence[str] = (), seed: int = 0, batch_size: int = 128,
                    max_new_tokens: int | None = None, **sampling: Any) -> dict[str, Any]:
    """A policy on held-out tasks, replies sampled as users get them (storylib.sft.CHAT_SAMPLING unless `sampling`
    says otherwise, seeded): "reward" (mean programmatic reward), "terms" (each reward term's mean over the
    replies it applies to), "rules" (Chapter 14's headline metrics: each rule's pass rate), "ok_rate" (replies
    meeting every rule of their request), with ref: "kl_token" / "kl_reply" (kl_to_reference on these replies),
    with plain_stories: "plain_bpb" (storylib.sft.plain_bpb, the drift on plain stories); "records": per task the
    reply, its reward terms and checks."""
    from storylib import sft
    from storylib.conversations import check_reply
    from storylib.preferences import reward

    model.eval()
    prompts = [t["prompt"] for t in tasks]
    kw = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    replies = sft.generate_replies(model, prompts, sft.chat_stop_ids(tok), batch_size=batch_size, seed=seed,
                                   pad_id=sft.pad_id_of(tok), **kw, **sampling)
    records, terms = [], {}
    for t, (ids, stopped) in zip(tasks, replies, strict=True):
        text = _text(tok, ids)
        r = reward(t["spec"], text, stopped, t["previous"])
        checks = check_reply(t["spec"], text, t["previous"])
        records.append({"conversation": t["conversation"], "turn": t["turn"], "kind": t["spec"]["kind"],
                        "reply": text, "stopped": stopped, "reward": r["total"], "terms": r["terms"],
                        "checks": checks, "ends_with_end": stopped, "bits": 0.0, "bytes": 0})
        for k, v in r["terms"].items():
            terms.setdefault(k, []).append(v)
    rules = sft.headline(sft.summarize(records), records)
    rules.pop("response_bpb", None)
    out: dict[str, Any] = {"reward": float(np.mean([r["reward"] for r in records])),
                           "terms": {k: float(np.mean(v)) for k, v in sorted(terms.items())}, "rules": rules,
                           "ok_rate": float(np.mean([r["checks"]["ok"] for r in records])), "n": len(records)}
    if ref is not None:
        out.update(kl_to_reference(model, ref, tok, prompts, replies))
    if plain_stories:
        out["plain_bpb"] = sft.plain_bpb(model, tok, plain_stories)
    for r in records:
        for k in ("bits", "bytes", "ends_with_end"):
            r.pop(k)
    out["records"] = records
    return out


def save_rl_adapter(policy: GPT, out_dir: str | Path, base: str = "models/storyteller-chat",
                    extra: dict[str, Any] | None = None) -> Path:
    """The policy's LoRA adapter (storylib.lora.save_adapter) in a folder whose adapter_config names the chat
    model folder `base` as its base_model: storylib.sft.load_chat_model loads the chat model (itself an adapter,
    merged) and then this adapter on top."""
    from storylib.lora import lora_layers, save_adapter

    layers = lora_layers(policy)
    if not layers:
        raise ValueError("the policy has no LoRA layers")
    first = next(iter(layers.values()))
    config = {"base_model": str(base), "r": first.r, "alpha": first.alpha,
              "targets": sorted({n.rsplit(".", 1)[-1] for n in layers}), **(extra or {})}
    return save_adapter(policy, out_dir, config)
