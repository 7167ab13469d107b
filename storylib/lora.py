"""Chapter 14 — LoRA (Hu et al., 2021), written from scratch: finetune a few small matrices, not the model.

A frozen linear layer y = x Wᵀ + b learns an update of low rank r: ΔW = scale · B A with A (r, in), B (out, r) and
scale = alpha / r, so the layer computes y = x Wᵀ + b + scale · x Aᵀ Bᵀ. B starts at zero, so a fresh adapter leaves
the model exactly as it was; only A and B train: r · (in + out) numbers instead of in · out. After training, ΔW can be
folded into W (merge): the model is then a plain GPT again, as fast as before.

    LoRALinear             wraps an nn.Linear (`base`, frozen); lora_A, lora_B, scale       (exercise ch14.lora_forward)
    LoRALinear.merge       W <- W + scale · B A, and back with unmerge                        (exercise ch14.lora_merge)
    inject_lora            swap chosen nn.Linear modules of a model for LoRALinear; freeze   (exercise ch14.lora_inject)
    mark_only_lora_trainable, count_parameters, merge_lora, unmerge_lora, remove_lora
    lora_state_dict, save_adapter, load_adapter   the adapter alone on disk: safetensors + JSON + SHA256SUMS

Names in the state dict: a wrapped layer `transformer.h.0.attn.c_attn` keeps its base weights one level down,
`transformer.h.0.attn.c_attn.base.weight` (and `.base.bias`), next to `...c_attn.lora_A` (r, in) and
`...c_attn.lora_B` (out, r). `remove_lora` gives the plain names back. Hugging Face peft stores the same matrices as
`...c_attn.lora_A.default.weight` and `...c_attn.lora_B.default.weight` (tests/test_lora.py checks that they agree).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from storylib.checkpoint import CheckpointError, _read_json, _read_safetensors, verify_dir, write_dir_atomic

ADAPTER_FORMAT = "llm101n-lora/1"
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # every Linear of a GPT block: attention in and out, MLP in and out

# ----------------------------------------------------------------------------- the LoRA layer


class LoRALinear(nn.Module):
    """An nn.Linear `base` (frozen) plus a trainable low-rank update: y = base(x) + scale · dropout(x) Aᵀ Bᵀ.

    lora_A (r, in) starts Kaiming-uniform, as in peft's default (init="kaiming": U(-1/√in, 1/√in)), or Gaussian
    with std 1/r (init="gaussian"); lora_B (out, r) starts at zero. scale = alpha / r. Both live on the base
    weight's device and dtype. Raises ValueError for r < 1 or a dropout outside [0, 1).
    """

    def __init__(self, base: nn.Linear, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
                 init: str = "kaiming"):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scale = r, float(alpha), alpha / r
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))  # zero: the model starts unchanged
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, and peft's
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / r)
        else:
            raise ValueError(f"init must be 'kaiming' or 'gaussian', got {init!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True while scale · B A is folded into base.weight

    def forward(self, x):
        """base(x) + scale · (dropout(x) @ Aᵀ @ Bᵀ); once merged, just base(x).  (exercise ch14.lora_forward)

        x: (..., in) -> (..., out). Multiply by Aᵀ first: (..., in) -> (..., r) -> (..., out) never builds the
        (out, in) matrix B A. Dropout reads only the LoRA path; the base layer sees x itself.
        """
        y = self.base(x)
        if self.merged:
            return y
        ### BEGIN SOLUTION ch14.lora_forward (§14.4, 2 pts): add scale · (dropout(x) @ lora_Aᵀ @ lora_Bᵀ) to base(x)
        y = y + self.scale * (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t())
        ### END SOLUTION
        return y

    def merge(self) -> None:
        """Fold the update into the base weight, W <- W + scale · B A; forward then skips the LoRA path.
        A second merge does nothing. A and B stay (unmerge needs them) but get no gradient while merged."""
        if not self.merged:
            self._add_delta(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Take the update back out, W <- W - scale · B A (equal to the old W up to rounding)."""
        if self.merged:
            self._add_delta(-1.0)
            self.merged = False

    @torch.no_grad()
    def _add_delta(self, sign: float) -> None:
        """base.weight += sign · scale · (B @ A), in place.  (exercise ch14.lora_merge)

        B @ A is (out, in), the shape of base.weight. In place, so a tied or shared weight and any optimizer
        holding it see the change; under no_grad, since this is bookkeeping, not a step to differentiate.
        """
        ### BEGIN SOLUTION ch14.lora_merge (§14.4, 2 pts): ΔW = scale · lora_B @ lora_A, (out, in); W += sign·ΔW
        delta = self.scale * (self.lora_B @ self.lora_A)
        self.base.weight.add_(delta.to(self.base.weight.dtype), alpha=sign)
        ### END SOLUTION

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}, merged={self.merged}"


# ----------------------------------------------------------------------------- LoRA in a model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRALinear modules by name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _target_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names of the nn.Linear modules whose name is a target or ends in '.' + target, in model order.

    Raises ValueError naming a target that matches no nn.Linear, when the model already has LoRA layers, or for a
    Linear whose weight is shared with another module (GPT's lm_head, tied to wte): merging would change both.
    """
    if isinstance(targets, str):
        targets = (targets,)
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers: remove_lora (or a fresh model) before injecting again")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    names: list[str] = []
    for t in targets:
        hits = [n for n in linears if n == t or n.endswith("." + t)]
        if not hits:
            raise ValueError(f"LoRA target {t!r} matches no nn.Linear of the model "
                             f"(its Linear layers end in {sorted({n.rsplit('.', 1)[-1] for n in linears})})")
        names += [n for n in hits if n not in names]
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    for n in names:
        if len(owners[id(linears[n].weight)]) > 1:
            raise ValueError(f"{n}.weight is shared with {owners[id(linears[n].weight)]}: LoRA on a tied weight "
                             "would change the other module too when merged")
    return sorted(names, key=list(linears).index)


def inject_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, r: int = 16, alpha: float = 32.0,
                dropout: float = 0.0, init: str = "kaiming") -> list[str]:
    """Replace each target nn.Linear of `model` (in place) by LoRALinear(it, r, alpha, dropout, init) and freeze
    everything but the LoRA matrices (mark_only_lora_trainable). Returns the names replaced, in model order.
    (exercise ch14.lora_inject)

    A target is a module name or its end: "c_fc", "mlp.c_proj", "transformer.h.0.attn.c_attn". Raises ValueError
    naming a target that matches no nn.Linear (the model is then unchanged); see _target_names for the others.
    """
    names = _target_names(model, targets)
    ### BEGIN SOLUTION ch14.lora_inject (§14.4, 2 pts): in each name's parent, setattr LoRALinear(old); then freeze
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(model.get_submodule(name), r, alpha, dropout, init))
    mark_only_lora_trainable(model)
    ### END SOLUTION
    return names


def mark_only_lora_trainable(model: nn.Module, extra: Sequence[str] = ()) -> None:
    """requires_grad = True for every lora_A / lora_B and for parameters whose name contains one of `extra`
    (e.g. "ln_f" to train the last LayerNorm too); False for all others."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith((".lora_A", ".lora_B")) or any(e in name for e in extra))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; a tied matrix counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer of the model (see LoRALinear.merge)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every LoRA layer of the model (see LoRALinear.unmerge)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module) -> list[str]:
    """Merge every LoRA layer and put its base nn.Linear back in its place: a plain model again (for a GPT, one that
    storylib.checkpoint saves and loads like any other). The base weights get requires_grad back. Returns the names."""
    names = list(lora_layers(model))
    for name in names:
        layer = model.get_submodule(name)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base.requires_grad_(True))
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA matrices: {"<layer>.lora_A": (r, in), "<layer>.lora_B": (out, r), ...}, detached."""
    layers = lora_layers(model).items()
    return {f"{name}.{k}": getattr(m, k).detach() for name, m in layers for k in ("lora_A", "lora_B")}


# ----------------------------------------------------------------------------- the adapter on disk


def _lora_settings(model: nn.Module) -> dict[str, Any]:
    """r, alpha and the layer names of the model's LoRA layers; ValueError if there are none or they differ."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers (inject_lora first)")
    kinds = {(m.r, m.alpha) for m in layers.values()}
    if len(kinds) > 1:
        raise ValueError(f"LoRA layers with different (r, alpha) {sorted(kinds)}: one adapter holds one setting")
    (r, alpha), = kinds
    return {"r": r, "alpha": alpha, "layers": list(layers)}


def _base_identity(model: nn.Module, base_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What the adapter was trained on: the model's settings and, given its folder, model.safetensors' SHA-256."""
    config = getattr(model, "config", None)
    out: dict[str, Any] = {}
    if is_dataclass(config):
        out["model"] = {k: v for k, v in asdict(config).items() if k not in ("dropout", "fused")}
    if base_dir is not None:
        out["path"] = str(base_dir)
        out["sha256"] = _model_sha256(Path(base_dir))
    return out


def _model_sha256(base_dir: Path) -> str:
    """The SHA-256 of a model folder's weights, as its SHA256SUMS lists it (verify_dir checks the file first)."""
    verify_dir(base_dir, ["model.safetensors"])
    for line in (base_dir / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if name == "model.safetensors":
            return digest
    raise CheckpointError(f"{base_dir / 'SHA256SUMS'}: no model.safetensors entry")  # unreachable after verify_dir


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, config: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float16, base_dir: str | os.PathLike | None = None) -> Path:
    """Write the LoRA matrices alone as a folder, atomically: adapter.safetensors (in `dtype`), adapter_config.json
    and SHA256SUMS. Nothing is pickled.

    adapter_config.json holds format, r, alpha, the layer names, dtype, "base" (the model's settings, and with
    `base_dir` the folder and its model.safetensors SHA-256) and `config` (anything else, e.g. the training
    settings) under "config". Raises ValueError if the model has no LoRA layers. Returns out_dir.
    """
    settings = _lora_settings(model)
    tensors = {k: v.to(dtype).cpu().contiguous() for k, v in lora_state_dict(model).items()}
    doc = {"format": ADAPTER_FORMAT, **settings, "dtype": str(dtype).removeprefix("torch."),
           "base": _base_identity(model, base_dir), "config": dict(config or {})}
    from safetensors.torch import save

    files = {"adapter.safetensors": save(tensors, metadata={"format": "pt"}),
             "adapter_config.json": json.dumps(doc, indent=1).encode()}
    return write_dir_atomic(Path(out_dir), files)


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of an adapter folder, checked against SHA256SUMS. Raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such adapter folder")
    verify_dir(path, ["adapter.safetensors", "adapter_config.json"])
    file = path / "adapter_config.json"
    doc = _read_json(file)
    if doc.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{file}: format {doc.get('format')!r}, expected {ADAPTER_FORMAT}")
    for key, kind in (("r", int), ("alpha", (int, float)), ("layers", list), ("base", dict)):
        if not isinstance(doc.get(key), kind):
            raise CheckpointError(f"{file}: no valid {key!r} entry")
    return doc, _read_safetensors(path / "adapter.safetensors")


def _check_base(model: nn.Module, doc: dict[str, Any], path: Path, base_dir: str | os.PathLike | None) -> None:
    """CheckpointError if the model (or the base folder given) is not the one the adapter was trained on."""
    file = path / "adapter_config.json"
    saved, mine = doc["base"], _base_identity(model, None)
    if "model" in saved and "model" in mine:
        # a setting added to the config after the adapter was made (GPTConfig.causal) is not in its file: the
        # adapter was trained with that setting's default
        defaults = {f.name: f.default for f in fields(model.config) if f.default is not MISSING}
        saved = {**saved, "model": {**{k: defaults[k] for k in mine["model"] if k in defaults}, **saved["model"]}}
    if "model" in saved and "model" in mine and saved["model"] != mine["model"]:
        diff = {k: (saved["model"].get(k), v) for k, v in mine["model"].items() if saved["model"].get(k) != v}
        raise CheckpointError(f"{file}: made for another base model; (adapter's, this model's) settings differ: {diff}")
    if base_dir is not None and "sha256" in saved:
        sha = _model_sha256(Path(base_dir))
        if sha != saved["sha256"]:
            raise CheckpointError(f"{file}: made for the base {saved.get('path')!r} (model.safetensors sha256 "
                                  f"{saved['sha256'][:12]}…), not {str(base_dir)!r} (sha256 {sha[:12]}…)")


def _adapter_shapes(model: nn.Module, doc: dict[str, Any], path: Path) -> dict[str, tuple[int, ...]]:
    """The shape each adapter tensor must have in this model; CheckpointError where the model lacks a layer, or
    has LoRA layers other than the adapter's."""
    have, r, file = lora_layers(model), doc["r"], path / "adapter_config.json"
    if have and (list(have) != doc["layers"] or any((m.r, m.alpha) != (r, doc["alpha"]) for m in have.values())):
        raise CheckpointError(f"{path}: the model already has LoRA layers other than this adapter's")
    shapes = {}
    for name in doc["layers"]:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{file}: layer {name!r} is not in the model") from None
        linear = layer.base if isinstance(layer, LoRALinear) else layer
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{file}: {name!r} is a {type(linear).__name__}, not a Linear")
        shapes[f"{name}.lora_A"], shapes[f"{name}.lora_B"] = (r, linear.in_features), (linear.out_features, r)
    return shapes


def load_adapter(model: nn.Module, path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[str]:
    """Put a saved adapter into `model`: inject LoRA layers as saved (unless the model has exactly those already,
    with the same r and alpha: they are unmerged first) and copy the matrices in, cast to the model's dtype, unmerged.
    Returns the layer names.

    Raises CheckpointError (naming the file) for a missing or damaged file, a tensor of the wrong name or shape,
    a model of other settings than the adapter's base, or, with `base_dir`, another base folder's weights.
    """
    path = Path(path)
    doc, tensors = read_adapter(path)
    _check_base(model, doc, path, base_dir)
    file = path / "adapter.safetensors"
    want = _adapter_shapes(model, doc, path)
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise CheckpointError(f"{file}: does not fit the model: missing {missing}, unexpected {extra}")
    for k, v in tensors.items():
        if tuple(v.shape) != want[k]:
            raise CheckpointError(f"{file}: {k} has shape {tuple(v.shape)}, the model needs {want[k]}")
    if not lora_layers(model):  # checked first, so a bad adapter leaves the model as it was
        inject_lora(model, targets=doc["layers"], r=doc["r"], alpha=doc["alpha"])
    unmerge_lora(model)  # a merged layer holds the old update in its base weight
    want = lora_state_dict(model)
    with torch.no_grad():
        for k, v in tensors.items():
            want[k].copy_(v)  # lora_state_dict's tensors are detached views of the parameters
    return doc["layers"]
