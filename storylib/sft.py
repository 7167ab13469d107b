"""Chapter 14 — supervised finetuning (SFT): the storyteller learns to take instructions.

The chat data is made by rules (storylib.conversations), LoRA is storylib.lora; this module joins them to
Chapter 7's trainer. There is no second training loop: `llm101n train configs/sft_lora16.toml` is storylib.train
with `data = "chat"` and `init_from = "models/storyteller"`, and the trainer asks this module for its parts.

    masked_cross_entropy   the SFT loss: mean cross-entropy over the assistant's tokens      (exercise ch14.masked_loss)
    sft_batch              (ids, mask) pairs -> x, y, y = -100 where nothing is learned      (exercise ch14.sft_batch)
    chat_examples          conversations -> one (ids, mask) per assistant turn that fits the context
    ChatSampler            the trainer's batches: the turns in a new shuffled order every epoch
    ChatValidation         response loss and bits per byte on dev conversations (it chooses best/)
    adopt_base, init_model init_from: the base model's architecture, tokenizer and weights; LoRA + freezing
    save_lora_checkpoint   a LoRA run's best/: the merged plain model (load_model reads it) + adapter/
    evaluate, evaluate_base  the rules (storylib.conversations.check_reply) on generated replies, per kind
    load_chat_model        models/storyteller-chat -> (GPT, tokenizer), its adapter merged into its base
    main                   `llm101n sft eval MODEL`: the rules' table for a model folder

How a turn is learned: render_chat gives ids and a 0/1 mask, 1 on the reply and the <|end|> closing it. The model
reads ids[:-1] and predicts ids[1:]; a prediction counts where mask[1:] is 1, so the system prompt, the user's words,
earlier replies and the role tokens are context, never targets. The loss is the mean over the counted tokens of a
batch (every response token weighs the same).

Checkpoints of a LoRA run: last/ holds the model with its LoRA layers unmerged (names `...c_attn.base.weight`,
`...c_attn.lora_A`; for --resume); best/ holds the merged plain GPT (load_model, chat, serve and export read it like
any checkpoint) and, in best/adapter/, the adapter alone (storylib.lora.save_adapter) — what ships.

Sampling (evaluation and the product, so the numbers describe what a user gets): CHAT_SAMPLING, temperature 0.8
and top-p 0.95, the storyteller's defaults since Chapter 12; evaluation fixes the seed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from storylib.chat_template import render_chat
from storylib.fastbpe import encode_ordinary
from storylib.tokenizer import EOT_TOKEN, RegexTokenizer
from storylib.train import resolve_course_path

if TYPE_CHECKING:
    from storylib.gpt2 import GPT
    from storylib.train import Run, TrainConfig

IGNORE = -100  # F.cross_entropy's ignore_index: GPT.forward does not count these targets
CHAT_SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # the storyteller's defaults; the product uses the same
MAX_REPLY_TOKENS = 480  # a reply stops at <|end|>, at this many tokens, or at the end of the context


# ----------------------------------------------------------------------------- the loss and the batch


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of `targets` under `logits` over the positions where mask == 1.

    logits (B, T, V), targets (B, T) int64, mask (B, T) of 0/1 (bool, int or float). A scalar, in the float type of
    the logits (at least float32). Raises ValueError when the mask selects no position.
    """
    if not bool((mask != 0).any()):
        raise ValueError("the mask selects no position: nothing to learn")
    ### BEGIN SOLUTION ch14.masked_loss (§14.3, 2 pts): cross_entropy(reduction="none"), summed where mask, / count
    V = logits.size(-1)
    logits = logits.reshape(-1, V)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    nll = F.cross_entropy(logits, targets.reshape(-1).clamp(min=0), reduction="none")
    m = (mask.reshape(-1) != 0).to(nll.dtype)
    return (nll * m).sum() / m.sum()
    ### END SOLUTION


def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int,
              pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One SFT batch from (ids, mask) pairs (render_chat's output), each padded to block_size.

    Row i: x[i, :n] = ids[:-1], y[i, :n] = ids[1:] where mask[1:] == 1 and -100 where it is 0 (n = len(ids) - 1);
    past n, x is pad_id and y is -100. Both (B, block_size) int64, on the CPU. GPT.forward(x, y) is then the SFT
    loss: F.cross_entropy skips the -100 targets. Raises ValueError for an example longer than block_size + 1
    ids, shorter than 2, or whose mask does not match its ids.
    """
    for i, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask) or not 2 <= len(ids) <= block_size + 1:
            raise ValueError(f"example {i}: {len(ids)} ids and {len(mask)} mask values; need equal lengths "
                             f"in 2..block_size + 1 ({block_size + 1})")
    ### BEGIN SOLUTION ch14.sft_batch (§14.5, 2 pts): x = ids[:-1]; y = ids[1:] where mask[1:] else -100; pad the rest
    x = torch.full((len(examples), block_size), pad_id, dtype=torch.int64)
    y = torch.full((len(examples), block_size), IGNORE, dtype=torch.int64)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1], dtype=torch.int64)
        learn = torch.tensor(mask[1:], dtype=torch.bool)
        y[i, :n] = torch.where(learn, torch.tensor(ids[1:], dtype=torch.int64), IGNORE)
    return x, y
    ### END SOLUTION


# ----------------------------------------------------------------------------- the trainer's data (data = "chat")


def pad_id_of(tok: RegexTokenizer) -> int:
    """The id padding is written with: <|pad|> if the tokenizer has it, else <|endoftext|> (never a target)."""
    return tok.special_tokens.get("<|pad|>", tok.special_tokens[EOT_TOKEN])


def chat_examples(conversations: Sequence[dict], tok: RegexTokenizer,
                  block_size: int) -> list[tuple[list[int], list[int], int]]:
    """(ids, mask, reply bytes) for every assistant turn that fits block_size + 1 ids (block_size predictions):
    storylib.conversations.training_examples, the turn's context windowed as serving windows it, the mask on
    that reply and its <|end|> only. reply bytes: the UTF-8 bytes of the reply's text (for bits per byte)."""
    from storylib.conversations import training_examples

    out = []
    for conv in conversations:
        for ids, mask in training_examples(conv, tok, block_size + 1):
            reply = [i for i, m in zip(ids, mask, strict=True) if m][:-1]  # the last learned id is <|end|>
            out.append((ids, mask, len(tok.decode(reply).encode("utf-8"))))
    return out


class ChatSampler:
    """Batches of whole conversations for the trainer: each epoch visits every conversation once, in an order
    drawn from (seed, epoch), so a resumed run (state_dict / load_state_dict) sees exactly the same batches.

    fixed_shape=True pads every batch to block_size (torch.compile compiles one shape); otherwise to the batch's
    longest conversation rounded up to a multiple of 64 (much faster on a CPU: most conversations are short).
    """

    def __init__(self, examples: Sequence[tuple], block_size: int, batch_size: int, pad_id: int, seed: int = 0,
                 fixed_shape: bool = True) -> None:
        if not examples:
            raise ValueError("no training conversations")
        self.examples, self.block_size, self.batch_size = list(examples), block_size, batch_size
        self.pad_id, self.seed, self.fixed_shape = pad_id, seed, fixed_shape
        self.epoch, self.pos = 0, 0

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = []
        while len(chosen) < self.batch_size:
            order = self.order(self.epoch)
            take = order[self.pos : self.pos + self.batch_size - len(chosen)]
            chosen += [self.examples[i][:2] for i in take]
            self.pos += len(take)
            if self.pos == len(order):
                self.epoch, self.pos = self.epoch + 1, 0
        T = self.block_size
        if not self.fixed_shape:
            T = min(T, 64 * math.ceil((max(len(ids) for ids, _ in chosen) - 1) / 64))
        return sft_batch(chosen, T, self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.examples), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.examples) or state.get("seed") != self.seed:
            raise ValueError(f"saved for {state.get('n')} conversations (seed {state.get('seed')}), "
                             f"now {len(self.examples)} (seed {self.seed})")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class ChatValidation:
    """Held-out conversations for the trainer's evaluations: the loss on the responses only, so best/ is the
    checkpoint that answers best, not the one that reads prompts best. `stories` are the conversations (the
    trainer counts them)."""

    def __init__(self, examples: Sequence[tuple], pad_id: int) -> None:
        self.stories = list(examples)
        self.pad_id = pad_id

    @torch.no_grad()
    def per_token_nats(self, model: GPT, examples: Sequence[tuple], batch_size: int,
                       autocast: contextlib.AbstractContextManager) -> list[torch.Tensor]:
        """For each example, the nats of its learned targets, in order (float64, on the CPU)."""
        model.eval()
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(examples), batch_size):
            chunk = [e[:2] for e in examples[i : i + batch_size]]
            x, y = sft_batch(chunk, max(len(ids) for ids, _ in chunk) - 1, self.pad_id)
            with autocast:
                logits, _ = model(x.to(device))
            nll = F.cross_entropy(logits.double().flatten(0, 1), y.to(device).flatten(), reduction="none")
            nll = nll.view(y.shape).cpu()
            out += [nll[j][y[j] != IGNORE] for j in range(len(chunk))]
        return out

    @torch.no_grad()
    def evaluate(self, model: GPT, n: int, batch_size: int, autocast: contextlib.AbstractContextManager) -> dict:
        """{"val_loss": nats per response token (masked_cross_entropy), "val_bpb": response bits per UTF-8 byte of
        the assistant texts (the <|end|> tokens' bits included), "val_stories": conversations scored}."""
        model.eval()
        device = next(model.parameters()).device
        examples = self.stories[:n]
        nats, count = 0.0, 0
        for i in range(0, len(examples), batch_size):
            chunk = [e[:2] for e in examples[i : i + batch_size]]
            x, y = sft_batch(chunk, max(len(ids) for ids, _ in chunk) - 1, self.pad_id)
            with autocast:
                logits, _ = model(x.to(device))
            learn = y != IGNORE
            nats += masked_cross_entropy(logits.double(), y.to(device), learn.to(device)).item() * int(learn.sum())
            count += int(learn.sum())
        model.train()
        n_bytes = sum(e[2] for e in examples)
        return {"val_loss": nats / count, "val_bpb": nats / math.log(2) / n_bytes, "val_stories": len(examples)}


def varied(story: str, rng: np.random.Generator, n_nouns: int = 3) -> str:
    """A copy of a story the base model has not memorized: its named character renamed and up to n_nouns of its
    storylib.conversations.NOUNS swapped for others (by its rename and replace_word). A create request made from
    it asks for words and a name that memory cannot supply: the model must take them from the request."""
    from storylib.conversations import BOY_NAMES, GIRL_NAMES, NOUNS, _renamable, rename, replace_word, words_of

    name = _renamable(story)
    if name:
        group = GIRL_NAMES if name in GIRL_NAMES else BOY_NAMES if name in BOY_NAMES else GIRL_NAMES + BOY_NAMES
        story = rename(story, name, str(rng.choice([n for n in group if n != name])))
    present = sorted(set(words_of(story)) & set(NOUNS))
    for old in rng.permutation(present)[:n_nouns]:
        story = replace_word(story, str(old), str(rng.choice([n for n in NOUNS if n not in present])))
    return story


def chat_data(cfg: TrainConfig, tok: RegexTokenizer, quiet: bool = False) -> tuple[ChatSampler, ChatValidation]:
    """The trainer's sampler and validation for data = "chat": conversations made by rules from the training
    stories (n_train_stories of them; 0: all), split by story into train and a small dev set
    (storylib.conversations.split_conversations, seed 0, never the run's seed); with chat_seeds = n > 1, n - 1
    more conversations per training story, from `varied` copies of it (seeds 1..n-1)."""
    from storylib.conversations import build_conversations, split_conversations, story_id
    from storylib.train import load_stories_for, say

    stories = load_stories_for(cfg, "train")
    train_convs, dev_convs = split_conversations(stories, seed=0)
    train_ids = {c["story_id"] for c in train_convs}
    for seed in range(1, cfg.chat_seeds):  # varied copies of the training stories (never of dev's)
        rng = np.random.default_rng(seed)
        train_convs += build_conversations([varied(s, rng) for s in stories if story_id(s) in train_ids], seed)
    pad = pad_id_of(tok)
    train_ex = chat_examples(train_convs, tok, cfg.block_size)
    if cfg.max_chat_tokens:
        train_ex = [e for e in train_ex if len(e[0]) <= cfg.max_chat_tokens]
    dev_ex = chat_examples(dev_convs, tok, cfg.block_size)
    say(f"chat data: {len(train_convs):,} training conversations ({len(train_ex):,} assistant turns), "
        f"{len(dev_convs):,} dev conversations ({len(dev_ex):,} turns); {sum(len(e[0]) for e in train_ex):,} "
        f"tokens, {sum(sum(e[1]) for e in train_ex):,} of them learned", quiet)
    return (ChatSampler(train_ex, cfg.block_size, cfg.batch_size, pad, seed=cfg.seed, fixed_shape=cfg.compile),
            ChatValidation(dev_ex, pad))


# ----------------------------------------------------------------------------- init_from and LoRA


def adopt_base(cfg: TrainConfig) -> TrainConfig:
    """cfg with the architecture (n_layer, n_head, n_embd, block_size, bias, vocab_size) and the tokenizer of
    its init_from model folder, as nanoGPT's init_from does; dropout and everything else stay the config's.
    Raises ConfigError if the folder is not a model."""
    from storylib.checkpoint import CheckpointError, read_checkpoint
    from storylib.train import ConfigError

    path = resolve_course_path(cfg.init_from)
    try:
        model = read_checkpoint(path).config["model"]
    except CheckpointError as e:
        raise ConfigError(f"init_from = {cfg.init_from!r}: {e}") from None
    keep = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
    return replace(cfg, **{k: model[k] for k in keep}, tokenizer=str(path / "tokenizer.json")).validate()


def lora_targets(cfg: TrainConfig) -> tuple[str, ...]:
    return tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())


CHAT_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")  # never seen by the base model


def chat_token_rows(tok: RegexTokenizer) -> list[int]:
    """The ids of the chat template's role tokens: their embedding rows are still random in the base model."""
    return [tok.special_tokens[t] for t in CHAT_ROLES]


def train_rows_only(embedding: torch.nn.Embedding, rows: Sequence[int]) -> None:
    """Make the embedding trainable in `rows` only: a gradient hook zeroes every other row's gradient, so AdamW
    (with no weight decay on it) leaves them exactly as they were."""
    keep = torch.zeros(embedding.weight.shape[0], 1, device=embedding.weight.device)
    keep[list(rows)] = 1.0
    embedding.weight.requires_grad_(True)
    embedding.weight.register_hook(lambda grad: grad * keep.to(grad.dtype))


def init_model(cfg: TrainConfig, model: GPT, tok: RegexTokenizer, quiet: bool = False) -> GPT:
    """The base model's weights into `model` (built from adopt_base's config); with lora_rank > 0, LoRA adapters
    injected into lora_targets and everything else frozen (the trainer's AdamW then holds the adapters only) but
    the embedding rows of the chat role tokens (chat_token_rows): the base model never saw <|end|>, and a frozen
    random row cannot be learned to be predicted (measured: LoRA replies then never end). Set weight_decay = 0:
    AdamW would otherwise shrink the frozen rows of the (tied) embedding."""
    from storylib.checkpoint import load_weights, read_checkpoint
    from storylib.lora import count_parameters, inject_lora
    from storylib.train import say

    device = next(model.parameters()).device
    load_weights(model, read_checkpoint(resolve_course_path(cfg.init_from)))
    if cfg.lora_rank:
        names = inject_lora(model, targets=lora_targets(cfg), r=cfg.lora_rank, alpha=cfg.lora_alpha)  # and freezes
        train_rows_only(model.transformer.wte, chat_token_rows(tok))
        model.to(device)
        trainable = count_parameters(model)[0] - model.transformer.wte.weight.numel() + len(CHAT_ROLES) * cfg.n_embd
        total = count_parameters(model)[1]
        say(f"LoRA r={cfg.lora_rank}, alpha={cfg.lora_alpha:g} in {len(names)} layers, and the embeddings of "
            f"{', '.join(CHAT_ROLES)}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%)", quiet)
    return model


def plain_copy(model: GPT) -> GPT:
    """A copy of a LoRA model with the adapters merged into the weights and the LoRALinear wrappers gone
    (storylib.lora.remove_lora): a plain GPT that storylib.checkpoint saves and loads like any other."""
    from storylib.lora import remove_lora

    out = copy.deepcopy(model)
    remove_lora(out)
    return out


def adapter_config(cfg: TrainConfig) -> dict[str, Any]:
    """What load_chat_model needs to rebuild the model: the base folder and the LoRA settings."""
    return {"base_model": cfg.init_from, "r": cfg.lora_rank, "alpha": cfg.lora_alpha,
            "targets": list(lora_targets(cfg))}


def save_lora_checkpoint(run: Run, name: str, trainer: dict[str, Any]) -> Path:
    """A LoRA run's best/: model.safetensors is the merged plain model (storylib.checkpoint.load_model, chat,
    serve and export read it as they read any checkpoint); adapter/ holds the adapter alone (storylib.lora's
    files, its own checksums), which is what ships. last/ keeps the LoRA weights unmerged (for --resume)."""
    from storylib.checkpoint import save_checkpoint
    from storylib.lora import save_adapter

    path = save_checkpoint(run.out_dir / name, plain_copy(run.model), run.cfg, run.tok, run.tok_id, trainer)
    adapter = save_adapter(run.model, path / "adapter", adapter_config(run.cfg),
                           base_dir=resolve_course_path(run.cfg.init_from))
    save_token_rows(run.model, chat_token_rows(run.tok), adapter)
    return path


TOKEN_ROWS = "token_rows.safetensors"  # beside the adapter: the trained embedding rows of the chat role tokens


def save_token_rows(model: GPT, rows: Sequence[int], adapter: Path) -> None:
    """Add the embedding rows `rows` to an adapter folder (TOKEN_ROWS, listed in its SHA256SUMS)."""
    from safetensors.torch import save

    from storylib.checkpoint import write_file_atomic

    tensors = {"ids": torch.tensor(list(rows)), "rows": model.transformer.wte.weight[list(rows)].detach().cpu().half()}
    digest = write_file_atomic(adapter / TOKEN_ROWS, save(tensors))
    with open(adapter / "SHA256SUMS", "a", encoding="utf-8") as f:
        f.write(f"{digest}  {TOKEN_ROWS}\n")


def load_token_rows(model: GPT, adapter: Path) -> None:
    """Copy an adapter folder's TOKEN_ROWS (if any; read_adapter has checked it) into the model's embedding."""
    from safetensors.torch import load_file

    if (adapter / TOKEN_ROWS).exists():
        t = load_file(adapter / TOKEN_ROWS)
        with torch.no_grad():
            model.transformer.wte.weight[t["ids"]] = t["rows"].to(model.transformer.wte.weight.dtype)


# ----------------------------------------------------------------------------- evaluation by rules


def chat_stop_ids(tok: RegexTokenizer) -> list[int]:
    """Generation stops at <|end|>: the model closes its reply (a reply cut by the token limit did not)."""
    return [tok.special_tokens["<|end|>"]]


@torch.no_grad()
def generate_replies(model: GPT, prompts: Sequence[Sequence[int]], stop_ids: Sequence[int], *,
                     max_new_tokens: int = MAX_REPLY_TOKENS, batch_size: int = 64, seed: int = 0,
                     pad_id: int = 0, **sampling: Any) -> list[tuple[list[int], bool]]:
    """(new ids, stopped) for each prompt, with the KV cache (storylib.kvcache.generate_batch) in batches of
    prompts of similar length; a reply gets at most min(max_new_tokens, block_size - the batch's longest prompt)
    tokens. stopped: a stop id ended it (not the limit). Batch b is sampled with seed + b (reproducible)."""
    from storylib.kvcache import generate_batch

    sampling = {**CHAT_SAMPLING, **sampling}
    block = model.config.block_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        room = min(max_new_tokens, block - max(len(prompts[i]) for i in rows))
        if room < 1:
            raise ValueError(f"a prompt of {max(len(prompts[i]) for i in rows)} tokens leaves no room in {block}")
        new = generate_batch(model, [prompts[i] for i in rows], room, stop_ids=stop_ids, pad_id=pad_id,
                             seed=seed + b, **sampling)
        for i, ids in zip(rows, new, strict=True):
            out[i] = (ids, len(ids) < room)
    return out


def turn_tasks(conversations: Sequence[dict], tok: RegexTokenizer, block_size: int) -> list[dict]:
    """Every assistant turn of the conversations as an evaluation task: {"conversation", "turn", "spec",
    "previous" (the story the request refers to), "prompt" (ids ending with <|assistant|>), "ids", "mask" (the
    gold reply learned, as in training)}. The prompt is the GOLD history (earlier replies are the dataset's, not
    the model's), windowed with the gold reply to block_size + 1 ids by fit_conversation exactly as training
    windows it; a turn that cannot fit is left out."""
    from storylib.conversations import assistant_turns, fit_conversation

    tasks = []
    for ci, conv in enumerate(conversations):
        for t, turn in enumerate(assistant_turns(conv)):
            messages = [*turn["messages"], {"role": "assistant", "content": turn["target"]}]
            try:
                window = fit_conversation(messages, tok, block_size + 1)
            except ValueError:
                continue
            ids, _ = render_chat(window, tok)
            prompt, _ = render_chat(window[:-1], tok, add_generation_prompt=True)
            tasks.append({"conversation": ci, "turn": t, "spec": turn["spec"], "previous": turn["previous"],
                          "prompt": prompt, "ids": ids, "mask": [0] * len(prompt) + [1] * (len(ids) - len(prompt))})
    return tasks


def response_bits(model: GPT, tok: RegexTokenizer, tasks: Sequence[dict], batch_size: int = 32) -> list[float]:
    """The bits the model spends on each task's gold reply (its <|end|> included), read as in training."""
    examples = [(t["ids"], t["mask"]) for t in tasks]
    nats = ChatValidation(examples, pad_id_of(tok)).per_token_nats(model, examples, batch_size,
                                                                    contextlib.nullcontext())
    return [float(n.sum()) / math.log(2) for n in nats]


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """Per kind, the mean of every rule metric over the turns it applies to (None: not asked, left out), of
    ends_with_end, and the response bits per byte (total bits / total bytes); "counts": turns per kind."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for k, v in {**r["checks"], "ends_with_end": r["ends_with_end"], "_bits": r["bits"],
                     "_bytes": r["bytes"]}.items():
            if isinstance(v, (bool, int, float)):
                values[r["kind"]][k].append(float(v))
    out: dict[str, Any] = {"counts": {k: sum(r["kind"] == k for r in records) for k in sorted(values)}}
    for kind, vals in sorted(values.items()):
        out[kind] = {k: sum(v) / len(v) for k, v in sorted(vals.items()) if not k.startswith("_")}
        out[kind]["response_bpb"] = sum(vals["_bits"]) / max(sum(vals["_bytes"]), 1)
    return out


# the table's numbers: (name, kind, check_reply key): the mean of that key over that kind's turns
HEADLINE = (
    ("create_all_words", "create", "all_words"), ("create_word_recall", "create", "word_recall"),
    ("character", "create", "character"), ("dialogue_when_asked", "create", "dialogue"),
    ("happy_when_asked", "create", "happy"), ("n_sentences_ok", "create", "n_sentences_ok"),
    ("rename_done", "rename", "rename_done"), ("old_name_gone", "rename", "old_gone"),
    ("title_ok", "title", "title_ok"), ("shorten_ok", "shorten", "sentences_ok"),
    ("change_word_ok", "change_word", "word_changed"), ("moral_ok", "moral", "has_moral"),
    ("continue_ok", "continue", "continues"),
)


def headline(by_kind: dict[str, Any], records: Sequence[dict]) -> dict[str, float | None]:
    """The table's numbers from summarize's output, over all turns for the last three; None: n/a."""
    out: dict[str, float | None] = {name: by_kind.get(kind, {}).get(key) for name, kind, key in HEADLINE}
    ends = [float(r["ends_with_end"]) for r in records if r["ends_with_end"] is not None]
    out["ends_with_end"] = sum(ends) / len(ends) if ends else None
    out["repeated_ngram_rate"] = sum(r["checks"]["repeated_ngram_rate"] for r in records) / max(len(records), 1)
    out["response_bpb"] = sum(r["bits"] for r in records) / max(sum(r["bytes"] for r in records), 1)
    return out


def plain_bpb(model: GPT, tok: RegexTokenizer, stories: Sequence[str], batch_size: int = 32) -> float:
    """Chapter 7's validation bits per byte of plain stories (storylib.train.Validation)."""
    from storylib.train import Validation

    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    bpb = Validation(list(stories), tok).evaluate(model, len(stories), batch_size, autocast)["val_bpb"]
    model.eval()
    return bpb


def _records(tok: RegexTokenizer, tasks: Sequence[dict], replies: Sequence[tuple[list[int], bool]],
             bits: Sequence[float], chat: bool, openings: Sequence[str] | None = None) -> list[dict]:
    """One record per task: the reply's text (a base model's: the opening + its continuation) and its checks."""
    from storylib.conversations import check_reply

    out = []
    for n, (task, (ids, stopped), b) in enumerate(zip(tasks, replies, bits, strict=True)):
        text = (openings[n] if openings else "") + tok.decode([i for i in ids if i < tok.n_vocab])  # not padding ids
        reply_bytes = len(tok.decode([i for i, m in zip(task["ids"], task["mask"], strict=True) if m][:-1]).encode())
        out.append({"conversation": task["conversation"], "turn": task["turn"], "kind": task["spec"]["kind"],
                    "reply": text, "checks": check_reply(task["spec"], text, task["previous"]),
                    "ends_with_end": stopped if chat else None, "bits": b, "bytes": reply_bytes})
    return out


@torch.no_grad()
def evaluate(model: GPT, tok: RegexTokenizer, conversations: Sequence[dict], *, plain_stories: Sequence[str] = (),
             max_new_tokens: int = MAX_REPLY_TOKENS, batch_size: int = 64, seed: int = 0, **sampling: Any) -> dict:
    """The chat model on held-out conversations, by rules: every assistant turn (turn_tasks: after the gold
    history) is generated with the KV cache (CHAT_SAMPLING unless `sampling` says otherwise, seeded), stops at
    <|end|> or the limit, and is checked by storylib.conversations.check_reply against its spec and the story
    it refers to; the gold reply's bits per byte is measured as in training.

    Returns {"metrics": the table's numbers (headline; "plain_val_bpb" given plain_stories), "by_kind": every
    metric's mean per kind, with "counts", "n_conversations", "n_turns", "sampling", "records": each turn's
    reply, checks, ends_with_end and the gold reply's bits and bytes}.
    """
    model.eval()
    tasks = turn_tasks(conversations, tok, model.config.block_size)
    replies = generate_replies(model, [t["prompt"] for t in tasks], chat_stop_ids(tok), max_new_tokens=max_new_tokens,
                               batch_size=batch_size, seed=seed, pad_id=pad_id_of(tok), **sampling)
    records = _records(tok, tasks, replies, response_bits(model, tok, tasks), chat=True)
    return _result(model, tok, conversations, records, plain_stories, {**sampling, "max_new_tokens": max_new_tokens})


@torch.no_grad()
def evaluate_base(model: GPT, tok: RegexTokenizer, conversations: Sequence[dict], *,
                  plain_stories: Sequence[str] = (), max_new_tokens: int = MAX_REPLY_TOKENS, batch_size: int = 64,
                  seed: int = 0, **sampling: Any) -> dict:
    """The base model, the baseline. It cannot be asked, only prompted: each create request becomes a plain story
    opening (storylib.conversations.story_prompt(spec), after <|endoftext|>) that it continues until
    <|endoftext|>; the reply checked is the opening + the continuation, by the same rules. Refinements have no
    plain-text form (n/a), nor has ends_with_end (stories end with <|endoftext|>, not <|end|>). response_bpb:
    the base model reading every gold reply in the chat template. Same keys as evaluate."""
    from storylib.conversations import story_prompt

    model.eval()
    eot = tok.special_tokens[EOT_TOKEN]
    tasks = turn_tasks(conversations, tok, model.config.block_size)
    bits = response_bits(model, tok, tasks)
    create = [n for n, t in enumerate(tasks) if t["spec"]["kind"] == "create"]
    openings = [story_prompt(tasks[n]["spec"]) for n in create]
    replies = generate_replies(model, [[eot, *encode_ordinary(tok, o)] for o in openings], [eot],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, pad_id=eot, **sampling)
    records = _records(tok, [tasks[n] for n in create], replies, [bits[n] for n in create], False, openings)
    result = _result(model, tok, conversations, records, plain_stories, {**sampling, "max_new_tokens": max_new_tokens})
    result["metrics"]["response_bpb"] = sum(bits) / sum(
        len(tok.decode([i for i, m in zip(t["ids"], t["mask"], strict=True) if m][:-1]).encode()) for t in tasks)
    return result


def _result(model: GPT, tok: RegexTokenizer, conversations: Sequence[dict], records: list[dict],
            plain_stories: Sequence[str], sampling: dict) -> dict:
    by_kind = summarize(records)
    metrics = headline(by_kind, records)
    if plain_stories:
        metrics["plain_val_bpb"] = plain_bpb(model, tok, plain_stories)
    return {"metrics": metrics, "by_kind": by_kind, "n_conversations": len(conversations), "n_turns": len(records),
            "sampling": {**CHAT_SAMPLING, **sampling}, "records": records}


# ----------------------------------------------------------------------------- the chat model


# The chat model the product runs: Chapter 15's (DPO on top of Chapter 14's; bench/results/rl_h100.json) where the
# course has it, else Chapter 14's
CHAT_MODELS = ("models/storyteller-rl", "models/storyteller-chat")


def default_chat_folder() -> str:
    """The first of CHAT_MODELS that exists (here or in the course), else Chapter 14's name."""
    return next((name for name in CHAT_MODELS if resolve_course_path(name).exists()), CHAT_MODELS[-1])


def load_chat_model(path: str | Path | None = None, device: str | torch.device = "cpu",
                    ) -> tuple[GPT, RegexTokenizer]:
    """(model, tokenizer) of a chat model folder (default: default_chat_folder()), in eval mode on `device`:
      - an adapter (adapter_config.json, storylib.lora's files): its base model (config "base_model", e.g.
        models/storyteller; relative paths are tried beside the folder's parent, then as course files) is loaded,
        the adapter injected and loaded with storylib.lora, the chat role tokens' embedding rows put in
        (TOKEN_ROWS, when the folder has them), then merged (a plain GPT again, as fast as the base); a base that
        is itself an adapter folder (Chapter 15's RL adapter on models/storyteller-chat) is loaded by this
        function first, merged, and the adapter goes on top;
      - a full model (config.json, model.safetensors: a full finetune, or a LoRA run's best/): loaded as is.
    Raises CheckpointError saying what is missing or does not fit.
    """
    from storylib.checkpoint import CheckpointError, load_model
    from storylib.lora import load_adapter, read_adapter, remove_lora

    path = resolve_course_path(str(path or default_chat_folder()))
    if (path / "adapter_config.json").exists():
        doc, _ = read_adapter(path)
        base_name = doc.get("config", {}).get("base_model") or doc["base"].get("path")
        if not base_name:
            raise CheckpointError(f"{path / 'adapter_config.json'}: names no base model (config.base_model)")
        base = Path(base_name)
        if not base.is_absolute() and not base.exists():
            beside = path.parent.parent / base_name  # models/storyteller-chat names models/storyteller
            base = beside if beside.exists() else resolve_course_path(base_name)
        if base.resolve() == path.resolve():
            raise CheckpointError(f"{path / 'adapter_config.json'}: names itself as its base model")
        if (base / "adapter_config.json").exists():  # an adapter on a chat model (Chapter 15's RL adapter)
            model, tok = load_chat_model(base)
            load_adapter(model, path)
        else:
            model, tok = load_model(base)
            load_adapter(model, path, base_dir=base)
        load_token_rows(model, path)
        remove_lora(model)
        return model.to(device).eval(), tok
    if (path / "config.json").exists():
        return load_model(path, device=device)
    raise CheckpointError(f"{path}: neither an adapter (adapter_config.json) nor a model (config.json)")


# ----------------------------------------------------------------------------- command line


def format_table(runs: dict[str, dict]) -> str:
    """The metrics of several evaluations side by side (n/a where a metric does not apply)."""
    names = list(dict.fromkeys(k for r in runs.values() for k in r["metrics"]))
    lines = [f"{'metric':<22}" + "".join(f"{n:>12}" for n in runs)]
    for k in names:
        cells = [r["metrics"].get(k) for r in runs.values()]
        lines.append(f"{k:<22}" + "".join(f"{'n/a' if v is None else f'{v:.3f}':>12}" for v in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`llm101n sft eval [MODEL ...] [--n N] [--base]`: the rules' table on held-out conversations made from the
    first N validation stories (MODEL: a chat model folder or checkpoint; default models/storyteller-chat)."""
    p = argparse.ArgumentParser(prog="llm101n sft", description="Evaluate chat models by rules (storylib.sft).")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="the rules' table on held-out conversations")
    e.add_argument("models", nargs="*", default=["models/storyteller-chat"])
    e.add_argument("--base", default=None, help="also the base model prompted with story openings, e.g. "
                   "models/storyteller")
    e.add_argument("--n", type=int, default=100, help="held-out conversations (from the validation stories)")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--json", help="write the full results (every reply) to this file")
    args = p.parse_args(argv)
    from storylib.checkpoint import CheckpointError, load_model
    from storylib.conversations import build_conversations
    from storylib.data import load_stories

    heldout = build_conversations(load_stories("valid", limit=args.n), seed=0)
    runs = {}
    try:
        if args.base:
            model, tok = load_model(resolve_course_path(args.base), device=args.device)
            runs["base"] = evaluate_base(model, tok, heldout)
        for name in args.models:
            model, tok = load_chat_model(name, device=args.device)
            runs[Path(name).name] = evaluate(model, tok, heldout)
    except CheckpointError as err:
        print(f"llm101n sft: {err}", file=sys.stderr)
        return 2
    print(format_table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
