"""Training the storyteller, written to be read from top to bottom (in the spirit of nanoGPT's train.py).

    llm101n train configs/cpu_learner.toml               train from scratch (or: python -m storylib.train ...)
    llm101n train configs/cpu_learner.toml --resume      continue from <out_dir>/last, exactly
    llm101n train CONFIG --set lr=3e-4 --max-steps 200   change a setting for this run
    llm101n train export RUN/best OUT                    a compact fp16 model for chatting and serving

The parts, in the order a run uses them:

    TrainConfig, load_config   every knob, read from a TOML file (configs/*.toml); an unknown key is an error
    load_tokenizer, prepare_data   stories -> one uint16 token stream (storylib.datasets), cached on disk
    evaluate                   validation loss and bits per byte (storylib.gpt2.bits_per_byte)
    save_checkpoint, read_checkpoint   safetensors + JSON, written atomically; CheckpointError when broken
    train                      the loop: random windows, gradient accumulation, clipping, warmup + cosine,
                               bf16 autocast, torch.compile and fused AdamW on a GPU; exact resume on a CPU;
                               speed options: fp8, loss_chunks (GPT.fused_loss), compile_mode
    load_model, export_model   a trained model (and its tokenizer) for the chat and serving chapters

A checkpoint is a folder: `model.safetensors` (the weights; the tied lm_head is stored once, as wte),
`config.json` (TrainConfig + GPTConfig + which tokenizer), `tokenizer.json` (a copy), `trainer_state.safetensors`
(AdamW's moments) + `trainer_state.json` (step, sampler position, RNG state, best validation, log position) and
`SHA256SUMS` (checked on every load, so a damaged file is named, never half-read). Nothing is pickled.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storylib.gpt2 import GPT, GPTConfig, bits_per_byte
from storylib.optim import lr_at, param_groups
from storylib.precision import float8_linears, fp8_supported
from storylib.tokenizer import RegexTokenizer

CHECKPOINT_FORMAT = "llm101n-checkpoint/1"
MODEL_FORMAT = "llm101n-model/1"  # an exported model: weights, config, tokenizer; no trainer state
EOT_TOKEN = "<|endoftext|>"


class ConfigError(ValueError):
    """A training config that cannot be used: an unknown key, a wrong type, an impossible value."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt or truncated files, or made for another model."""


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
    data: str = _f("tinystories", "data", "'tinystories' (storylib.data.load_stories) or 'synthetic' (tests)")
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
                          "time, no logits tensor (GPT.fused_loss)")
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
        need(self.data in ("tinystories", "synthetic"), f"data must be 'tinystories' or 'synthetic', got {self.data!r}")
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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_tokenizer_path(name: str) -> Path:
    """A tokenizer file: as given (relative to the working folder), else a course file (models/...)."""
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
        path = resolve_tokenizer_path(name)
        if not path.exists():
            raise ConfigError(f"tokenizer {path} not found (tokenizer = {name!r} in the config)")
        try:
            tok = RegexTokenizer.load(path)
        except ValueError as e:
            raise ConfigError(f"tokenizer: {e}") from None
    if EOT_TOKEN not in tok.special_tokens:
        raise ConfigError(f"tokenizer {name!r} has no {EOT_TOKEN} special token: stories need it as separator")
    doc = _tokenizer_json(tok)
    return tok, {"source": name, "sha256": hashlib.sha256(doc).hexdigest(), "n_vocab": tok.n_vocab,
                 "eot": tok.special_tokens[EOT_TOKEN]}


def _tokenizer_json(tok: RegexTokenizer) -> bytes:
    """The tokenizer as the bytes Tokenizer.save writes (same content whatever file it was read from)."""
    doc = {"format": "llm101n-bpe/1", "type": type(tok).__name__, "pattern": tok.pattern,
           "special_tokens": tok.special_tokens, "merges": [[a, b] for (a, b) in tok.merges]}
    return json.dumps(doc, ensure_ascii=False, indent=0).encode("utf-8")


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
    _write_bytes(meta, json.dumps({"key": key, "shards": [p.name for p in paths], "n_tokens": int(len(tokens))},
                                  indent=1).encode())
    return tokens


# ----------------------------------------------------------------------------- evaluation


class Validation:
    """The validation stories, encoded once; `evaluate` scores the first n of them."""

    def __init__(self, stories: list[str], tok: RegexTokenizer):
        from storylib.datasets import ordinary_encoder

        self.stories = stories
        self.eot = tok.special_tokens[EOT_TOKEN]
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


# ----------------------------------------------------------------------------- files, atomically


def _write_bytes(path: Path, data: bytes) -> str:
    """Write data to path (fsync'd) through a temporary name; returns its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets you open a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_dir_atomic(final: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (name -> bytes) plus their SHA256SUMS as the folder `final`, all or nothing.

    Everything goes into a temporary folder next to it (each file fsync'd), which is then renamed into place; an
    existing `final` is first moved aside (to .<name>.old) and deleted once the new one is in. A crash at any
    moment leaves either the old folder (as `final` or as .<name>.old, which `find_checkpoint` also finds) or the new.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sums = [f"{_write_bytes(tmp / name, data)}  {name}\n" for name, data in files.items()]
    _write_bytes(tmp / "SHA256SUMS", "".join(sums).encode())
    _fsync_dir(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(out_dir: Path, name: str = "last") -> Path | None:
    """<out_dir>/<name>, or the previous copy a crash during a save left as .<name>.old; None if neither."""
    if (out_dir / name).is_dir():
        return out_dir / name  # complete or not: read_checkpoint says what is wrong with it
    old = out_dir / f".{name}.old"
    return old if (old / "SHA256SUMS").exists() else None


def verify_dir(path: Path, required: Sequence[str]) -> None:
    """Check every file against SHA256SUMS; CheckpointError naming the first missing or damaged file."""
    sums_path = path / "SHA256SUMS"
    if not sums_path.exists():
        raise CheckpointError(f"{sums_path}: missing; {path} is not a complete checkpoint")
    sums: dict[str, str] = {}
    for line in sums_path.read_text(encoding="utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise CheckpointError(f"{sums_path}: damaged line {line!r}")
        sums[name] = digest
    for name in required:
        if name not in sums:
            raise CheckpointError(f"{path / name}: not listed in {sums_path}; the checkpoint is incomplete")
    for name, digest in sums.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if _sha256_file(file) != digest:
            raise CheckpointError(f"{file}: corrupt or truncated (its SHA-256 does not match {sums_path.name})")


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return doc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


# ----------------------------------------------------------------------------- checkpoints


def _model_tensors(model: GPT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict to save: lm_head.weight is wte.weight (tied), so it is stored once, as wte."""
    sd = model.state_dict()
    sd.pop("lm_head.weight")
    return {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous() for k, v in sd.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _config_doc(fmt: str, cfg: TrainConfig, gcfg: GPTConfig, tok_id: dict[str, Any], step: int) -> bytes:
    doc = {"format": fmt, "step": step, "model": asdict(gcfg), "tokenizer": tok_id, "train": asdict(cfg)}
    return json.dumps(doc, indent=1).encode()


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


def save_checkpoint(path: Path, model: GPT, cfg: TrainConfig, tok: RegexTokenizer, tok_id: dict[str, Any],
                    state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint folder atomically (see the module docstring). Without `optimizer`, no AdamW state:
    enough to load the model (best/), not to resume training."""
    files = {
        "model.safetensors": _save_tensors(_model_tensors(model), {"format": "pt"}),
        "config.json": _config_doc(CHECKPOINT_FORMAT, cfg, model.config, tok_id, state["step"]),
        "tokenizer.json": _tokenizer_json(tok),
    }
    trainer = dict(state)
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors = {f"state.{i}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
                   for i, st in opt["state"].items() for k, v in st.items()}
        files["trainer_state.safetensors"] = _save_tensors(tensors)
        trainer["optimizer"] = {"n_params": [len(g["params"]) for g in opt["param_groups"]],
                                "state_keys": {str(i): sorted(st) for i, st in opt["state"].items()}}
    files["trainer_state.json"] = json.dumps(trainer, indent=1).encode()
    return write_dir_atomic(path, files)


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]  # config.json
    model: dict[str, torch.Tensor]  # model.safetensors
    trainer: dict[str, Any]  # trainer_state.json ({} when absent)
    optimizer: dict[str, torch.Tensor] | None  # trainer_state.safetensors


def read_checkpoint(path: str | os.PathLike, resume: bool = False) -> Checkpoint:
    """Read and check a checkpoint folder (or an exported model). Raises CheckpointError naming the file at fault.

    resume=True also needs the trainer state (trainer_state.json and trainer_state.safetensors).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    required = ["model.safetensors", "config.json", "tokenizer.json"]
    if resume:
        required += ["trainer_state.json", "trainer_state.safetensors"]
    verify_dir(path, required)
    config = _read_json(path / "config.json")
    if config.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path / 'config.json'}: format {config.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    for key in ("model", "tokenizer"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"{path / 'config.json'}: no {key!r} section")
    model = _read_safetensors(path / "model.safetensors")
    trainer = _read_json(path / "trainer_state.json") if (path / "trainer_state.json").exists() else {}
    optimizer = _read_safetensors(path / "trainer_state.safetensors") if resume else None
    if resume:
        for key in ("step", "sampler", "rng", "optimizer"):
            if key not in trainer:
                raise CheckpointError(f"{path / 'trainer_state.json'}: no {key!r} entry")
    return Checkpoint(path, config, model, trainer, optimizer)


def _gpt_config_from(ckpt: Checkpoint) -> GPTConfig:
    known = {f.name for f in fields(GPTConfig)}
    doc = ckpt.config["model"]
    if set(doc) - known:
        raise CheckpointError(f"{ckpt.path / 'config.json'}: unknown model settings {sorted(set(doc) - known)}")
    try:
        return GPTConfig(**doc)
    except TypeError as e:
        raise CheckpointError(f"{ckpt.path / 'config.json'}: bad model settings ({e})") from None


def _load_weights(model: GPT, ckpt: Checkpoint) -> None:
    """Copy the checkpoint's tensors into `model`, strictly: same names, same shapes."""
    want = _model_tensors(model)
    file = ckpt.path / "model.safetensors"
    missing, extra = sorted(set(want) - set(ckpt.model)), sorted(set(ckpt.model) - set(want))
    if missing or extra:
        raise CheckpointError(f"{file}: does not fit the model: missing {missing}, unexpected {extra}")
    for k, v in ckpt.model.items():
        if v.shape != want[k].shape:
            raise CheckpointError(f"{file}: {k} has shape {tuple(v.shape)}, the model needs {tuple(want[k].shape)}")
    params = model.state_dict()
    with torch.no_grad():
        for k, v in ckpt.model.items():
            params[k].copy_(v)


# fields of TrainConfig a resumed run must share with its checkpoint (the weights, the data, the tokens)
MUST_MATCH = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "data", "n_train_stories")


def check_resumable(ckpt: Checkpoint, cfg: TrainConfig, gcfg: GPTConfig, tok_id: dict[str, Any]) -> list[str]:
    """Raise CheckpointError if the checkpoint was made for another model, tokenizer or data; return notes on
    settings that differ but may change on resume (learning rate, steps, dropout, ...)."""
    file = ckpt.path / "config.json"
    saved_train, saved_model, saved_tok = ckpt.config.get("train", {}), ckpt.config["model"], ckpt.config["tokenizer"]
    mine = {**asdict(cfg), "vocab_size": gcfg.vocab_size}
    theirs = {**saved_train, "vocab_size": saved_model.get("vocab_size")}
    for key in MUST_MATCH:
        if theirs.get(key) != mine[key]:
            raise CheckpointError(
                f"cannot resume: {file} was trained with {key} = {theirs.get(key)!r}, this config has "
                f"{key} = {mine[key]!r}. Use the checkpoint's value, or a new out_dir to start afresh.")
    if saved_tok.get("sha256") != tok_id["sha256"]:
        raise CheckpointError(
            f"cannot resume: {file} was trained with another tokenizer ({saved_tok.get('source')!r}, "
            f"sha256 {str(saved_tok.get('sha256'))[:12]}…), this config has {tok_id['source']!r} "
            f"(sha256 {tok_id['sha256'][:12]}…)")
    return [f"{k}: {theirs[k]!r} in the checkpoint, now {mine[k]!r}" for k in sorted(mine)
            if k in theirs and k not in MUST_MATCH and theirs[k] != mine[k] and k != "out_dir"]


def _load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    file = ckpt.path / "trainer_state.safetensors"
    info = ckpt.trainer["optimizer"]
    current = optimizer.state_dict()
    if info.get("n_params") != [len(g["params"]) for g in current["param_groups"]]:
        raise CheckpointError(f"{file}: optimizer state for parameter groups of sizes {info.get('n_params')}, "
                              f"this model has {[len(g['params']) for g in current['param_groups']]}")
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for i, keys in info["state_keys"].items():
            state[int(i)] = {k: ckpt.optimizer[f"state.{i}.{k}"] for k in keys}
    except KeyError as e:
        raise CheckpointError(f"{file}: missing tensor {e.args[0]}") from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, st in state.items():
        for k, v in st.items():
            if k != "step" and v.shape != params[i].shape:
                raise CheckpointError(f"{file}: state.{i}.{k} has shape {tuple(v.shape)}, "
                                      f"its parameter {tuple(params[i].shape)}")
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


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


# ----------------------------------------------------------------------------- training


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train as `cfg` says; returns the final state (step, best validation, last evaluation, checkpoint paths).

    resume=True continues from <out_dir>/last: the weights, AdamW's moments, the sampler's position and the RNG
    state are restored, so on a CPU the continued run computes exactly the losses an uninterrupted one would.
    Without resume, an out_dir that already holds a checkpoint is an error (nothing is overwritten).
    """
    from tqdm.auto import tqdm

    from storylib.datasets import WindowSampler

    def say(msg: str) -> None:
        if not quiet:
            tqdm.write(msg)  # above the progress bar, when there is one
            sys.stdout.flush()

    out_dir = Path(cfg.out_dir)
    device, dtype = resolve_device(cfg)
    tok, tok_id = load_tokenizer(cfg.tokenizer)
    gcfg = cfg.gpt_config(tok.n_vocab)

    # 1. A checkpoint to resume from is read and checked before anything in out_dir is touched.
    ckpt = None
    if resume:
        where = find_checkpoint(out_dir)
        if where is None:
            raise CheckpointError(f"--resume: no checkpoint in {out_dir / 'last'}")
        ckpt = read_checkpoint(where, resume=True)
        for note in check_resumable(ckpt, cfg, gcfg, tok_id):
            say(f"resume: {note}")
    elif find_checkpoint(out_dir) is not None:
        raise CheckpointError(f"{out_dir / 'last'} already holds a checkpoint: pass --resume to continue it, or "
                              "choose another out_dir (--set out_dir=...)")

    # 2. Data: the training stream, cut into random windows; the validation stories.
    tokens = prepare_data(cfg, tok, tok_id, out_dir, verbose=not quiet)
    sampler = WindowSampler(tokens, cfg.block_size, cfg.batch_size, seed=cfg.seed)
    val = Validation(load_stories_for(cfg, "valid"), tok)

    # 3. The model and its optimizer.
    torch.manual_seed(cfg.seed)
    model = GPT(gcfg).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  eps=1e-8, fused=device.type == "cuda")
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "elapsed": 0.0, "best_val_bpb": None, "log_bytes": 0}
    log_path = out_dir / "train_log.jsonl"
    if ckpt is not None:
        _load_weights(model, ckpt)
        _load_optimizer(optimizer, ckpt)
        try:
            sampler.load_state_dict(ckpt.trainer["sampler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.path / 'trainer_state.json'}: sampler state does not fit ({e})") from None
        state.update({k: ckpt.trainer[k] for k in state if k in ckpt.trainer})
        _set_rng_state(ckpt.trainer["rng"])
        if log_path.exists() and log_path.stat().st_size >= state["log_bytes"]:
            os.truncate(log_path, state["log_bytes"])  # forget what was logged after the checkpoint
        say(f"resuming from {ckpt.path} at step {state['step']}")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
    del ckpt

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fp8 = cfg.fp8 != "off" and fp8_supported(device)
    if fp8:  # same parameters and state_dict; FP8 matmuls in training mode only
        float8_linears(model, only="lm_head" if cfg.fp8 == "lm_head" else None)
    elif cfg.fp8 != "off":
        say(f"fp8: {device} has no FP8 tensor cores; training in {str(dtype).removeprefix('torch.')}")

    def model_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # a micro-batch's mean loss; no logits kept
        return model.fused_loss(x, y, cfg.loss_chunks) if cfg.loss_chunks else model(x, y)[1]

    # evaluation calls `model` itself: its shapes vary
    loss_fn = model_loss
    if cfg.compile and cfg.compile_mode == "coordinate-descent":
        loss_fn = torch.compile(model_loss, options={"coordinate_descent_tuning": True})
    elif cfg.compile:
        loss_fn = torch.compile(model_loss, mode=cfg.compile_mode)
    autocast = _autocast(device, dtype)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, {gcfg}")
    say(f"data: {len(tokens):,} training tokens, {len(val.stories)} validation stories; "
        f"{tokens_per_step:,} tokens per step; {device}, {str(dtype).removeprefix('torch.')}"
        f"{', compiled' if cfg.compile else ''}{f', fp8 matmuls ({cfg.fp8})' if fp8 else ''}"
        f"{f', fused loss in {cfg.loss_chunks} chunks' if cfg.loss_chunks else ''}")

    def log(event: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    def checkpoint(name: str, with_optimizer: bool) -> None:
        state["log_bytes"] = log_path.stat().st_size
        full = {**state, "sampler": sampler.state_dict(), "rng": _rng_state(),
                "tokens_per_step": tokens_per_step, "saved_at": time.time()}
        save_checkpoint(out_dir / name, model, cfg, tok, tok_id, full, optimizer if with_optimizer else None)

    def evaluate(final: bool = False) -> dict[str, Any]:
        n = cfg.n_val_stories if final else cfg.eval_stories
        result = val.evaluate(model, n, cfg.batch_size, autocast)
        event = {"event": "eval", "step": state["step"], **result, "tokens_seen": state["tokens_seen"],
                 "elapsed": round(state["elapsed"], 3)}
        if final:
            event["final"] = True
        log(event)
        say(f"step {state['step']:>6}: val loss {result['val_loss']:.4f}, {result['val_bpb']:.4f} bits per byte "
            f"({result['val_stories']} stories)")
        periodic = result["val_stories"] == min(cfg.eval_stories, len(val.stories))  # best/ compares like with like
        if periodic and (state["best_val_bpb"] is None or result["val_bpb"] < state["best_val_bpb"]):
            state["best_val_bpb"] = result["val_bpb"]
            checkpoint("best", with_optimizer=False)
        return result

    kill_after = int(os.environ.get("_LLM101N_TRAIN_KILL_AFTER_STEP", "0"))  # test-only: crash like a power cut
    bar = tqdm(total=cfg.max_steps, initial=state["step"], unit="step", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())
    model.train()
    if state["step"] == 0:
        evaluate()
    t_start, elapsed_before = time.perf_counter(), state["elapsed"]
    t_last, tokens_last = t_start, state["tokens_seen"]
    while state["step"] < cfg.max_steps:
        step = state["step"]
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for _ in range(cfg.grad_accum):  # accumulate the gradient of the mean over grad_accum micro-batches
            x, y = sampler.next_batch()
            if device.type == "cuda":  # pinned memory: the copy overlaps with the GPU's work
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step = step + 1
        state["tokens_seen"] += tokens_per_step
        state["elapsed"] = elapsed_before + time.perf_counter() - t_start  # wall clock, across resumes
        bar.update(1)

        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            loss_value = loss_sum.item() / cfg.grad_accum  # .item() waits for the GPU: only when logging
            now = time.perf_counter()
            tok_s = (state["tokens_seen"] - tokens_last) / max(now - t_last, 1e-9)
            t_last, tokens_last = now, state["tokens_seen"]
            event = {"event": "train", "step": step, "loss": loss_value, "lr": lr,
                     "grad_norm": None if norm is None else norm.item(), "tokens_seen": state["tokens_seen"],
                     "elapsed": round(state["elapsed"], 3), "tokens_per_s": round(tok_s, 1)}
            log(event)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
            if bar.disable:
                say(f"step {step:>6}/{cfg.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | "
                    f"{_fmt_time(state['elapsed'])}")
        if step % cfg.eval_interval == 0 and step < cfg.max_steps:
            evaluate()
        if step % cfg.ckpt_interval == 0 and step < cfg.max_steps:
            checkpoint("last", with_optimizer=True)
        if step % cfg.eval_interval == 0 or step % cfg.ckpt_interval == 0:
            t_last, tokens_last = time.perf_counter(), state["tokens_seen"]  # tokens/s counts training only
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    # The end: evaluate (the last model may be the best), score the whole validation set, save the final state.
    result = evaluate(final=cfg.n_val_stories <= cfg.eval_stories)
    if cfg.n_val_stories > cfg.eval_stories:
        result = evaluate(final=True)
    checkpoint("last", with_optimizer=True)
    say(f"done: {state['step']} steps, {state['tokens_seen']:,} tokens in {_fmt_time(state['elapsed'])}; "
        f"best val {state['best_val_bpb']:.4f} bits per byte; checkpoints in {out_dir}/last and {out_dir}/best")
    return {**state, **result, "last": str(out_dir / "last"), "best": str(out_dir / "best")}


# ----------------------------------------------------------------------------- using a trained model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               fused: bool | None = None) -> tuple[GPT, RegexTokenizer]:
    """(model, tokenizer) from a checkpoint folder (runs/.../best) or an exported model, in eval mode.

    The weights must fit the config exactly (names and shapes); the files are checked against SHA256SUMS.
    fused: True / False to choose PyTorch's kernels or the hand-written ones (None: as trained; same weights).
    Raises CheckpointError naming the file at fault.
    """
    ckpt = read_checkpoint(path)
    gcfg = _gpt_config_from(ckpt)
    if fused is not None:
        gcfg = dataclasses.replace(gcfg, fused=fused)
    model = GPT(gcfg)
    _load_weights(model, ckpt)
    try:
        tok = RegexTokenizer.load(ckpt.path / "tokenizer.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if tok.n_vocab > gcfg.vocab_size:
        raise CheckpointError(f"{ckpt.path / 'tokenizer.json'}: {tok.n_vocab} ids, the model has {gcfg.vocab_size}")
    return model.to(device=device, dtype=dtype).eval(), tok


def export_model(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """A compact copy of a checkpoint for chatting and serving: the weights in `dtype` (fp16 halves the size),
    config.json, tokenizer.json and SHA256SUMS; no optimizer state. Written atomically; returns out_dir."""
    ckpt = read_checkpoint(ckpt_dir)
    model, tok = load_model(ckpt_dir)
    doc = json.loads(_config_doc(MODEL_FORMAT, TrainConfig(**{k: v for k, v in ckpt.config.get("train", {}).items()
                                                              if k in {f.name for f in fields(TrainConfig)}}),
                                 model.config, ckpt.config["tokenizer"], ckpt.config.get("step", 0)))
    doc["dtype"] = str(dtype).removeprefix("torch.")
    doc["exported_from"] = str(Path(ckpt_dir).resolve())
    files = {"model.safetensors": _save_tensors(_model_tensors(model, dtype), {"format": "pt"}),
             "config.json": json.dumps(doc, indent=1).encode(), "tokenizer.json": _tokenizer_json(tok)}
    return write_dir_atomic(Path(out_dir), files)


def default_storyteller(device: str = "cpu") -> tuple[GPT, RegexTokenizer]:
    """The course's shipped model, models/storyteller (fp16 weights, checked against SHA256SUMS), in fp32."""
    from storylib.data import course_file

    return load_model(course_file("models/storyteller"), device=device)


def storyteller_hello(prompt: str = "Once upon a time", n_tokens: int = 24) -> str:
    """One line for `llm101n start`: the default storyteller loads offline and speaks (greedy, CPU)."""
    model, tok = default_storyteller()
    eot = tok.special_tokens["<|endoftext|>"]
    idx = torch.tensor([[eot, *tok.encode_ordinary(prompt)]])
    with torch.no_grad():
        out = model.generate(idx, n_tokens, temperature=0.0)
    text = tok.decode([i for i in out[0, 1:].tolist() if i < eot]).replace("\n", " ")
    return f"{model.num_params() / 1e6:.1f} M parameters, loaded offline — “{text}…”"


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
