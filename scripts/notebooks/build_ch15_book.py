"""Write book/ch15_rl.ipynb, the Chapter 15 page (the book executes it at build time).

    .venv/bin/python scripts/notebooks/build_ch15_book.py

The page runs every method on a toy policy small enough for two CPU cores (seconds), samples the shipped chat
storyteller live for §15.1, and reads the storyteller-sized GPU run from bench/results/rl_h100.json.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch15_rl")
md, code, ex = page.md, page.code, page.exercise

md("""
# Learning from preferences: reward models, DPO, PPO and GRPO

Chapter 14 taught the storyteller to follow instructions by *imitation*: here is a request, here is a good reply,
make that reply likely. It worked for some requests and not for others. Ask for a story "with the words ball, cake
and tree" and the chat model writes a fine story that uses one of them. Showing it more examples helps little,
because a demonstration says *what* to write, never *what was wrong* with what the model wrote itself.

This chapter changes the kind of signal. The model writes several replies; something **judges** them; the model
moves towards the replies that were judged better. That something can be a person clicking 👍 or 👎, a **reward
model** trained on many such clicks, or rules a program can check. It is how ChatGPT was made from GPT-3
(Ouyang et al. 2022, "Training language models to follow instructions with human feedback"), and how today's
reasoning models are trained on problems whose answers can be checked.

- §15.1 **rewards by rules**, and preference pairs made from them;
- §15.2 a **reward model** that learns to score replies from pairs (Bradley–Terry);
- §15.3 **DPO**: learn from the pairs directly, no reward model;
- §15.4 the **KL leash** that keeps the model close to where it started;
- §15.5 **PPO**: a value head, advantages (GAE), the clipped objective;
- §15.6 **GRPO**: PPO without a value head, a group of replies as the baseline;
- §15.7 **reward hacking**: what an optimiser does to a reward model it is allowed to exploit;
- §15.8 the storyteller, trained each way, on one table.

Every method runs on this page, on a toy "storyteller" small enough to train in seconds on two CPU cores; the same
code trained the real one on a GPU, and §15.8 shows what each method did there.
""")
code("""
import json
import os
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from storylib import rl
from storylib.data import course_file

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # the book is built on two CPU cores
t_page = time.perf_counter()
""")

# --------------------------------------------------------------------------------------------------- 15.1
md("""
## Rewards by rules, and preference pairs

### A toy storyteller

To see each method work, and fail, we need a policy we can train a thousand times while reading. Here is one. Its
vocabulary is 14 words, one of them `<end>`. A request asks for one word ("a story with *ball*"), and a reply is at
most 8 words. The policy is a table: for each request and each previous word, a row of logits for the next word,
$\\pi_\\theta(y_t \\mid x, y_{t-1})$. It is a bigram model (Chapter 1) with one table per request, and it is sampled
exactly like the storyteller, one word at a time until `<end>`.

Its starting point, the **reference** $\\pi_{\\text{ref}}$, plays the role of the SFT model: random logits, the same
for every request, so it writes word salad that ignores the request.
""")
code("""
WORDS = ["<end>", "Lily", "Tom", "ball", "cat", "tree", "cake", "played", "ran", "saw", "a", "the", "and", "happy"]
V, END, L = len(WORDS), 0, 8          # vocabulary, the stop word, the longest reply
ASKED = [1, 2, 3, 4, 5, 6]            # request p asks for the word ASKED[p]
P = len(ASKED)


class TablePolicy(torch.nn.Module):
    \"\"\"π(next word | request, previous word): one table of logits per request.\"\"\"

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, requests, prev):            # (B,), (B, T) ids -> (B, T, V) logits
        return self.logits[requests[:, None], prev]


def sample(policy, requests, gen):
    \"\"\"One reply per request: inputs x (B, L) (the previous words, `<end>` first), targets y (B, L), and the
    mask (B, L) of the reply's positions (the first `<end>` included, nothing after it).\"\"\"
    B = len(requests)
    x, y, mask = torch.full((B, L), END), torch.full((B, L), END), torch.zeros(B, L)
    alive, prev = torch.ones(B, dtype=torch.bool), torch.full((B,), END)
    with torch.no_grad():
        for t in range(L):
            probs = F.softmax(policy(requests, prev[:, None])[:, 0], -1)
            nxt = torch.multinomial(probs, 1, generator=gen)[:, 0]
            x[:, t], y[:, t], mask[:, t] = prev, torch.where(alive, nxt, END), alive.float()
            alive, prev = alive & (nxt != END), nxt
    return x, y, mask


def text(y, mask):
    return [" ".join(WORDS[w] for w, m in zip(row, mr) if m) for row, mr in zip(y.tolist(), mask.tolist())]


reference_logits = torch.randn(V, V, generator=torch.Generator().manual_seed(1)).expand(P, V, V)
ref = TablePolicy(reference_logits).requires_grad_(False)
requests = torch.arange(P)
x, y, mask = sample(ref, requests, torch.Generator().manual_seed(0))
for p, reply in zip(requests.tolist(), text(y, mask)):
    print(f"a story with {WORDS[ASKED[p]]!r:8} -> {reply}")
""")
md("""
### What we want, as rules

We cannot ask people to judge a million replies while the page builds, so we write down what a good reply is,
as rules a program can check. For the toy: the requested word appears (worth two points), the reply stops by
itself with `<end>`, it is 3 to 6 words long, and it does not repeat itself. The **reward** is the points scored
over the points possible, between 0 and 1:
""")
code("""
def reward_by_rules(request, reply_ids):
    \"\"\"In [0, 1]: 1 when every rule holds. reply_ids: the reply's words, its `<end>` included if it stopped.\"\"\"
    words = [w for w in reply_ids if w != END]
    asked = ASKED[request] in words
    stopped = bool(reply_ids) and reply_ids[-1] == END
    length_ok = 3 <= len(words) <= 6
    no_repeats = 1 - (len(words) - len(set(words))) / max(len(words), 1)
    return (2 * asked + stopped + length_ok + no_repeats) / 5


def rewards_of(requests, y, mask):
    ids = [[w for w, m in zip(row, mr) if m] for row, mr in zip(y.tolist(), mask.tolist())]
    return torch.tensor([reward_by_rules(int(p), r) for p, r in zip(requests, ids)])


many = torch.arange(P).repeat_interleave(500)
x, y, mask = sample(ref, many, torch.Generator().manual_seed(1))
ref_rewards = rewards_of(many, y, mask)
print(f"the reference's mean reward over {len(many):,} replies: {ref_rewards.mean():.3f} (the best possible: 1)")
""")
md("""
The storyteller's rules are the same kind, only more of them: Chapter 14's checks of each request (the words it
asked for, the character, dialogue or a happy ending when asked, a rename done, a title short enough...), plus
stopping by itself, a length that suits the request, and a penalty for repeating 4-grams.
`storylib.preferences.reward` adds them up, with the weights in one table at the top of that file, into a number
between 0 and 1.

### From scores to pairs

A single score is hard to give consistently; people are much better at saying which of *two* replies is better.
So preference data is collected as **pairs**: for one request, sample $k$ replies, and keep (chosen, rejected)
where the chosen one scored higher. Pairs with equal scores say nothing and are dropped.
""")
code("""
def preference_pairs(policy, requests, k, seed):
    \"\"\"For each request, k sampled replies; the best and the worst form a pair (ties dropped).\"\"\"
    reps = requests.repeat_interleave(k)
    x, y, mask = sample(policy, reps, torch.Generator().manual_seed(seed))
    r = rewards_of(reps, y, mask).view(-1, k)
    best, worst = r.argmax(1), r.argmin(1)
    keep = r.max(1).values > r.min(1).values
    rows = torch.arange(len(requests)) * k
    chosen, rejected = rows + best, rows + worst
    return {"request": requests[keep], "chosen": (y[chosen[keep]], mask[chosen[keep]]),
            "rejected": (y[rejected[keep]], mask[rejected[keep]]), "x_chosen": x[chosen[keep]],
            "x_rejected": x[rejected[keep]], "scores": (r.max(1).values[keep], r.min(1).values[keep])}


train_pairs = preference_pairs(ref, torch.arange(P).repeat(300), k=4, seed=10)
heldout_pairs = preference_pairs(ref, torch.arange(P).repeat(100), k=4, seed=11)
print(f"{len(train_pairs['request'])} training pairs and {len(heldout_pairs['request'])} held-out pairs "
      f"(ties dropped from {300 * P} and {100 * P} requests)")
for i in range(3):
    p = int(train_pairs["request"][i])
    c, r = (text(*[t[i : i + 1] for t in train_pairs[k]])[0] for k in ("chosen", "rejected"))
    sc, sr = (float(s[i]) for s in train_pairs["scores"])
    print(f"with {WORDS[ASKED[p]]!r}:  chosen {sc:.2f} {c!r:42}  rejected {sr:.2f} {r!r}")
""")

md("""
### The storyteller's replies, scored

Now the real thing. Chapter 14's chat storyteller answers three requests it never saw in training (made by the same
rules from validation stories), four times each, sampled as the product samples. `storylib.preferences` scores each
reply and pairs the best with the worst:
""")
code("""
from storylib import preferences as PR
from storylib.chat_template import render_chat
from storylib.conversations import build_conversations, repeated_ngram_rate
from storylib.data import load_stories
from storylib.sft import load_chat_model
from storylib.widgets import ReplyCompare

chat, tok = load_chat_model("models/storyteller-chat")
requests_made = PR.rl_tasks(build_conversations(load_stories("valid", limit=40), seed=0), tok, chat.config.block_size)
tasks = [t for t in requests_made if t["spec"]["kind"] == "create" and not t["spec"]["beginning"]][:3]
K = 4
t0 = time.perf_counter()
replies = PR.sample_replies(chat, tok, tasks, k=K, seed=0, max_new_tokens=300)
scores = PR.score_replies(tasks, replies)
story_pairs = PR.make_pairs(tasks, replies, scores)
print(f"{len(tasks)} requests x {K} replies in {time.perf_counter() - t0:.1f} s on this CPU; "
      f"{len(story_pairs)} pairs (a pair needs rewards at least 0.05 apart)")
for t, rs, ss in zip(tasks, replies, scores):
    print(f"\\n{t['messages'][-1]['content']}")
    for r, s in zip(rs, ss):
        terms = PR.reward(t["spec"], r["text"], r["stopped"], t["previous"])["terms"]
        print(f"  {s:.2f}  " + "  ".join(f"{k} {v:.2f}" for k, v in terms.items()))
""")
md("""
The reward's terms show what the rules check: `word_recall` is the share of the requested words the story uses,
`character` whether the asked-for name is in it, `dialogue` and `happy` whether the story has them when asked,
`stop` whether it ended by itself, `length` and `repetition` its form. Below, the same replies side by side with
their rewards, and which two form the pair. In JupyterLab (`make start`) you can type a request of your own: four
fresh replies come back, with what the rules can say without a request made by rules (length, repetition).
""")
code("""
recorded = {t["messages"][-1]["content"]: (t, rs, ss) for t, rs, ss in zip(tasks, replies, scores)}


def replier(i):
    def reply(request):
        if request in recorded:
            return recorded[request][1][i]["text"]
        prompt = render_chat([{"role": "user", "content": request}], tok, add_generation_prompt=True)[0]
        [(ids, _)] = PR.generate_bucketed(chat, tok, [prompt], seed=i, max_new_tokens=300)
        return tok.decode([j for j in ids if j < tok.n_vocab])
    return reply


def notes(request, text):
    if request not in recorded:
        return [f"{len(text.split())} words", f"repeated 4-grams {repeated_ngram_rate(text, 4):.0%}"]
    t, rs, ss = recorded[request]
    i = [r["text"] for r in rs].index(text)
    best, worst = int(np.argmax(ss)), int(np.argmin(ss))  # make_pairs: the first of equals wins
    role = " · chosen" if i == best and ss[best] - ss[worst] >= 0.05 else ""
    role = " · rejected" if i == worst and ss[best] - ss[worst] >= 0.05 and i != best else role
    terms = PR.reward(t["spec"], text, rs[i]["stopped"], t["previous"])["terms"]
    return [f"reward {ss[i]:.2f}{role}", ", ".join(f"{k} {v:.2f}" for k, v in terms.items())]


ReplyCompare({f"reply {i + 1}": replier(i) for i in range(K)}, requests=list(recorded), notes=notes)
""")

# --------------------------------------------------------------------------------------------------- 15.2
md("""
## The reward model

Rules only exist for what we can write down. "Is this story sweet?" has no rule, but people answer it easily,
two stories at a time. A **reward model** $r_\\phi(x, y)$ learns a score from such pairs. The model behind it is
Bradley and Terry's (1952), made for ranking chess players from their games: the probability that $y_c$ is
preferred to $y_r$ is a logistic function of the difference of their scores,

$$
P(y_c \\succ y_r \\mid x) = \\sigma\\big(r_\\phi(x, y_c) - r_\\phi(x, y_r)\\big),
\\qquad
\\mathcal{L}_{\\text{RM}}(\\phi) = -\\,\\mathbb{E}_{(x, y_c, y_r)}
\\log \\sigma\\big(r_\\phi(x, y_c) - r_\\phi(x, y_r)\\big).
$$

Only differences matter: add a constant to every score and nothing changes. Written with `logsigmoid`, the loss
stays finite when the margin is large of either sign.
""")
ex("ch15.bradley_terry", "The mean Bradley–Terry loss of a batch of pairs, from the two scores of each pair.")
md("""
The storyteller's reward model is the storyteller itself, its transformer trunk, with one scalar read off the
hidden state of the reply's last token instead of the 6,000-odd logits. For the toy, a much smaller model
suffices: a score per (request, word) for each word the reply contains, plus a score for stopping, a linear model on
word counts.
""")
code("""
def counts(requests, y, mask):
    \"\"\"(B, V) word counts of each reply (its `<end>` counted once if it stopped).\"\"\"
    return F.one_hot(y, V).mul(mask[..., None]).sum(1).float()


class CountRewardModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(P, V))     # the worth of each word, per request

    def forward(self, requests, y, mask):
        return (self.w[requests] * counts(requests, y, mask)).sum(-1)


def pair_scores(rm, pairs):
    return (rm(pairs["request"], *pairs["chosen"]), rm(pairs["request"], *pairs["rejected"]))


rm = CountRewardModel()
opt = torch.optim.Adam(rm.parameters(), lr=0.05)


def pair_accuracy(rm, pairs):
    with torch.no_grad():
        c, r = pair_scores(rm, pairs)
    return (c > r).float().mean().item()  # a tie counts as wrong


accuracy = [pair_accuracy(rm, heldout_pairs)]
for step in range(300):
    loss = rl.bradley_terry_loss(*pair_scores(rm, train_pairs))
    opt.zero_grad(); loss.backward(); opt.step()
    accuracy.append(pair_accuracy(rm, heldout_pairs))
print(f"held-out pair accuracy: {accuracy[0]:.1%} at the start (every score 0, all ties), {accuracy[50]:.1%} after "
      f"50 steps, {accuracy[-1]:.1%} after 300")
w = rm.w.detach()
print("what it learnt for the request 'ball':",
      ", ".join(f"{WORDS[i]} {w[2, i]:+.2f}" for i in w[2].argsort(descending=True)[:4].tolist()), "...",
      ", ".join(f"{WORDS[i]} {w[2, i]:+.2f}" for i in w[2].argsort()[:2].tolist()))
""")
md("""
It found the requested word and `<end>`; it has no idea of *length* or *repetition*, which a count model cannot
see. Keep that in mind for §15.7: the reward model is a summary of the judgements it was trained on, right on
average on replies like those, and nothing more.

## DPO: learning from the pairs directly

Training a reward model and then optimising against it is two steps, each with its own instabilities. Rafailov et
al. (2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model") noticed that the
policy that best trades reward against staying close to $\\pi_{\\text{ref}}$ (the objective of §15.4) has a closed
form, $\\pi^*(y \\mid x) \\propto \\pi_{\\text{ref}}(y \\mid x)\\, e^{r(x, y) / \\beta}$. Turned around, any policy
*defines* a reward, up to a term that depends only on $x$:

$$
r(x, y) = \\beta \\log \\frac{\\pi_\\theta(y \\mid x)}{\\pi_{\\text{ref}}(y \\mid x)} + \\beta \\log Z(x).
$$

Put that into Bradley–Terry and $Z(x)$ cancels in the difference. What remains is a loss on the policy alone:

$$
\\mathcal{L}_{\\text{DPO}}(\\theta) = -\\,\\mathbb{E} \\log \\sigma\\Big(
\\beta \\log \\frac{\\pi_\\theta(y_c \\mid x)}{\\pi_{\\text{ref}}(y_c \\mid x)}
- \\beta \\log \\frac{\\pi_\\theta(y_r \\mid x)}{\\pi_{\\text{ref}}(y_r \\mid x)} \\Big).
$$

Everything in it is a **sequence log-probability**, $\\log \\pi(y \\mid x) = \\sum_t \\log \\pi(y_t \\mid x,
y_{<t})$: the sum, over the reply's tokens only, of the log-probabilities a forward pass gives. The prompt and the
padding are masked out.
""")
ex("ch15.sequence_logprob", "The log-probability of each row's reply: per-token log-probabilities of the targets "
   "(log-softmax, then pick the target's entry), summed where the mask is 1.")
ex("ch15.dpo_loss", "The DPO loss from the four sequence log-probabilities, and the implicit rewards of the chosen "
   "and rejected replies (detached).")
md("""
Two checks that every DPO implementation should pass, and the chapter's tests do: at the start the policy *is*
the reference, so both log-ratios are 0 and the loss is $-\\log \\sigma(0) = \\ln 2$; and the gradient raises the
chosen reply's log-probability and lowers the rejected one's.
""")
code("""
def seq_logprob(policy, requests, x, y, mask):
    return rl.sequence_logprob(policy(requests, x), y, mask)


def dpo_terms(policy, pairs):
    p = pairs["request"]
    return [seq_logprob(m, p, pairs[f"x_{side}"], *pairs[side])
            for m in (policy, ref) for side in ("chosen", "rejected")]


policy = TablePolicy(reference_logits)
loss0, _, _ = rl.dpo_loss(*dpo_terms(policy, train_pairs), beta=0.1)
print(f"DPO loss at the start: {loss0.item():.6f}   ln 2 = {np.log(2):.6f}")


def evaluate(policy, n=1200, seed=99):
    \"\"\"Mean reward by rules and KL(π ‖ π_ref) per reply (k3, §15.4) on fresh samples of every request.\"\"\"
    reqs = torch.arange(P).repeat(n // P)
    x, y, mask = sample(policy, reqs, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        lp, lr = (rl.token_logprobs(m(reqs, x), y) for m in (policy, ref))
    kl = (rl.kl_penalty(lp, lr, "k3") * mask).sum(1).mean()
    return rewards_of(reqs, y, mask).mean().item(), kl.item()


def train_dpo(beta, steps=200, lr=0.05):
    policy = TablePolicy(reference_logits)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    log = []
    for step in range(steps + 1):
        if step % 20 == 0:
            log.append((step, *evaluate(policy)))
        loss, rc, rr = rl.dpo_loss(*dpo_terms(policy, train_pairs), beta=beta)
        opt.zero_grad(); loss.backward(); opt.step()
    return policy, np.array(log)


t0 = time.perf_counter()
dpo_policy, dpo_log = train_dpo(beta=0.1)
print(f"DPO, β = 0.1, 200 steps on {len(train_pairs['request'])} pairs ({time.perf_counter() - t0:.1f} s): "
      f"mean reward {dpo_log[0, 1]:.3f} -> {dpo_log[-1, 1]:.3f}, KL to the reference {dpo_log[-1, 2]:.2f} nats a reply")
""")

md("""
### Iterative DPO: fresh pairs from the policy itself

Look at where the pairs came from: the reference wrote them, before training. As DPO trains, the policy's replies
change, and the pairs describe them less and less. They show mistakes the reference made and the policy may have
stopped making; they say nothing about the new mistakes the policy makes now. The loss still has room to go down:
it can keep widening the margin on those old pairs, mostly by pushing down replies the policy no longer writes,
which buys no reward. Offline DPO stalls.

The fix is to do what PPO and GRPO do anyway: learn from the policy's own samples. **Iterative** (or *on-policy*,
*online*) DPO runs in rounds (Xu et al. 2023, "Some things are more CRINGE than others"; Yuan et al. 2024,
"Self-Rewarding Language Models"; Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"):
sample $k$ replies to fresh requests from the *current* policy, judge them, pair the best with the worst, and run
some more DPO steps on those pairs. The reference stays $\\pi_{\\text{ref}}$ in every round, so the leash of
§15.4 is always measured from the same place. Below: the same 200 steps as above, in 4 rounds of 50, each on new
pairs.
""")
code("""
def train_iterative_dpo(beta, rounds=4, steps=50, lr=0.05, n=300):
    policy = TablePolicy(reference_logits)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    log = [(0, *evaluate(policy))]
    for r in range(rounds):
        pairs = preference_pairs(policy, torch.arange(P).repeat(n), k=4, seed=20 + r)  # the policy's own replies
        for step in range(steps):
            loss, rc, rr = rl.dpo_loss(*dpo_terms(policy, pairs), beta=beta)
            opt.zero_grad(); loss.backward(); opt.step()
        log.append(((r + 1) * steps, *evaluate(policy)))
        print(f"round {r + 1}: {len(pairs['request'])} pairs from the policy, then {steps} steps: "
              f"reward {log[-1][1]:.3f}, KL {log[-1][2]:.2f} nats a reply")
    return policy, np.array(log)


t0 = time.perf_counter()
idpo_policy, idpo_log = train_iterative_dpo(beta=0.1)
print(f"({time.perf_counter() - t0:.1f} s)")
peak = dpo_log[:, 1].argmax()
print(f"offline DPO: its best reward {dpo_log[peak, 1]:.3f} at step {dpo_log[peak, 0]:.0f} "
      f"(KL {dpo_log[peak, 2]:.2f}), {dpo_log[-1, 1]:.3f} at step {dpo_log[-1, 0]:.0f}")
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(dpo_log[:, 2], dpo_log[:, 1], "o-", label="DPO on the reference's pairs")
ax.plot(idpo_log[:, 2], idpo_log[:, 1], "s-", label="iterative DPO, new pairs each round")
ax.set(xlabel="KL to the reference (nats per reply)", ylabel="mean reward by rules",
       title="reward bought per nat of KL")
ax.legend(); plt.tight_layout(); plt.show()
""")
md("""
Each point is one evaluation, placed by the distance it had walked from the reference. Offline DPO climbs, peaks,
and then slides back: it is polishing pairs that no longer describe the policy. The
iterative run sees its own mistakes every round, and for the same KL it reaches more reward. The price is
sampling and judging in every round, which offline DPO does once; it needs a judge that can score new replies
on demand: here the rules, elsewhere a reward model or another language model.
""")

# --------------------------------------------------------------------------------------------------- 15.4
md("""
## The KL leash

Every method in this chapter maximises reward *and* stays near the model it started from. The objective is

$$
\\max_\\theta \\; \\mathbb{E}_{x,\\, y \\sim \\pi_\\theta} \\big[ r(x, y) \\big]
- \\beta\\, \\mathrm{KL}\\big(\\pi_\\theta(\\cdot \\mid x) \\,\\|\\, \\pi_{\\text{ref}}(\\cdot \\mid x)\\big).
$$

Why the leash? The reference writes fluent stories; the reward only checks a few things. A policy free to do
anything for reward will find replies that score well and read badly (§15.7). The KL term charges it for every
nat it moves away from the reference, so it moves only where the reward pays for it.

The KL of two distributions over *whole replies* cannot be summed exactly: there are too many replies. It is
estimated from the replies we sampled anyway, token by token, with $\\rho = \\pi_{\\text{ref}}(y_t) /
\\pi_\\theta(y_t)$ for each sampled token (Schulman 2020, "Approximating KL divergence"):

| estimator | per token | mean | sign |
|---|---|---|---|
| $k_1$ | $-\\log \\rho$ | unbiased | can be negative |
| $k_2$ | $\\tfrac12 (\\log \\rho)^2$ | biased (small when π ≈ π_ref) | ≥ 0 |
| $k_3$ | $(\\rho - 1) - \\log \\rho$ | unbiased | ≥ 0 |

$k_3$ is unbiased because $\\mathbb{E}_{\\pi_\\theta}[\\rho - 1] = 0$, and never negative because $\\log \\rho \\le
\\rho - 1$.
""")
ex("ch15.kl_penalty", "The three per-token estimators of KL(π ‖ π_ref), from the log-probabilities of the sampled "
   "tokens under the policy and under the reference.")
code("""
g = torch.Generator().manual_seed(0)
logits = torch.randn(6, generator=g) * 1.5
for label, spread in (("close (as in training)", 0.3), ("far apart", 1.5)):
    p = F.softmax(logits, 0).double()                                  # the policy
    q = F.softmax(logits + torch.randn(6, generator=g) * spread, 0).double()   # the reference
    exact = (p * (p / q).log()).sum().item()
    draws = torch.multinomial(p, 200_000, replacement=True, generator=g)   # tokens sampled from the policy
    print(f"{label}: exact KL {exact:.4f}")
    for kind in ("k1", "k2", "k3"):
        est = rl.kl_penalty(p.log()[draws], q.log()[draws], kind)
        print(f"   {kind}: mean {est.mean():.4f}, spread (std) per token {est.std():.4f}, "
              f"negative {(est < 0).float().mean():.0%}")
""")
md("""
$k_1$ and $k_3$ land on the exact value in both cases. When the two distributions are close, as they are for
most of training, $k_3$'s spread is a small fraction of $k_1$'s, and it is never negative: the one to log. $k_2$ is
good when they are close and biased when they are far apart. PPO puts $k_1$ into the per-token reward (below),
GRPO adds $k_3$ to the loss.

## PPO: reinforcement learning with a value head

DPO learns from a fixed set of pairs. **Reinforcement learning** lets the policy write new replies, scores each,
and makes what scored well more likely, again and again: the replies it learns from are always its own. The
gradient that makes this work is the policy gradient,

$$
\\nabla_\\theta \\, \\mathbb{E}_{y \\sim \\pi_\\theta}[R] = \\mathbb{E}_{y \\sim \\pi_\\theta}\\Big[\\sum_t
\\nabla_\\theta \\log \\pi_\\theta(y_t \\mid x, y_{<t}) \\, A_t\\Big],
$$

where the **advantage** $A_t$ says how much better than expected things went after token $t$. Two ideas make it
work in practice (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Ouyang et al. 2022 for
language models).

**Advantages from a value head.** A second head on the policy's trunk predicts $V(s_t)$, the reward to come from
position $t$. Each token gets a reward $r_t$: minus $\\beta\\, k_1$ for its KL, plus the judge's score at the
reply's last token. The one-step surprise is $\\delta_t = r_t + \\gamma V(s_{t+1}) - V(s_t)$, and
**generalised advantage estimation** (GAE, Schulman et al. 2016) adds up the surprises to come, discounted by
$\\gamma\\lambda$:

$$
A_t = \\sum_{l \\ge 0} (\\gamma \\lambda)^l \\, \\delta_{t+l}
= \\delta_t + \\gamma \\lambda A_{t+1}.
$$

$\\lambda = 1$ trusts the sampled rewards (unbiased, noisy); $\\lambda = 0$ trusts the value head (one step of
reward, then its guess). The right-hand form computes all of them in one sweep from the last token back.
""")
ex("ch15.gae", "The advantages of every reply token, from right to left, and the returns (advantages + values).")
md("""
**A clipped objective.** Sampling replies is expensive, so each batch is used for several gradient steps. After the
first, the policy is no longer the one that sampled them; the ratio $\\rho_t = \\pi_\\theta(y_t) /
\\pi_{\\text{old}}(y_t)$ corrects for it, and PPO caps how much one batch may move each token's probability:

$$
\\mathcal{L}_{\\text{PPO}} = -\\,\\mathbb{E}_t \\min\\big(\\rho_t A_t,\\; \\operatorname{clip}(\\rho_t, 1 - \\epsilon,
1 + \\epsilon)\\, A_t\\big).
$$

When a token's probability has already moved by more than $\\epsilon$ in the direction its advantage asks for, the
clipped term is the smaller one and it is constant: the token gets no more gradient from this batch.
""")
ex("ch15.ppo_clip", "PPO's clipped surrogate as a loss, averaged over the reply tokens.")
code("""
def train_ppo(score_fn, beta, steps=150, batch=48, lr=0.05, epochs=2):
    \"\"\"PPO on the toy: value table V(request, previous word, position), per-token KL penalty k1, GAE, clipping.\"\"\"
    policy = TablePolicy(reference_logits)
    value = torch.nn.Parameter(torch.zeros(P, V, L))
    opt = torch.optim.Adam([*policy.parameters(), value], lr=lr)
    gen, pos, log = torch.Generator().manual_seed(3), torch.arange(L), []
    for step in range(steps + 1):
        if step % 10 == 0:
            log.append((step, *evaluate(policy)))
        reqs = torch.arange(P).repeat(batch // P)
        x, y, mask = sample(policy, reqs, gen)
        with torch.no_grad():
            old_logp = rl.token_logprobs(policy(reqs, x), y)
            kl = rl.kl_penalty(old_logp, rl.token_logprobs(ref(reqs, x), y), "k1")
            rewards = -beta * kl * mask
            rewards[torch.arange(len(reqs)), mask.sum(1).long() - 1] += score_fn(reqs, y, mask)  # the last token
            old_values = value[reqs[:, None], x, pos]
            adv, returns = rl.gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
            adv = (adv - rl.masked_mean(adv, mask)) * mask                  # centre: a baseline for the batch
        for _ in range(epochs):
            logp = rl.token_logprobs(policy(reqs, x), y)
            values = value[reqs[:, None], x, pos]
            loss = rl.ppo_clip_loss(logp, old_logp, adv, mask) + 0.5 * rl.value_loss(values, old_values, returns, mask)
            opt.zero_grad(); loss.backward(); opt.step()
    return policy, np.array(log)


t0 = time.perf_counter()
ppo_policy, ppo_log = train_ppo(rewards_of, beta=0.1)
print(f"PPO on the rules, β = 0.1, 150 steps of 48 replies ({time.perf_counter() - t0:.1f} s): mean reward "
      f"{ppo_log[0, 1]:.3f} -> {ppo_log[-1, 1]:.3f}, KL {ppo_log[-1, 2]:.2f} nats a reply")
""")

# --------------------------------------------------------------------------------------------------- 15.6
md("""
## GRPO: a group of replies as the baseline

The value head is a second network to train, and for language it is a hard one: it must guess, from a half-written
story, how the judge will score the rest. **GRPO** (Shao et al. 2024, DeepSeekMath; the method behind DeepSeek-R1)
drops it. For each request it samples a *group* of $G$ replies and uses the group itself as the baseline: each
reply's advantage is its reward standardised within its group,

$$
A_i = \\frac{R_i - \\operatorname{mean}(R_1, \\dots, R_G)}{\\operatorname{std}(R_1, \\dots, R_G)},
$$

given to every token of reply $i$. A reply better than its siblings is pushed up, a worse one down; a group in
which every reply scored the same teaches nothing and gets zeros. The KL leash moves from the reward into the
loss, as $\\beta\\, k_3$ per token.
""")
ex("ch15.grpo_advantages", "Each reply's reward standardised within its group of replies to the same request.")
code("""
def train_grpo(beta, steps=150, group=8, lr=0.05, epochs=2):
    policy = TablePolicy(reference_logits)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    gen, log = torch.Generator().manual_seed(2), []
    for step in range(steps + 1):
        if step % 10 == 0:
            log.append((step, *evaluate(policy)))
        reqs = torch.arange(P).repeat_interleave(group)          # G replies to each request, side by side
        x, y, mask = sample(policy, reqs, gen)
        adv = rl.grpo_advantages(rewards_of(reqs, y, mask), group)[:, None].expand_as(mask)
        with torch.no_grad():
            old_logp, ref_logp = (rl.token_logprobs(m(reqs, x), y) for m in (policy, ref))
        for _ in range(epochs):
            logp = rl.token_logprobs(policy(reqs, x), y)
            kl = rl.masked_mean(rl.kl_penalty(logp, ref_logp, "k3"), mask)
            loss = rl.ppo_clip_loss(logp, old_logp, adv, mask) + beta * kl
            opt.zero_grad(); loss.backward(); opt.step()
    return policy, np.array(log)


t0 = time.perf_counter()
grpo_policy, grpo_log = train_grpo(beta=0.1)
print(f"GRPO, β = 0.1, 150 steps of 6 groups of 8 ({time.perf_counter() - t0:.1f} s): mean reward "
      f"{grpo_log[0, 1]:.3f} -> {grpo_log[-1, 1]:.3f}, KL {grpo_log[-1, 2]:.2f} nats a reply")

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
for name, log in (("DPO", dpo_log), ("PPO", ppo_log), ("GRPO", grpo_log)):
    a.plot(log[:, 0], log[:, 1], label=name); b.plot(log[:, 0], log[:, 2], label=name)
a.axhline(ref_rewards.mean(), color="grey", ls=":", label="reference"); a.set_ylim(0, 1.02)
a.set(xlabel="step", ylabel="mean reward by rules", title="reward"); a.legend()
b.set(xlabel="step", ylabel="nats per reply (k3)", title="KL(π ‖ π_ref)"); b.legend()
plt.tight_layout(); plt.show()
""")
md("""
All three raise the reward; they pay for it in KL, the distance from the reference. DPO saw only the pairs sampled
once from the reference, so it can only move towards replies like the chosen ones it was shown. PPO and GRPO keep
sampling from the policy they are training and find better replies than any in the pairs. Here is the reward
distribution before and after:
""")
code("""
def reward_samples(policy, n=3000, seed=7):
    reqs = torch.arange(P).repeat(n // P)
    x, y, mask = sample(policy, reqs, torch.Generator().manual_seed(seed))
    return rewards_of(reqs, y, mask).numpy()


bins = np.linspace(0, 1, 11)
plt.figure(figsize=(7, 3))
for name, pol in (("reference", ref), ("DPO", dpo_policy), ("PPO", ppo_policy), ("GRPO", grpo_policy)):
    plt.hist(reward_samples(pol), bins=bins, histtype="step", lw=2, label=name, density=True)
plt.xlabel("reward by rules"); plt.ylabel("density"); plt.legend(loc="upper left"); plt.tight_layout(); plt.show()
x, y, mask = sample(grpo_policy, torch.arange(P), torch.Generator().manual_seed(0))
for p, reply in zip(range(P), text(y, mask)):
    print(f"GRPO, a story with {WORDS[ASKED[p]]!r:8} -> {reply}")
""")

# --------------------------------------------------------------------------------------------------- 15.7
md("""
## Reward hacking

The rules of §15.1 are the truth for the toy; the reward model of §15.2 is a summary of judgements. What happens
if PPO optimises the *reward model*? The count model learnt that the requested word is worth a lot and has no idea
of repetition or length. Let PPO loose on it, once with the KL leash and once without, and measure each policy by
the rules it never saw:
""")
code("""
def rm_score(reqs, y, mask):
    with torch.no_grad():
        return rm(reqs, y, mask)


def rm_mean(policy, n=1200, seed=99):
    reqs = torch.arange(P).repeat(n // P)
    x, y, mask = sample(policy, reqs, torch.Generator().manual_seed(seed))
    return rm_score(reqs, y, mask).mean().item()


runs = {}
for beta in (1.0, 0.0):
    policy, log = train_ppo(rm_score, beta=beta, steps=300)
    runs[beta] = (policy, log)
    print(f"PPO on the reward model, β = {beta}: reward by rules {log[0, 1]:.3f} -> {log[-1, 1]:.3f}, "
          f"reward-model score {rm_mean(ref):.2f} -> {rm_mean(policy):.2f}, KL {log[-1, 2]:.1f} nats a reply")

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
for beta, (policy, log) in runs.items():
    a.plot(log[:, 0], log[:, 1], label=f"β = {beta}"); b.plot(log[:, 0], log[:, 2], label=f"β = {beta}")
a.set(xlabel="step", ylabel="reward by rules (the truth)", title="optimising the reward model"); a.legend()
b.set(xlabel="step", ylabel="nats per reply", title="KL(π ‖ π_ref)"); b.legend()
plt.tight_layout(); plt.show()
x, y, mask = sample(runs[0.0][0], torch.arange(P), torch.Generator().manual_seed(0))
for p, reply in zip(range(P), text(y, mask)):
    print(f"no leash, a story with {WORDS[ASKED[p]]!r:8} -> {reply}")
""")
md("""
Without the leash, the policy finds what the reward model over-values and writes it again and again. It earns the
highest reward-model score of all, and by the rules it never saw it is no better than the reference it started
from. With the leash, it gains less on the reward model and more on the truth. This is **reward hacking** (Gao et
al. 2023 measured how it grows with optimisation, "Scaling Laws for Reward Model Overoptimization"). The KL term is
one defence; others are to stop early, to retrain the reward model on the policy's new replies, and to check with
a judge the optimiser never saw, as we did here with the rules.
""")

# --------------------------------------------------------------------------------------------------- 15.8


def gap_text(rm: dict) -> str:
    """A sentence on the reward model's accuracy by reward gap, when the results have it and it says something."""
    acc = [b["accuracy"] for b in rm.get("accuracy_by_gap_heldout", []) if b["n"] >= 30]
    if len(acc) < 2 or acc[0] != min(acc) or acc[-1] != max(acc) or acc[-1] - acc[0] < 0.1:
        return ""
    return ("\n\n    Where it errs shows in the accuracy by gap (above): it is wrong most often on pairs whose rewards"
            "\n    by rules differ by a hair, and right most often on pairs far apart. A learned judge averages over"
            "\n    what it saw; a rule that flips on one word is hard to copy.")


if (Path(__file__).resolve().parents[2] / "bench/results/rl_h100.json").exists():
    md("""
    ## The storyteller, trained each way

    The same methods, at the storyteller's size, ran on one GPU (`bench/rl.py`; its results are
    `bench/results/rl_h100.json`). The policy is the chat storyteller with a fresh LoRA adapter (Chapter 14), the
    reference is the chat storyteller itself, every reply is sampled with Chapter 12's KV cache, and every update
    is Chapter 7's AdamW step. Preferences came from the rules of §15.1: k sampled replies to each of the training
    requests, made from training stories.
    """)
    code("""
    R = json.loads(course_file("bench/results/rl_h100.json").read_text())
    S, st = R["settings"], R["stages"]
    pr, rmst = st["prefs"], st["rm"]
    print(f"trained on {R['card']} ({R['date'][:10]}), torch {R['torch']}")
    print(f"preference pairs: {pr['train']['pairs']:,} from {pr['train']['tasks']:,} training requests "
          f"(k = {S['k']} replies each, all pairs at least {S['min_gap']} apart); "
          f"{pr['heldout']['pairs']:,} held-out pairs from {pr['heldout']['tasks']:,} held-out requests")
    print(f"reward model: held-out pair accuracy {rmst['accuracy_heldout']:.1%} "
          f"(training pairs {rmst['accuracy_train']:.1%}); on fresh held-out replies its score correlates with "
          f"the rules' reward at Pearson {rmst['correlation_heldout']['pearson']:.2f}, "
          f"Spearman {rmst['correlation_heldout']['spearman']:.2f} ({rmst['n_correlation']} replies)")
    for v in rmst.get("variants", []):  # every reward model trained, the kept one chosen on validation pairs
        print(f"  {v['pooling']:>4}-token head, {'all' if v['train_layers'] is None else v['train_layers']} blocks "
              f"trained, lr {v['lr']:g}: validation {v['accuracy_val']:.1%}, held-out {v['accuracy_heldout']:.1%}"
              f" (stopped at step {v['best_val_step']})" + ("  <- kept" if v["name"] == rmst["chosen"] else ""))
    if "accuracy_by_gap_heldout" in rmst:
        print("held-out pair accuracy by the gap between the two replies' rewards by rules:")
        for g in rmst["accuracy_by_gap_heldout"]:
            if g["n"]:
                where = (f"under {g['hi']:.2f}" if g["lo"] is None else f"{g['lo']:.2f} and up" if g["hi"] is None
                         else f"{g['lo']:.2f} to {g['hi']:.2f}")
                print(f"  gap {where:<14}{g['n']:>6} pairs  {g['accuracy']:.1%}")
    """)
    md("""
    Each policy then answered the held-out requests once, sampled as users get them. The table gives the mean
    reward by rules, the share of replies that meet every rule of their request, the KL to the chat storyteller
    per reply (nats, $k_3$ on the policy's own replies), bits per byte on plain validation stories (the yardstick
    of every chapter: did it forget how to tell a story?), and the GPU minutes of training.
    """)
    code("""
    T = R["table"]
    names = {"sft": "chat storyteller (SFT)", "dpo": "DPO", "idpo": "iterative DPO", "ppo": "PPO, reward model",
             "grpo": "GRPO, rules", "ppo_no_kl": "PPO, reward model, no KL"}
    print(f"{'':27}{'reward':>8}{'gain':>8}{'all rules':>11}{'KL/reply':>10}{'bits/byte':>11}{'GPU min':>9}")
    for k, ev in T.items():
        run = ev.get("run_date", R["date"])[:16]
        mark = " *" if run != T["sft"].get("run_date", R["date"])[:16] else ""
        print(f"{names.get(k, k):27}{ev['reward']:8.3f}{ev['reward_gain_rel']:+8.1%}{ev['ok_rate']:11.1%}"
              f"{ev['kl_reply']:10.2f}{ev['plain_bpb']:11.4f}{ev['gpu_minutes']:9.2f}{mark}")
    now = T["sft"].get("run_date", "")[:16]
    earlier = sorted({ev["run_date"][:16] for ev in T.values() if "run_date" in ev} - {now})
    if earlier:
        print(f"* from an earlier run of the same script and settings "
              f"({', '.join(d.replace('T', ' ') for d in earlier)} UTC); its gain is against that run's SFT row")
    rule_names = [k for k in T["sft"]["rules"] if T["sft"]["rules"][k] is not None]
    print()
    short = {"sft": "SFT", "dpo": "DPO", "idpo": "iter. DPO", "ppo": "PPO", "grpo": "GRPO", "ppo_no_kl": "PPO no KL"}
    print(f"{'rule (pass rate)':27}" + "".join(f"{short.get(k, k):>11}" for k in T))
    for r in rule_names:
        print(f"{r:27}" + "".join(f"{T[k]['rules'][r]:11.3f}" if T[k]["rules"].get(r) is not None else f"{'':>11}"
                                   for k in T))
    """)
    code("""
    budget, drift = S["kl_budget"], S["bpb_drift"]
    ok = {k: ev for k, ev in T.items() if k != "sft" and ev["within_budget"]}
    print(f"budget: at most {budget:g} nats of KL per reply and {drift} bits/byte of drift on plain stories")
    for k, ev in sorted(ok.items(), key=lambda kv: -kv[1]["reward"]):
        print(f"  within it: {names[k]:26} reward {ev['reward']:.3f} ({ev['reward_gain_rel']:+.1%}), "
              f"{ev['gap_closed']:.0%} of the way from the chat storyteller to a perfect reward")
    for k, ev in T.items():
        if k != "sft" and not ev["within_budget"]:
            print(f"  outside it: {names[k]} (KL {ev['kl_reply']:.1f} nats per reply, drift {ev['bpb_drift']:+.3f})")
    """)
    # the prose below depends on what the results file holds: rebuild the page after a new GPU run
    R0 = json.loads((Path(__file__).resolve().parents[2] / "bench/results/rl_h100.json").read_text())
    T0, rm0 = R0["table"], R0["stages"]["rm"]
    top = sorted((k for k in T0 if k in ("dpo", "grpo", "ppo")), key=lambda k: -T0[k]["reward"])
    close = top[:2] == ["dpo", "grpo"] or top[:2] == ["grpo", "dpo"]
    md(f"""
    Read the table with the KL column next to the reward. Every method bought some reward, and each paid for it
    in distance from the chat storyteller.{" DPO and GRPO end close together at the top." if close else ""} DPO
    learnt from pairs sampled once, before training, in the least GPU time of all. GRPO sampled fresh
    replies from itself at every step and was scored by the rules themselves, and it was still climbing when its
    few GPU minutes ran out (its curve below). PPO on the learned reward model gained less: it can only be as good
    as the reward model, and that model is the weak link here.

    {"The reward model fits its training pairs far better than the held-out ones, and its" if
     rm0["accuracy_train"] - rm0["accuracy_heldout"] > 0.1 else "The reward model's"} scores on fresh replies
    follow the rules' reward only loosely (the correlations printed above). A reward model needs many more pairs
    than these to learn what a rule sees at once, such as whether a word is in the story; on the toy, where the
    reward model could see the words, it learnt them in fifty steps.{gap_text(rm0)}

    PPO *without* the leash shows what the leash is for. Its reward-model score climbed fastest of all (the plot
    below), while the rules' reward of the very replies it was trained on hardly moved; it walked furthest from
    the chat storyteller and lost the most on plain stories: the reward hacking of §15.7, starting. None of the
    gains is large: each method ran for a few minutes of one GPU at most.
    """)
    if "idpo" in T0:
        md("""
        Iterative DPO started exactly as DPO did, on the chat storyteller's pairs, and then ran rounds of §15.3's
        recipe on fresh training requests: the current policy's own replies, judged by the rules, paired, a few
        more DPO steps, the reference always the chat storyteller. Its log gives, for each round, the reward of
        the replies that round sampled (the policy as the round before left it) and their KL; the table row above
        is its held-out result.
        """)
        code("""
        rounds = [r for r in st["idpo"]["rounds"] if "sampled_reward" in r]
        for r in rounds:
            what = "a last check" if r["round"] == "check" else f"round {r['round'] + 1}"
            print(f"{what:>13}: {r['tasks']:>5} requests, their replies' reward {r['sampled_reward']:.3f}, "
                  f"KL {r['kl_reply']:5.2f} nats per reply" + (f", {r['pairs']:,} pairs" if "pairs" in r else "")
                  + (f"  ({r['stopped']})" if "stopped" in r else ""))
        d, i = T["dpo"], T["idpo"]
        print(f"held out: iterative DPO {i['reward']:.3f} (KL {i['kl_reply']:.2f}) against DPO {d['reward']:.3f} "
              f"(KL {d['kl_reply']:.2f}); {i['gpu_minutes']:.1f} GPU minutes with its sampling, against "
              f"{d['gpu_minutes']:.2f}")
        """)
    code("""
    best = R["best"]
    if best:
        print(f"shipped: {names[best]} is the course's chat model now (models/storyteller-rl, MODEL_CARD.md): "
              f"the chat widget, `llm101n chat`, the web app and the API load it")
    """)
    code("""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    for k in ("ppo", "grpo", "ppo_no_kl"):
        log = st.get(k, {}).get("log", [])
        if log:
            steps = [e["step"] for e in log]
            truth = [e.get("logged_reward", e["reward"]) for e in log]  # GRPO trains on the rules themselves
            style = {"label": names[k], "color": {"ppo": "C0", "grpo": "C1", "ppo_no_kl": "C3"}[k]}
            axes[0].plot(steps, truth, **style)
            axes[1].plot(steps, [e["kl_reply"] for e in log], **style)
            if "logged_reward" in log[0]:  # PPO: the reward model's score, standardised, is what it maximises
                axes[2].plot(steps, [e["reward"] for e in log], **style)
    axes[0].set(xlabel="step", ylabel="reward by rules", title="the rules (training replies)")
    axes[1].set(xlabel="step", ylabel="nats per reply", title="KL to the chat storyteller")
    axes[2].set(xlabel="step", ylabel="standardised score", title="the reward model's score")
    for ax in axes:
        ax.legend(fontsize=8)
    plt.tight_layout(); plt.show()
    """)
    code("""
    for sample in R["samples"][:2]:
        print(sample["request"])
        for k in ("sft", R["best"] or "grpo", "ppo_no_kl"):
            if k in sample:
                print(f"  {names[k]} (reward {sample[k]['reward']:.2f}):")
                print(textwrap.fill(sample[k]["reply"], 110, initial_indent="    ", subsequent_indent="    "))
        print()
    """)

page.write()
