"""Checkpoints and trained models on disk, written to be read from top to bottom: what the trainer saves and
resumes from (storylib.train), and what the chat and serving chapters load (storylib.storyteller, storylib.serve).

A checkpoint is a folder: `model.safetensors` (the weights; the tied lm_head is stored once, as wte),
`config.json` (TrainConfig + GPTConfig + which tokenizer), `tokenizer.json` (a copy), `trainer_state.safetensors`
(AdamW's moments) + `trainer_state.json` (step, sampler position, RNG state, best validation, log position) and
`SHA256SUMS` (checked on every load, so a damaged file is named, never half-read). Nothing is pickled. An exported
model (`export_model`) is the same folder without the trainer state, its weights in fp16.

The parts, in the order of the file:

    write_dir_atomic, find_checkpoint, verify_dir   folders written all or nothing, and checked when read
    save_checkpoint, read_checkpoint                a checkpoint; CheckpointError names the file at fault
    load_weights, load_optimizer, check_resumable   what resuming a run needs
    load_model, export_model, default_storyteller   a trained model (and its tokenizer) for chatting and serving
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from storylib.gpt2 import GPT, GPTConfig
from storylib.tokenizer import RegexTokenizer, eot_id

if TYPE_CHECKING:  # only for the annotations: loading a model never imports the trainer
    from storylib.train import TrainConfig

CHECKPOINT_FORMAT = "llm101n-checkpoint/1"
MODEL_FORMAT = "llm101n-model/1"  # an exported model: weights, config, tokenizer; no trainer state


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt or truncated files, or made for another model."""


# ----------------------------------------------------------------------------- files, atomically


def write_file_atomic(path: Path, data: bytes) -> str:
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
    sums = [f"{write_file_atomic(tmp / name, data)}  {name}\n" for name, data in files.items()]
    write_file_atomic(tmp / "SHA256SUMS", "".join(sums).encode())
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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# ----------------------------------------------------------------------------- saving


def tokenizer_json(tok: RegexTokenizer) -> bytes:
    """The tokenizer as the bytes Tokenizer.save writes (same content whatever file it was read from)."""
    doc = {"format": "llm101n-bpe/1", "type": type(tok).__name__, "pattern": tok.pattern,
           "special_tokens": tok.special_tokens, "merges": [[a, b] for (a, b) in tok.merges]}
    return json.dumps(doc, ensure_ascii=False, indent=0).encode("utf-8")


def _model_tensors(model: GPT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict to save: lm_head.weight is wte.weight (tied), so it is stored once, as wte."""
    sd = model.state_dict()
    sd.pop("lm_head.weight")
    return {k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous() for k, v in sd.items()}


def _save_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _config_doc(fmt: str, train: dict[str, Any], gcfg: GPTConfig, tok_id: dict[str, Any], step: int) -> bytes:
    doc = {"format": fmt, "step": step, "model": asdict(gcfg), "tokenizer": tok_id, "train": train}
    return json.dumps(doc, indent=1).encode()


def save_checkpoint(path: Path, model: GPT, cfg: TrainConfig, tok: RegexTokenizer, tok_id: dict[str, Any],
                    state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint folder atomically (see the module docstring). Without `optimizer`, no AdamW state:
    enough to load the model (best/), not to resume training."""
    files = {
        "model.safetensors": _save_tensors(_model_tensors(model), {"format": "pt"}),
        "config.json": _config_doc(CHECKPOINT_FORMAT, asdict(cfg), model.config, tok_id, state["step"]),
        "tokenizer.json": tokenizer_json(tok),
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


# ----------------------------------------------------------------------------- reading


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


def load_weights(model: GPT, ckpt: Checkpoint) -> None:
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


# ----------------------------------------------------------------------------- resuming a run


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Restore AdamW's moments from a checkpoint read with resume=True; CheckpointError if they do not fit."""
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
    load_weights(model, ckpt)
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
    doc = json.loads(_config_doc(MODEL_FORMAT, ckpt.config.get("train", {}), model.config, ckpt.config["tokenizer"],
                                 ckpt.config.get("step", 0)))
    doc["dtype"] = str(dtype).removeprefix("torch.")
    doc["exported_from"] = str(Path(ckpt_dir).resolve())
    files = {"model.safetensors": _save_tensors(_model_tensors(model, dtype), {"format": "pt"}),
             "config.json": json.dumps(doc, indent=1).encode(), "tokenizer.json": tokenizer_json(tok)}
    return write_dir_atomic(Path(out_dir), files)


def default_storyteller(device: str = "cpu") -> tuple[GPT, RegexTokenizer]:
    """The course's shipped model, models/storyteller (fp16 weights, checked against SHA256SUMS), in fp32."""
    from storylib.data import course_file

    return load_model(course_file("models/storyteller"), device=device)


def storyteller_hello(prompt: str = "Once upon a time", n_tokens: int = 24) -> str:
    """One line for `llm101n start`: the default storyteller loads offline and speaks (greedy, CPU)."""
    model, tok = default_storyteller()
    eot = eot_id(tok)
    idx = torch.tensor([[eot, *tok.encode_ordinary(prompt)]])
    with torch.no_grad():
        out = model.generate(idx, n_tokens, temperature=0.0)
    text = tok.decode([i for i in out[0, 1:].tolist() if i < eot]).replace("\n", " ")
    return f"{model.num_params() / 1e6:.1f} M parameters, loaded offline — “{text}…”"
