"""Training the storyteller, written to be read from top to bottom (in the spirit of nanoGPT's train.py).

    llm101n train configs/cpu_learner.toml               train from scratch (or: python -m storylib.train ...)
    llm101n train configs/cpu_learner.toml --resume      continue from <out_dir>/last, exactly
    llm101n train CONFIG --set lr=3e-4 --max-steps 200   change a setting for this run
    llm101n train export RUN/best OUT                    a compact fp16 model for chatting and serving
    llm101n train configs/sft_lora16.toml                Chapter 14: SFT of a trained model (data = "chat",
                                                         init_from, LoRA; the parts are storylib.sft's)

The parts, in the order a run uses them:

    TrainConfig, load_config   every knob, read from a TOML file (configs/*.toml); an unknown key is an error
    load_tokenizer, prepare_data   stories -> one uint16 token stream (storylib.datasets), cached on disk
    Validation                 validation loss and bits per byte (storylib.gpt2.bits_per_byte)
    RunState, setup            what a run is made of, built fresh or restored from <out_dir>/last
    train_step, evaluate, checkpoint   one optimizer step; an evaluation (which saves best/); a save
    train                      the loop: random windows, gradient accumulation, clipping, warmup + cosine,
                               bf16 autocast, torch.compile and fused AdamW on a GPU; exact resume on a CPU;
                               speed options: fp8, loss_chunks (storylib.precision), compile_mode

The checkpoint folders themselves (safetensors + JSON + SHA256SUMS, written atomically, never unpickled) and
loading a trained model for chatting and serving are storylib.checkpoint's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import difflib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from storylib.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_resumable,
    export_model,
    find_checkpoint,
    load_optimizer,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    tokenizer_json,
    write_file_atomic,
)
from storylib.gpt2 import GPT, GPTConfig, bits_per_byte
from storylib.mlp import warmup_cosine_lr
from storylib.optim import BatchedMuon, MuonAdamW, muon_param_groups, param_groups
from storylib.precision import float8_linears, fp8_supported, fused_loss
from storylib.tokenizer import EOT_TOKEN, RegexTokenizer, eot_id

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from storylib.datasets import WindowSampler


class ConfigError(ValueError):
    """A training config that cannot be used: an unknown key, a wrong type, an impossible value."""


# ----------------------------------------------------------------------------- the config


def _f(default: Any, group: str, help: str) -> Any:
    return field(default=default, metadata={"group": group, "help": help})


@dataclass
class TrainConfig:
    """Everything a training run needs. A TOML file sets any of these, at the top level or in its [group]."""

    # [model] the transformer (storylib.gpt2.GPTConfig)
    n_layer: int = _f(6, "model", "transformer blocks")
    n_head: int = _f(6, "model", "attention heads per block")
    n_embd: int = _f(288, "model", "width of the residual stream")
    block_size: int = _f(256, "model", "context length in tokens")
    dropout: float = _f(0.0, "model", "dropout probability while training")
    bias: bool = _f(True, "model", "biases in Linear layers and LayerNorms")
    fused: bool = _f(True, "model", "PyTorch's LayerNorm and attention kernels instead of the hand-written ones")
    vocab_size: int = _f(0, "model", "0: the tokenizer's n_vocab rounded up to a multiple of 64")
    # [data] which stories, which tokenizer
    data: str = _f("tinystories", "data", "'tinystories' (storylib.data.load_stories), 'synthetic' (tests) or "
                   "'chat' (conversations made from the stories: storylib.conversations, SFT)")
    tokenizer: str = _f("models/storyteller/tokenizer.json", "data", "a tokenizer.json, or 'bytes' (Chapter 5)")
    n_train_stories: int = _f(0, "data", "training stories to use; 0: all (synthetic: required)")
    n_val_stories: int = _f(1000, "data", "validation stories, scored at the end of the run")
    eval_stories: int = _f(200, "data", "the first this many of them are scored at every evaluation")
    # [optim] AdamW, warmup + cosine
    batch_size: int = _f(32, "optim", "windows per micro-batch")
    grad_accum: int = _f(1, "optim", "micro-batches per optimizer step")
    max_steps: int = _f(5000, "optim", "optimizer steps in the run")
    lr: float = _f(1e-3, "optim", "peak learning rate")
    min_lr: float = _f(1e-4, "optim", "learning rate at the end of the cosine")
    warmup_steps: int = _f(100, "optim", "steps of linear warmup")
    weight_decay: float = _f(0.1, "optim", "AdamW decay of matrices and embeddings (not biases, gains)")
    beta1: float = _f(0.9, "optim", "AdamW beta1")
    beta2: float = _f(0.95, "optim", "AdamW beta2")
    grad_clip: float = _f(1.0, "optim", "clip the gradient norm to this; 0: no clipping")
    optimizer: str = _f("adamw", "optim", "'adamw' for every parameter, or 'muon' (storylib.optim.Muon) for the "
                        "blocks' matrices and AdamW for the rest")
    muon_lr: float = _f(0.02, "optim", "optimizer = 'muon': Muon's peak learning rate (same warmup and cosine)")
    muon_momentum: float = _f(0.95, "optim", "optimizer = 'muon': Muon's (Nesterov) momentum")
    # [sft] finetuning a trained model (Chapter 14, storylib.sft): data = "chat", init_from, LoRA
    init_from: str = _f("", "sft", "'': new weights; a model folder (models/storyteller): its architecture, "
                        "tokenizer and weights")
    lora_rank: int = _f(0, "sft", "0: finetune every weight; r > 0: train LoRA adapters of rank r only")
    lora_alpha: float = _f(16.0, "sft", "LoRA's scale is lora_alpha / lora_rank")
    lora_targets: str = _f("c_attn,c_proj,c_fc", "sft", "the Linear layers that get adapters (names or name ends)")
    chat_seeds: int = _f(1, "sft", "data = 'chat': conversations per training story; the 2nd, 3rd, ... from copies of "
                         "it with other names and nouns (storylib.sft.varied: words memory cannot supply)")
    max_chat_tokens: int = _f(0, "sft", "data = 'chat': train on the turns of at most this many tokens only (a quick "
                              "CPU run); 0: every turn that fits block_size")
    plain_val_stories: int = _f(1000, "sft", "data = 'chat': plain validation stories scored at the end "
                                "(did the storyteller keep its stories?); 0: none")
    # [system]
    device: str = _f("auto", "system", "'auto' (CUDA if there is one), 'cpu', 'cuda' or 'cuda:N'")
    dtype: str = _f("auto", "system", "'auto' (bf16 on CUDA, fp32 on CPU), 'bf16' or 'fp32'")
    compile: bool = _f(False, "system", "torch.compile the model (worth it on a GPU)")
    fp8: str = _f("off", "system", "FP8 training matmuls (storylib.precision) on GPUs that have them (H100): "
                  "'off', 'lm_head' (the largest matmul only; the fastest at GPT-2 small) or 'all'")
    compile_mode: str = _f("default", "system", "torch.compile's mode: 'default', 'max-autotune-no-cudagraphs' "
                           "(minutes of matmul autotuning) or 'coordinate-descent' (Inductor tunes its own kernels' "
                           "block sizes; a minute or two more compiling)")
    loss_chunks: int = _f(0, "system", "0: forward's loss; N: lm_head + cross-entropy fused, N row-chunks at a "
                          "time, no logits tensor (storylib.precision.fused_loss)")
    # [run] logging, evaluation, checkpoints
    out_dir: str = _f("runs/storyteller", "run", "where checkpoints and train_log.jsonl go")
    seed: int = _f(1337, "run", "seeds the weights, dropout and the order of the windows")
    log_interval: int = _f(10, "run", "log the training loss every this many steps")
    eval_interval: int = _f(250, "run", "evaluate every this many steps (and at the start and the end)")
    ckpt_interval: int = _f(500, "run", "save <out_dir>/last every this many steps (and at the end)")

    def validate(self) -> TrainConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for f in fields(self):  # types: TOML gives int for 1 and float for 1.0; a float field takes both
            v = getattr(self, f.name)
            want = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
            need(isinstance(v, want) and (f.type == "bool" or not isinstance(v, bool)),
                 f"{f.name} must be {f.type}, got {v!r}")
            if f.type == "float":
                setattr(self, f.name, float(v))
        need(self.n_layer >= 1 and self.n_head >= 1 and self.n_embd >= 1 and self.block_size >= 1,
             "n_layer, n_head, n_embd and block_size must be >= 1")
        need(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.vocab_size >= 0, f"vocab_size must be >= 0 (0: from the tokenizer), got {self.vocab_size}")
        need(self.data in ("tinystories", "synthetic", "chat"),
             f"data must be 'tinystories', 'synthetic' or 'chat', got {self.data!r}")
        need(min(self.lora_rank, self.plain_val_stories, self.max_chat_tokens) >= 0 and self.lora_alpha > 0
             and self.chat_seeds >= 1, "lora_rank, plain_val_stories and max_chat_tokens must be >= 0, lora_alpha > 0, "
             "chat_seeds >= 1")
        need(self.lora_rank == 0 or self.init_from != "", "lora_rank > 0 needs init_from (a model to adapt)")
        need(self.lora_rank == 0 or self.weight_decay == 0, "lora_rank > 0 needs weight_decay = 0 (AdamW would "
             "shrink the frozen rows of the embedding, whose chat-token rows train: storylib.sft.init_model)")
        need(self.data != "synthetic" or self.n_train_stories > 0, "data = 'synthetic' needs n_train_stories > 0")
        need(self.n_train_stories >= 0, f"n_train_stories must be >= 0, got {self.n_train_stories}")
        need(self.n_val_stories >= 1 and 1 <= self.eval_stories, "n_val_stories and eval_stories must be >= 1")
        need(self.batch_size >= 1 and self.grad_accum >= 1 and self.max_steps >= 1,
             "batch_size, grad_accum and max_steps must be >= 1")
        need(0 <= self.warmup_steps <= self.max_steps,
             f"warmup_steps must be in 0..max_steps ({self.max_steps}), got {self.warmup_steps}")
        need(0.0 <= self.min_lr <= self.lr, f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        need(self.weight_decay >= 0 and self.grad_clip >= 0, "weight_decay and grad_clip must be >= 0")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be in {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.muon_lr > 0 and 0 <= self.muon_momentum < 1, "muon_lr must be > 0 and muon_momentum in [0, 1)")
        need(self.device == "auto" or self.device == "cpu" or self.device.split(":")[0] == "cuda",
             f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        need(self.dtype in ("auto", "bf16", "fp32"), f"dtype must be 'auto', 'bf16' or 'fp32', got {self.dtype!r}")
        need(self.fp8 in FP8_CHOICES, f"fp8 must be in {FP8_CHOICES}, got {self.fp8!r}")
        need(self.compile_mode in COMPILE_MODES, f"compile_mode must be in {COMPILE_MODES}, got {self.compile_mode!r}")
        need(self.loss_chunks >= 0, f"loss_chunks must be >= 0 (0: forward's loss), got {self.loss_chunks}")
        need(min(self.log_interval, self.eval_interval, self.ckpt_interval) >= 1,
             "log_interval, eval_interval and ckpt_interval must be >= 1")
        return self

    def gpt_config(self, n_vocab: int) -> GPTConfig:
        """The model's config; vocab_size = n_vocab rounded up to a multiple of 64 (fast matmuls), unless set."""
        vocab = self.vocab_size or 64 * math.ceil(n_vocab / 64)
        if vocab < n_vocab:
            raise ConfigError(f"vocab_size = {vocab} is smaller than the tokenizer's {n_vocab} ids")
        return GPTConfig(block_size=self.block_size, vocab_size=vocab, n_layer=self.n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout, bias=self.bias, fused=self.fused)


GROUPS = {f.metadata["group"] for f in fields(TrainConfig)}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "coordinate-descent")
FP8_CHOICES = ("off", "lm_head", "all")
OPTIMIZERS = ("adamw", "muon")


def _unknown(key: str, where: str) -> ConfigError:
    names = [f.name for f in fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown config key {key!r}{hint}; known keys: {', '.join(names)}")


def _parse_value(text: str) -> Any:
    """A --set value read as a TOML value (3e-4, 12, true, "x"); anything else is a plain string (cuda)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a TOML file (keys at the top level or in [model], [data], [optim], [system], [run]),
    then `overrides` such as "lr=3e-4" or "optim.lr=3e-4". Raises ConfigError naming any unknown key."""
    by_name = {f.name: f for f in fields(TrainConfig)}
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists() and not path.is_absolute():  # configs/x.toml from a workspace: the course's copy
            from storylib.data import course_file

            with contextlib.suppress(FileNotFoundError):
                path = course_file(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        for key, v in doc.items():
            if isinstance(v, dict):  # a [group] table
                if key not in GROUPS:
                    raise ConfigError(f"{path}: unknown table [{key}]; tables are {', '.join(sorted(GROUPS))}")
                for k, vv in v.items():
                    if k not in by_name:
                        raise _unknown(k, f"{path} [{key}]")
                    if by_name[k].metadata["group"] != key:
                        raise ConfigError(f"{path}: {k!r} belongs in [{by_name[k].metadata['group']}], not [{key}]")
                    values[k] = vv
            elif key in by_name:
                values[key] = v
            else:
                raise _unknown(key, str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().rpartition(".")[2]  # "optim.lr" and "lr" both name lr
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key not in by_name:
            raise _unknown(key, "--set")
        values[key] = _parse_value(text.strip())
    return TrainConfig(**values).validate()


# ----------------------------------------------------------------------------- tokenizer and data


def byte_tokenizer() -> RegexTokenizer:
    """Chapter 5's tokens as a tokenizer: the 256 bytes (no merges) and <|endoftext|> = 256."""
    return RegexTokenizer(merges={}, special_tokens={EOT_TOKEN: 256})


def resolve_course_path(name: str) -> Path:
    """A file or folder (a tokenizer, a model): as given (relative to the working folder), else the course's
    (models/... from a learner's workspace)."""
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute():
        return path
    from storylib.data import course_file

    try:
        return course_file(name)
    except FileNotFoundError:
        return path


def load_tokenizer(name: str) -> tuple[RegexTokenizer, dict[str, Any]]:
    """(tokenizer, identity) for a config's `tokenizer`: 'bytes' or the path of a tokenizer.json.

    identity = {"source", "sha256", "n_vocab", "eot"}: the sha256 of the saved tokenizer's JSON, so a resumed run
    can tell a different tokenizer even when it has the same size.
    """
    if name == "bytes":
        tok = byte_tokenizer()
    else:
        path = resolve_course_path(name)
        if not path.exists():
            raise ConfigError(f"tokenizer {path} not found (tokenizer = {name!r} in the config)")
        try:
            tok = RegexTokenizer.load(path)
        except ValueError as e:
            raise ConfigError(f"tokenizer: {e}") from None
    if EOT_TOKEN not in tok.special_tokens:
        raise ConfigError(f"tokenizer {name!r} has no {EOT_TOKEN} special token: stories need it as separator")
    doc = tokenizer_json(tok)
    return tok, {"source": name, "sha256": hashlib.sha256(doc).hexdigest(), "n_vocab": tok.n_vocab,
                 "eot": eot_id(tok)}


def load_stories_for(cfg: TrainConfig, split: str) -> list[str]:
    """The stories of a split ('train' or 'valid') as the config says."""
    from storylib.data import load_stories, synthetic_stories

    if cfg.data == "synthetic":  # a fixed seed: the data does not change with the run's seed
        stories = synthetic_stories(cfg.n_train_stories + cfg.n_val_stories, seed=0)
        return stories[: cfg.n_train_stories] if split == "train" else stories[cfg.n_train_stories :]
    if split == "train":
        return load_stories("train", limit=cfg.n_train_stories or None)
    return load_stories("valid", limit=cfg.n_val_stories)


def _data_key(cfg: TrainConfig, tok_id: dict[str, Any]) -> dict[str, Any]:
    """What the training tokens depend on; the cache is reused only when all of it matches."""
    key: dict[str, Any] = {"data": cfg.data, "n_train_stories": cfg.n_train_stories, "tokenizer": tok_id["sha256"]}
    if cfg.data == "tinystories":
        from storylib.data import data_dir, split_files

        key["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in split_files("train")]
        if not key["files"]:
            key["files"] = str(data_dir())  # load_stories will raise its helpful missing-data message
    return key


def prepare_data(cfg: TrainConfig, tok: RegexTokenizer, tok_id: dict[str, Any], out_dir: Path,
                 verbose: bool = True) -> np.ndarray:
    """The training stories as one uint16 stream [EOT, story, EOT, ...], encoded once into <out_dir>/data."""
    from storylib.datasets import load_tokens, write_shards

    data_dir = out_dir / "data"
    key = _data_key(cfg, tok_id)
    meta = data_dir / "meta.json"
    if meta.exists():
        try:
            saved = json.loads(meta.read_text())
            if saved["key"] == key:
                return load_tokens([data_dir / name for name in saved["shards"]])
        except (ValueError, KeyError, OSError):
            pass  # a damaged or foreign cache: encode again
    stories = load_stories_for(cfg, "train")
    if verbose:
        print(f"encoding {len(stories):,} training stories into {data_dir} ...", flush=True)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    paths = write_shards(stories, tok, data_dir, prefix="train", progress=verbose and sys.stderr.isatty())
    tokens = load_tokens(paths)
    write_file_atomic(meta, json.dumps({"key": key, "shards": [p.name for p in paths], "n_tokens": int(len(tokens))},
                                       indent=1).encode())
    return tokens


# ----------------------------------------------------------------------------- evaluation


class Validation:
    """The validation stories, encoded once; `evaluate` scores the first n of them."""

    def __init__(self, stories: list[str], tok: RegexTokenizer):
        from storylib.fastbpe import ordinary_encoder

        self.stories = stories
        self.eot = eot_id(tok)
        self.ids = dict(zip(stories, ordinary_encoder(tok)(stories), strict=True))

    @torch.no_grad()
    def evaluate(self, model: GPT, n: int, batch_size: int, autocast: contextlib.AbstractContextManager) -> dict:
        """{"val_loss": nats per predicted token, "val_bpb": bits per UTF-8 byte} over the first n stories.

        One pass, storylib.gpt2.bits_per_byte: each story is [EOT, tokens, EOT], every token and the final EOT is
        predicted. Its total is bpb · ln 2 · bytes nats, over sum(len(ids) + 1) predictions: that is val_loss.
        """
        stories = self.stories[:n]
        with autocast:
            bpb = bits_per_byte(model, stories, batch_size=batch_size, encode_fn=self.ids.__getitem__, eot=self.eot)
        model.train()
        n_bytes = sum(len(s.encode("utf-8")) for s in stories)
        n_pred = sum(len(self.ids[s]) + 1 for s in stories)
        return {"val_loss": bpb * math.log(2) * n_bytes / n_pred, "val_bpb": bpb, "val_stories": len(stories)}


# ----------------------------------------------------------------------------- the device


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {cfg.device!r}, but PyTorch sees no CUDA GPU here; use device = 'cpu'")
    device = torch.device(name)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(cfg.dtype)
    if dtype is None:  # auto
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return device, dtype


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16 autocast: matmuls in bf16, the weights, AdamW and the loss's softmax stay in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- the run


def say(msg: str, quiet: bool = False) -> None:
    """Print a line about the run (unless quiet), above the progress bar when there is one."""
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(msg)
        sys.stdout.flush()


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _rng_state() -> dict[str, str]:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def _set_rng_state(state: dict[str, str]) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


@dataclass
class RunState:
    """How far a run has come: saved in every checkpoint's trainer_state.json, restored by --resume."""

    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of wall clock, across resumes
    best_val_bpb: float | None = None  # the best periodic evaluation, the model in <out_dir>/best
    log_bytes: int = 0  # the length of train_log.jsonl when the checkpoint was saved


@dataclass
class Run:
    """What a run is made of, built once by `setup`; `train_step`, `evaluate` and `checkpoint` share it."""

    cfg: TrainConfig
    tok: RegexTokenizer
    tok_id: dict[str, Any]
    model: GPT
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler
    val: Validation
    device: torch.device
    autocast: contextlib.AbstractContextManager  # bf16 autocast, or nothing in fp32
    quiet: bool
    state: RunState = field(default_factory=RunState)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "train_log.jsonl"

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.cfg.block_size

    def log(self, event: dict[str, Any]) -> None:
        """One line of train_log.jsonl."""
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def setup(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Run:
    """A run's tokenizer, data, model and AdamW, from scratch or restored from <out_dir>/last (resume=True), with
    the GPU's TF32 and FP8 matmuls switched on as the config asks.

    A checkpoint to resume from is read and checked before anything in out_dir is touched. Raises CheckpointError
    when resuming finds no checkpoint or one that does not fit, or when a fresh run would overwrite one.
    """
    from storylib.datasets import WindowSampler

    if cfg.init_from or cfg.data == "chat":
        from storylib import sft  # Chapter 14
    if cfg.init_from:  # finetuning: the base model's architecture and tokenizer
        cfg = sft.adopt_base(cfg)
    out_dir = Path(cfg.out_dir)
    device, dtype = resolve_device(cfg)
    tok, tok_id = load_tokenizer(cfg.tokenizer)
    gcfg = cfg.gpt_config(tok.n_vocab)

    # 1. The checkpoint to resume from, if any.
    ckpt = None
    if resume:
        where = find_checkpoint(out_dir)
        if where is None:
            raise CheckpointError(f"--resume: no checkpoint in {out_dir / 'last'}")
        ckpt = read_checkpoint(where, resume=True)
        for note in check_resumable(ckpt, cfg, gcfg, tok_id):
            say(f"resume: {note}", quiet)
    elif find_checkpoint(out_dir) is not None:
        raise CheckpointError(f"{out_dir / 'last'} already holds a checkpoint: pass --resume to continue it, or "
                              "choose another out_dir (--set out_dir=...)")

    # 2. Data: the training stream, cut into random windows; the validation stories. SFT: whole conversations.
    if cfg.data == "chat":
        sampler, val = sft.chat_data(cfg, tok, quiet)
    else:
        tokens = prepare_data(cfg, tok, tok_id, out_dir, verbose=not quiet)
        sampler = WindowSampler(tokens, cfg.block_size, cfg.batch_size, seed=cfg.seed)
        val = Validation(load_stories_for(cfg, "valid"), tok)

    # 3. The model and its optimizer.
    torch.manual_seed(cfg.seed)
    model = GPT(gcfg).to(device)
    if cfg.init_from:  # the base model's weights; LoRA: adapters in, the rest frozen (AdamW sees trainable only)
        sft.init_model(cfg, model, tok, quiet)
    optimizer = make_optimizer(cfg, model, device)
    run = Run(cfg, tok, tok_id, model, optimizer, sampler, val, device, _autocast(device, dtype), quiet)
    if ckpt is not None:
        restore(run, ckpt)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        run.log_path.write_bytes(b"")

    # 4. Speed: TF32 and FP8 matmuls where the GPU has them.
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fp8 = cfg.fp8 != "off" and fp8_supported(device)
    if fp8:  # same parameters and state_dict; FP8 matmuls in training mode only
        float8_linears(model, only="lm_head" if cfg.fp8 == "lm_head" else None)
    elif cfg.fp8 != "off":
        say(f"fp8: {device} has no FP8 tensor cores; training in {str(dtype).removeprefix('torch.')}", quiet)
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, {gcfg}", quiet)
    n_train = f"{len(sampler.examples):,} assistant turns" if cfg.data == "chat" else f"{len(tokens):,} tokens"
    say(f"data: {n_train} for training, {len(val.stories)} for validation; "
        f"{run.tokens_per_step:,} tokens per step; {device}, {str(dtype).removeprefix('torch.')}"
        f"{', compiled' if cfg.compile else ''}{f', fp8 matmuls ({cfg.fp8})' if fp8 else ''}"
        f"{f', fused loss in {cfg.loss_chunks} chunks' if cfg.loss_chunks else ''}", quiet)
    return run


def make_optimizer(cfg: TrainConfig, model: GPT, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on a GPU) on param_groups; optimizer = 'muon': Muon on the blocks' matrices, AdamW on the rest.

    Each group's "lr_scale" times the schedule's lr is its learning rate (train_step): Muon's is muon_lr / lr. Its
    weight decay is weight_decay · lr / muon_lr, so that a matrix shrinks by the same lr·λ per step as under AdamW."""
    def adamw(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                 fused=device.type == "cuda")

    if cfg.optimizer == "adamw":
        return adamw(param_groups(model, cfg.weight_decay))
    hidden, rest = muon_param_groups(model, cfg.weight_decay)
    for g in hidden:
        g["lr_scale"], g["weight_decay"] = cfg.muon_lr / cfg.lr, cfg.weight_decay * cfg.lr / cfg.muon_lr
    muon = BatchedMuon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum)  # Muon, with multi-tensor kernels
    return MuonAdamW(muon, adamw(rest))  # type: ignore[return-value]


def restore(run: Run, ckpt: Checkpoint) -> None:
    """Continue where `ckpt` stopped: the weights, AdamW's moments, the sampler's position, the RunState and the
    RNG; train_log.jsonl forgets what was logged after the checkpoint. Raises CheckpointError if they do not fit."""
    load_weights(run.model, ckpt)
    load_optimizer(run.optimizer, ckpt)
    try:
        run.sampler.load_state_dict(ckpt.trainer["sampler"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt.path / 'trainer_state.json'}: sampler state does not fit ({e})") from None
    run.state = RunState(**{f.name: ckpt.trainer[f.name] for f in fields(RunState) if f.name in ckpt.trainer})
    _set_rng_state(ckpt.trainer["rng"])
    log_bytes = run.state.log_bytes
    if run.log_path.exists() and run.log_path.stat().st_size >= log_bytes:
        os.truncate(run.log_path, log_bytes)
    say(f"resuming from {ckpt.path} at step {run.state.step}", run.quiet)


def loss_function(run: Run) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A micro-batch's mean loss, keeping no logits when loss_chunks is set (fused_loss); torch.compile'd
    if the config says so. Evaluation calls the model itself: its shapes vary."""
    cfg, model = run.cfg, run.model

    def model_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fused_loss(model, x, y, cfg.loss_chunks) if cfg.loss_chunks else model(x, y)[1]

    if cfg.compile and cfg.compile_mode == "coordinate-descent":
        return torch.compile(model_loss, options={"coordinate_descent_tuning": True})
    if cfg.compile:
        return torch.compile(model_loss, mode=cfg.compile_mode)
    return model_loss


# ----------------------------------------------------------------------------- a step, an evaluation, a save


def train_step(run: Run, loss_fn: Callable, lr: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step at learning rate `lr`; returns (the sum of the micro-batches' losses, the gradient norm
    before clipping, None without clipping), both still on the device."""
    cfg, device, optimizer = run.cfg, run.device, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups: muon_lr / lr
    loss_sum = torch.zeros((), device=device)
    for _ in range(cfg.grad_accum):  # accumulate the gradient of the mean over grad_accum micro-batches
        x, y = run.sampler.next_batch()
        if device.type == "cuda":  # pinned memory: the copy overlaps with the GPU's work
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        with run.autocast:
            loss = loss_fn(x, y)
        (loss / cfg.grad_accum).backward()
        loss_sum += loss.detach()
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm


def log_step(run: Run, bar: tqdm, loss: float, lr: float, norm: torch.Tensor | None, tok_s: float) -> None:
    """A training step in train_log.jsonl, and on the progress bar (or, without one, as a line of its own)."""
    state = run.state
    run.log({"event": "train", "step": state.step, "loss": loss, "lr": lr,
             "grad_norm": None if norm is None else norm.item(), "tokens_seen": state.tokens_seen,
             "elapsed": round(state.elapsed, 3), "tokens_per_s": round(tok_s, 1)})
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
    if bar.disable:
        say(f"step {state.step:>6}/{run.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | "
            f"{_fmt_time(state.elapsed)}", run.quiet)


def evaluate(run: Run, final: bool = False) -> dict[str, Any]:
    """Score the first eval_stories validation stories (final: n_val_stories of them), log and print the result.
    A periodic evaluation that beats the best so far saves the model as <out_dir>/best."""
    cfg, state = run.cfg, run.state
    n = cfg.n_val_stories if final else cfg.eval_stories
    result = run.val.evaluate(run.model, n, cfg.batch_size, run.autocast)
    if final and cfg.data == "chat" and cfg.plain_val_stories:  # SFT: did the storyteller keep its stories?
        from storylib.data import load_stories

        plain = Validation(load_stories("valid", limit=cfg.plain_val_stories), run.tok)
        n_plain = len(plain.stories)
        result["plain_val_bpb"] = plain.evaluate(run.model, n_plain, cfg.batch_size, run.autocast)["val_bpb"]
    event = {"event": "eval", "step": state.step, **result, "tokens_seen": state.tokens_seen,
             "elapsed": round(state.elapsed, 3)}
    if final:
        event["final"] = True
    run.log(event)
    say(f"step {state.step:>6}: val loss {result['val_loss']:.4f}, {result['val_bpb']:.4f} bits per byte "
        f"({result['val_stories']} {'assistant turns' if cfg.data == 'chat' else 'stories'})"
        + (f"; plain stories {result['plain_val_bpb']:.4f} bits per byte" if "plain_val_bpb" in result else ""),
        run.quiet)
    periodic = result["val_stories"] == min(cfg.eval_stories, len(run.val.stories))  # best/ compares like with like
    if periodic and (state.best_val_bpb is None or result["val_bpb"] < state.best_val_bpb):
        state.best_val_bpb = result["val_bpb"]
        checkpoint(run, "best", with_optimizer=False)
    return result


def checkpoint(run: Run, name: str, with_optimizer: bool) -> Path:
    """Save <out_dir>/<name> atomically: the model, and with_optimizer all a resumed run needs (AdamW's moments,
    the sampler's position, the RNG state, the RunState)."""
    run.state.log_bytes = run.log_path.stat().st_size
    trainer = {**asdict(run.state), "sampler": run.sampler.state_dict(), "rng": _rng_state(),
               "tokens_per_step": run.tokens_per_step, "saved_at": time.time()}
    if run.cfg.lora_rank and not with_optimizer:  # best/: the merged plain model, and adapter/ alone
        from storylib.sft import save_lora_checkpoint

        return save_lora_checkpoint(run, name, trainer)
    return save_checkpoint(run.out_dir / name, run.model, run.cfg, run.tok, run.tok_id, trainer,
                           run.optimizer if with_optimizer else None)


# ----------------------------------------------------------------------------- training


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False,
          on_step: Callable[[RunState], None] | None = None) -> dict[str, Any]:
    """Train as `cfg` says; returns the final state (step, best validation, last evaluation, checkpoint paths).

    resume=True continues from <out_dir>/last: the weights, AdamW's moments, the sampler's position and the RNG
    state are restored, so on a CPU the continued run computes exactly the losses an uninterrupted one would.
    Without resume, an out_dir that already holds a checkpoint is an error (nothing is overwritten).
    on_step(state) is called after every step, once its logging, evaluation and checkpoint are done (tests use it
    to crash a run at a chosen step).
    """
    from tqdm.auto import tqdm

    run = setup(cfg, resume, quiet)
    loss_fn = loss_function(run)
    state = run.state
    bar = tqdm(total=cfg.max_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())
    run.model.train()
    if state.step == 0:
        evaluate(run)
    t_start, elapsed_before = time.perf_counter(), state.elapsed
    t_last, tokens_last = t_start, state.tokens_seen
    while state.step < cfg.max_steps:
        lr = warmup_cosine_lr(state.step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        loss_sum, norm = train_step(run, loss_fn, lr)
        state.step += 1
        state.tokens_seen += run.tokens_per_step
        state.elapsed = elapsed_before + time.perf_counter() - t_start  # wall clock, across resumes
        bar.update(1)

        step = state.step
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            loss = loss_sum.item() / cfg.grad_accum  # .item() waits for the GPU: only when logging
            now = time.perf_counter()
            tok_s = (state.tokens_seen - tokens_last) / max(now - t_last, 1e-9)
            t_last, tokens_last = now, state.tokens_seen
            log_step(run, bar, loss, lr, norm, tok_s)
        if step % cfg.eval_interval == 0 and step < cfg.max_steps:
            evaluate(run)
        if step % cfg.ckpt_interval == 0 and step < cfg.max_steps:
            checkpoint(run, "last", with_optimizer=True)
        if step % cfg.eval_interval == 0 or step % cfg.ckpt_interval == 0:
            t_last, tokens_last = time.perf_counter(), state.tokens_seen  # tokens/s counts training only
        if on_step is not None:
            on_step(state)
    bar.close()

    # The end: evaluate (the last model may be the best), score the whole validation set, save the final state.
    result = evaluate(run, final=cfg.n_val_stories <= cfg.eval_stories)
    if cfg.n_val_stories > cfg.eval_stories:
        result = evaluate(run, final=True)
    checkpoint(run, "last", with_optimizer=True)
    say(f"done: {state.step} steps, {state.tokens_seen:,} tokens in {_fmt_time(state.elapsed)}; "
        f"best val {state.best_val_bpb:.4f} bits per byte; checkpoints in {run.out_dir}/last and {run.out_dir}/best",
        quiet)
    return {**asdict(state), **result, "last": str(run.out_dir / "last"), "best": str(run.out_dir / "best")}


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """`llm101n train CONFIG [--resume] [--set key=value ...] [--max-steps N] [--device D]`
    and `llm101n train export CHECKPOINT OUT [--dtype fp16|bf16|fp32]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        p = argparse.ArgumentParser(prog="llm101n train export", description="Export a checkpoint for chatting.")
        p.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/storyteller/best")
        p.add_argument("out", help="the folder to write")
        p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
        args = p.parse_args(argv[1:])
        dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        try:
            out = export_model(args.checkpoint, args.out, dt)
        except CheckpointError as e:
            print(f"llm101n train export: {e}", file=sys.stderr)
            return 2
        size = (out / "model.safetensors").stat().st_size
        print(f"exported {args.checkpoint} to {out} ({size / 1e6:.1f} MB of {args.dtype} weights)")
        return 0

    p = argparse.ArgumentParser(prog="llm101n train", description="Train the storyteller (storylib.train).")
    p.add_argument("config", help="a TOML config, e.g. configs/cpu_learner.toml")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/last")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--max-steps", type=int, help="same as --set max_steps=N")
    p.add_argument("--device", help="same as --set device=D (cpu, cuda, cuda:1, auto)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = p.parse_args(argv)
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    try:
        cfg = load_config(args.config, overrides)
        train(cfg, resume=args.resume, quiet=args.quiet)
    except (ConfigError, CheckpointError) as e:
        print(f"llm101n train: {e}", file=sys.stderr)
        return 2
    except NotImplementedError as e:  # a learner's storylib with an exercise still to write
        print(f"llm101n train: this storylib has an unwritten exercise: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nllm101n train: interrupted; `--resume` continues from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
