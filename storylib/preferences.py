"""Chapter 15 §15.1 — preferences made by rules: a programmatic reward, sampled replies, (chosen, rejected) pairs.

Chapter 14's rules (storylib.conversations.check_reply) grade a reply; here they become one number, the
*programmatic reward*, in [0, 1]: a weighted mean of the rule terms that apply to the request (REWARD_WEIGHTS),
1.0 when every rule is met. For each training prompt the SFT model samples k replies (seeded); the reward ranks
them, and the best and the worst become a preference pair when their rewards differ by at least min_gap.

    reward            one reply -> {"total", "terms"}: the rules of its request, stopping, length, repetition
    rl_tasks          sft.turn_tasks + the (windowed) messages of each prompt: what a pair file stores
    generate_bucketed storylib.sft.generate_replies on prompts grouped by length (no reply cut by a long neighbour)
    sample_replies    k seeded replies per task with the KV cache
    score_replies     the reward of every sampled reply
    make_pairs        (chosen, rejected) per task from the scores; ties and near-ties dropped
    save_pairs, load_pairs
                      the JSONL file format the chapter trains on and `llm101n prefs export` writes

A pair is {"messages": the conversation up to and including the user's request, "chosen", "rejected" (the two
replies' texts), "source": "rules" | "web" | "widget" | ..., optional "scores": {"chosen", "rejected"}, optional
"spec": the request's spec, optional "stopped": {"chosen", "rejected"} (whether each reply closed itself with
<|end|>; absent means it did)}.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storylib.conversations import check_reply, words_of

if TYPE_CHECKING:
    from storylib.gpt2 import GPT
    from storylib.tokenizer import RegexTokenizer

# The reward's terms and their weights: total = Σ w·term / Σ w over the terms that apply to the request. The
# request's own rules weigh most (the requested words 2, each other asked feature 1; a refinement's check 3); the
# three terms every reply gets are its form: it stops by itself, its length is in the window, it does not repeat.
REWARD_WEIGHTS = {
    "word_recall": 2.0, "character": 1.0, "dialogue": 1.0, "happy": 1.0, "n_sentences": 1.0,  # create
    "refine": 3.0,  # rename_done, title_ok, continues, sentences_ok, word_changed, has_moral
    "stop": 1.0, "length": 1.0, "repetition": 1.0,
}
# The length window per kind, in words (None: the kind's rule already fixes the length); outside it the term
# falls linearly: n / lo below, 1 - (n - hi) / hi above (0 at twice the maximum)
LENGTH_WINDOW = {"create": (40, 250), "continue": (20, 250), "rename": (20, 300), "change_word": (20, 300),
                 "moral": (20, 320), "shorten": None, "title": None}
REPEAT_SLOPE = 2.0  # repetition term = 1 - REPEAT_SLOPE · repeated 4-gram rate (0 when half the 4-grams repeat)
REFINE_CHECK = {"rename": "rename_done", "title": "title_ok", "continue": "continues", "shorten": "sentences_ok",
                "change_word": "word_changed", "moral": "has_moral"}
PAIR_KEYS = ("messages", "chosen", "rejected", "source")


def length_term(n_words: int, window: tuple[int, int]) -> float:
    """1 inside [lo, hi]; n / lo below it; 1 - (n - hi) / hi above it, never below 0."""
    lo, hi = window
    if n_words < lo:
        return n_words / lo
    return max(0.0, 1.0 - (n_words - hi) / hi) if n_words > hi else 1.0


def reward(spec: dict, reply: str, stopped: bool, previous: str | None = None) -> dict[str, Any]:
    """The programmatic reward of one reply to the request `spec` (Chapter 14's spec; `previous`: the story a
    refinement refers to, needed for "continue"). stopped: the reply ended with <|end|> (not the token limit).

    Terms in [0, 1], only those that apply: create — word_recall (fraction of the requested words), character,
    dialogue, happy, n_sentences (each when asked); a refinement — refine (its check_reply rule); every reply —
    stop, length (LENGTH_WINDOW of its kind, if any), repetition (1 - REPEAT_SLOPE · repeated 4-gram rate).
    Returns {"total": Σ w·term / Σ w with REWARD_WEIGHTS, in [0, 1], 1.0 when every rule is met, "terms"}.
    """
    checks = check_reply(spec, reply, previous)
    kind = spec["kind"]
    terms: dict[str, float] = {}
    if kind == "create":
        for term, key in (("word_recall", "word_recall"), ("character", "character"), ("dialogue", "dialogue"),
                          ("happy", "happy"), ("n_sentences", "n_sentences_ok")):
            if checks[key] is not None:
                terms[term] = float(checks[key])
    else:
        terms["refine"] = float(checks[REFINE_CHECK[kind]])
    terms["stop"] = float(bool(stopped))
    if LENGTH_WINDOW.get(kind):
        terms["length"] = length_term(len(words_of(reply)), LENGTH_WINDOW[kind])
    terms["repetition"] = max(0.0, 1.0 - REPEAT_SLOPE * checks["repeated_ngram_rate"])
    total = sum(REWARD_WEIGHTS[k] * v for k, v in terms.items()) / sum(REWARD_WEIGHTS[k] for k in terms)
    return {"total": total, "terms": terms}


# ----------------------------------------------------------------------------- prompts and samples


def rl_tasks(conversations: Sequence[dict], tok: RegexTokenizer, block_size: int) -> list[dict]:
    """storylib.sft.turn_tasks (every assistant turn after its gold history, windowed as training windows it),
    each with "messages": the windowed conversation up to the request (render_chat of it with the generation
    prompt is the task's "prompt")."""
    from storylib.conversations import assistant_turns, fit_conversation
    from storylib.sft import turn_tasks

    tasks = turn_tasks(conversations, tok, block_size)
    for t in tasks:
        turn = assistant_turns(conversations[t["conversation"]])[t["turn"]]
        window = fit_conversation([*turn["messages"], {"role": "assistant", "content": turn["target"]}], tok,
                                  block_size + 1)
        t["messages"] = window[:-1]
    return tasks


def generate_bucketed(model: GPT, tok: RegexTokenizer, prompts: Sequence[Sequence[int]], seed: int = 0,
                      max_new_tokens: int | None = None, batch_size: int = 128, bucket: int = 128,
                      **sampling: Any) -> list[tuple[list[int], bool]]:
    """(new ids, stopped) per prompt from storylib.sft.generate_replies (the KV cache; CHAT_SAMPLING unless
    `sampling` says otherwise), the prompts grouped by length in buckets of `bucket` tokens (1..128, 129..256,
    ...), one call each (seed + 7919 · bucket): a batch's replies get at most block_size - its longest prompt
    tokens, so a short request never shares a batch with a long one that would cut its reply."""
    from storylib import sft

    kw = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((len(p) - 1) // bucket, []).append(i)
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    for g, rows in sorted(groups.items()):
        new = sft.generate_replies(model, [prompts[i] for i in rows], sft.chat_stop_ids(tok), batch_size=batch_size,
                                   seed=seed + 7919 * g, pad_id=sft.pad_id_of(tok), **kw, **sampling)
        for i, r in zip(rows, new, strict=True):
            out[i] = r
    return out


def sample_replies(model: GPT, tok: RegexTokenizer, tasks: Sequence[dict], k: int, seed: int = 0, *,
                   batch_size: int = 128, max_new_tokens: int | None = None, **sampling: Any) -> list[list[dict]]:
    """k replies per task, [{"ids", "text", "stopped"} × k] per task, sampled by generate_bucketed (the KV cache,
    CHAT_SAMPLING unless `sampling` says otherwise) in batches of batch_size; the same (model, tasks, k, seed)
    give the same replies."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    prompts = [t["prompt"] for t in tasks for _ in range(k)]
    out = generate_bucketed(model, tok, prompts, seed, max_new_tokens, batch_size, **sampling)
    replies = [{"ids": ids, "text": tok.decode([i for i in ids if i < tok.n_vocab]), "stopped": stopped}
               for ids, stopped in out]
    return [replies[i * k:(i + 1) * k] for i in range(len(tasks))]


def score_replies(tasks: Sequence[dict], replies: Sequence[Sequence[dict]]) -> list[list[float]]:
    """The programmatic reward (total) of each sampled reply, in the shape of `replies`."""
    return [[reward(t["spec"], r["text"], r["stopped"], t["previous"])["total"] for r in rs]
            for t, rs in zip(tasks, replies, strict=True)]


def make_pairs(tasks: Sequence[dict], replies: Sequence[Sequence[dict]], scores: Sequence[Sequence[float]],
               min_gap: float = 0.05, all_pairs: bool = False) -> list[dict]:
    """Preference pairs from scored replies: per task the best reply (chosen) against the worst (rejected), or
    with all_pairs every two replies whose rewards differ by at least min_gap. Pairs closer than min_gap (ties)
    and identical texts are dropped. Each pair in the file format (source "rules", with scores, spec, stopped)."""
    out = []
    for task, rs, ss in zip(tasks, replies, scores, strict=True):
        order = sorted(range(len(rs)), key=lambda j: -ss[j])  # stable: the first sampled wins a tie
        cands = [(a, b) for n, a in enumerate(order) for b in order[n + 1:]] if all_pairs else [(order[0], order[-1])]
        for a, b in cands:
            if ss[a] - ss[b] < min_gap or rs[a]["text"] == rs[b]["text"]:
                continue
            out.append({"messages": task["messages"], "chosen": rs[a]["text"], "rejected": rs[b]["text"],
                        "source": "rules", "scores": {"chosen": ss[a], "rejected": ss[b]}, "spec": task["spec"],
                        "stopped": {"chosen": rs[a]["stopped"], "rejected": rs[b]["stopped"]}})
    return out


# ----------------------------------------------------------------------------- the pair file


def check_pair(pair: Any) -> None:
    """ValueError saying what is wrong with a pair (see the module docstring for the format)."""
    if not isinstance(pair, dict):
        raise ValueError(f"a pair is a JSON object, got {type(pair).__name__}")
    missing = [k for k in PAIR_KEYS if k not in pair]
    if missing:
        raise ValueError(f"missing keys {missing}")
    msgs = pair["messages"]
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in msgs):
        raise ValueError("messages must be a non-empty list of {role: system|user|assistant, content: str}")
    if msgs[-1]["role"] != "user":
        raise ValueError("messages must end with the user's request")
    for k in ("chosen", "rejected", "source"):
        if not isinstance(pair[k], str):
            raise ValueError(f"{k!r} must be a string")
    for k in ("scores", "stopped"):
        if k in pair and not (isinstance(pair[k], dict) and {"chosen", "rejected"} <= set(pair[k])):
            raise ValueError(f"{k!r} must be {{'chosen': ..., 'rejected': ...}}")


def save_pairs(path: str | Path, pairs: Sequence[dict]) -> Path:
    """Write pairs as JSONL (one per line, checked first: a bad pair raises ValueError and nothing is written),
    gzip-compressed when the name ends with .gz."""
    for i, p in enumerate(pairs):
        try:
            check_pair(p)
        except ValueError as e:
            raise ValueError(f"pair {i}: {e}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs).encode()
    tmp.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    tmp.replace(path)
    return path


def load_pairs(path: str | Path) -> list[dict]:
    """The pairs of a JSONL file (.gz: compressed; blank lines skipped). Raises ValueError naming the file and
    line of a line that is not JSON or not a valid pair."""
    out = []
    data = Path(path).read_bytes()
    text = (gzip.decompress(data) if Path(path).suffix == ".gz" else data).decode("utf-8")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pair = json.loads(line)
            check_pair(pair)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{n}: not a valid preference pair: {e}") from None
        out.append(pair)
    return out
