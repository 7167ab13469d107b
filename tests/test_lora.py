"""storylib.lora against Hugging Face peft (the differential test), and the adapter files on disk.

peft wraps the same nn.Linear modules (of our GPT and of a plain torch module); with the same A and B copied into
both, outputs and gradients (A, B and the input) agree in float64 to 1e-6 (in fact to rounding), and so do the merged
weights (peft's merge_and_unload vs our remove_lora).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from storylib import lora
from storylib.checkpoint import Checkpoint, CheckpointError, _model_tensors, load_weights, write_dir_atomic
from storylib.gpt2 import GPT, GPTConfig

peft = pytest.importorskip("peft")

F64 = torch.float64
TINY = dict(block_size=17, vocab_size=67, n_layer=2, n_head=2, n_embd=12)
TARGETS = ["c_attn", "c_proj", "c_fc"]


class Mixer(nn.Module):
    """A plain torch module with Linear children of odd sizes, for gradients w.r.t. a float input."""

    def __init__(self):
        super().__init__()
        self.fc_in, self.fc_mid, self.fc_out = nn.Linear(7, 13), nn.Linear(13, 11, bias=False), nn.Linear(11, 5)

    def forward(self, x):
        return self.fc_out(torch.tanh(self.fc_mid(torch.tanh(self.fc_in(x)))))


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides})).to(F64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def tokens(seed: int, B: int = 3, T: int = 13) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def peft_twin(model: nn.Module, targets, r: int, alpha: float):
    """(peft model, our model): the same base weights, peft's random A and B (init_lora_weights=False: B is not zero)
    copied into ours."""
    ours = copy.deepcopy(model)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights=False)
    theirs = peft.get_peft_model(model, config)
    lora.inject_lora(ours, targets=targets, r=r, alpha=alpha)
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours).items():
            twin = theirs.base_model.model.get_submodule(name)
            layer.lora_A.copy_(twin.lora_A["default"].weight)  # (r, in), as ours
            layer.lora_B.copy_(twin.lora_B["default"].weight)  # (out, r)
            assert twin.scaling["default"] == pytest.approx(layer.scale)
    return theirs, ours


def lora_grads(model: nn.Module, peft_layout: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            key = name.removeprefix("base_model.model.").replace(".default.weight", "") if peft_layout else name
            out[key] = p.grad
    return out


def test_gpt_outputs_and_gradients_equal_peft():
    theirs, ours = peft_twin(tiny_gpt(1), TARGETS, r=3, alpha=7)
    idx, targets = tokens(2), tokens(3)
    logits_p, loss_p = theirs(idx, targets)
    logits_o, loss_o = ours(idx, targets)
    assert (logits_p - logits_o).abs().max().item() < 1e-6
    assert abs(loss_p.item() - loss_o.item()) < 1e-10
    loss_p.backward()
    loss_o.backward()
    gp, go = lora_grads(theirs, True), lora_grads(ours, False)
    assert set(gp) == set(go) and len(go) == 2 * 4 * TINY["n_layer"]
    for k in go:
        assert go[k].abs().max() > 0, k
        assert (gp[k] - go[k]).abs().max().item() < 1e-6, k
    trainable_p = {n.removeprefix("base_model.model.").replace(".default.weight", "")
                   for n, p in theirs.named_parameters() if p.requires_grad}
    assert trainable_p == {n for n, p in ours.named_parameters() if p.requires_grad}
    assert lora.count_parameters(ours)[0] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


def test_plain_module_gradients_wrt_the_input_equal_peft():
    torch.manual_seed(4)
    theirs, ours = peft_twin(Mixer().to(F64), ["fc_in", "fc_mid", "fc_out"], r=5, alpha=3)
    x = torch.randn(6, 7, dtype=F64)
    xp, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(6, 5, dtype=F64)
    yp, yo = theirs(xp), ours(xo)
    assert (yp - yo).abs().max().item() < 1e-6
    yp.backward(g)
    yo.backward(g)
    assert (xp.grad - xo.grad).abs().max().item() < 1e-6
    gp, go = lora_grads(theirs, True), lora_grads(ours, False)
    for k in go:
        assert (gp[k] - go[k]).abs().max().item() < 1e-6, k


def test_merged_weights_equal_peft_merge_and_unload():
    theirs, ours = peft_twin(tiny_gpt(5), TARGETS, r=4, alpha=16)
    idx = tokens(6)
    want = ours(idx)[0].detach()
    lora.merge_lora(ours)
    assert (ours(idx)[0] - want).abs().max().item() < 1e-10
    names = lora.remove_lora(ours)
    merged = theirs.merge_and_unload()
    sd_p, sd_o = merged.state_dict(), ours.state_dict()
    assert set(sd_p) == set(sd_o)
    for k in sd_o:
        assert (sd_p[k] - sd_o[k]).abs().max().item() < 1e-12, k
    assert (merged(idx)[0] - ours(idx)[0]).abs().max().item() < 1e-10
    assert all(type(ours.get_submodule(n)) is nn.Linear for n in names)


def test_default_init_matches_peft():
    """B = 0 in both; A uniform within ±1/√in (Kaiming with a = √5), in both."""
    model = tiny_gpt(7)
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    lora.inject_lora(model, r=8, alpha=16)
    for name, layer in lora.lora_layers(model).items():
        twin = theirs.base_model.model.get_submodule(name)
        bound = 1 / math.sqrt(layer.base.in_features)
        for A, B in ((layer.lora_A, layer.lora_B), (twin.lora_A["default"].weight, twin.lora_B["default"].weight)):
            assert torch.count_nonzero(B) == 0
            assert A.abs().max() <= bound and A.abs().max() > 0.5 * bound
    gauss = lora.LoRALinear(nn.Linear(40, 30), r=4, init="gaussian")
    assert 0.15 < gauss.lora_A.std().item() < 0.35  # std 1 / r


# ----------------------------------------------------------------------------- injection rules


def test_injection_refuses_tied_weights_twice_and_unknown_targets():
    model = tiny_gpt(8)
    with pytest.raises(ValueError, match="lm_head"):
        lora.inject_lora(model, targets=("lm_head",))
    with pytest.raises(ValueError, match="attn.c_nope"):
        lora.inject_lora(model, targets=("c_fc", "attn.c_nope"))
    assert not lora.lora_layers(model), "a refused injection leaves the model unchanged"
    lora.inject_lora(model, targets=("transformer.h.1.mlp.c_fc",), r=2)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.inject_lora(model)
    lora.mark_only_lora_trainable(model, extra=("ln_f",))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "transformer.h.1.mlp.c_fc.lora_A", "transformer.h.1.mlp.c_fc.lora_B",
        "transformer.ln_f.weight", "transformer.ln_f.bias"}


# ----------------------------------------------------------------------------- adapter files


def adapted(seed: int, r: int = 3, **overrides) -> GPT:
    model = tiny_gpt(seed, **overrides)
    lora.inject_lora(model, r=r, alpha=2 * r)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.normal_(std=0.3)
    return model


def test_adapter_round_trip(tmp_path):
    model, idx = adapted(9), tokens(10)
    want = model(idx)[0].detach()
    out = lora.save_adapter(model, tmp_path / "ad64", {"lr": 1e-3}, dtype=F64)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "adapter.safetensors", "adapter_config.json"]
    doc = json.loads((out / "adapter_config.json").read_text())
    assert (doc["r"], doc["alpha"], doc["config"], doc["dtype"]) == (3, 6.0, {"lr": 1e-3}, "float64")
    assert doc["layers"] == list(lora.lora_layers(model)) and doc["base"]["model"]["n_embd"] == TINY["n_embd"]
    fresh = tiny_gpt(9)
    assert lora.load_adapter(fresh, out) == doc["layers"]
    assert torch.equal(fresh(idx)[0], want)
    lora.merge_lora(fresh)
    lora.load_adapter(fresh, out)  # a model that already has these layers (merged): unmerged, loaded again
    assert not any(layer.merged for layer in lora.lora_layers(fresh).values())
    assert (fresh(idx)[0] - want).abs().max().item() < 1e-12  # W + ΔW - ΔW: rounding only
    half = lora.save_adapter(model, tmp_path / "ad16")
    assert (half / "adapter.safetensors").stat().st_size < 0.4 * (out / "adapter.safetensors").stat().st_size
    other = tiny_gpt(9)
    lora.load_adapter(other, half)
    assert (other(idx)[0] - want).abs().max().item() < 1e-2


def test_adapter_errors(tmp_path):
    model = adapted(11)
    out = lora.save_adapter(model, tmp_path / "ad")
    with pytest.raises(CheckpointError, match="no such adapter"):
        lora.load_adapter(tiny_gpt(11), tmp_path / "nope")
    with pytest.raises(CheckpointError, match="block_size"):  # same shapes, another base model
        lora.load_adapter(tiny_gpt(11, block_size=19), out)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora.save_adapter(tiny_gpt(11), tmp_path / "empty")
    # damaged and missing files are named
    data = bytearray((out / "adapter.safetensors").read_bytes())
    data[-3] ^= 0xFF
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in out.iterdir():
        (bad / f.name).write_bytes(bytes(data) if f.name == "adapter.safetensors" else f.read_bytes())
    with pytest.raises(CheckpointError, match="adapter.safetensors: corrupt"):
        lora.load_adapter(tiny_gpt(11), bad)
    (bad / "adapter.safetensors").write_bytes((out / "adapter.safetensors").read_bytes())
    (bad / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        lora.load_adapter(tiny_gpt(11), bad)


def test_adapter_shape_and_base_folder_mismatch(tmp_path):
    torch.manual_seed(12)
    small = Mixer().to(F64)
    lora.inject_lora(small, targets=["fc_mid"], r=2)
    out = lora.save_adapter(small, tmp_path / "mixer")
    wide = Mixer().to(F64)
    wide.fc_mid = nn.Linear(13, 12, bias=False)
    with pytest.raises(CheckpointError, match=r"fc_mid.lora_B has shape \(11, 2\), the model needs \(12, 2\)"):
        lora.load_adapter(wide, out)
    assert not lora.lora_layers(wide), "a refused adapter leaves the model unchanged"
    base_a = write_dir_atomic(tmp_path / "base_a", {"model.safetensors": b"weights a"})
    base_b = write_dir_atomic(tmp_path / "base_b", {"model.safetensors": b"weights b"})
    model = adapted(13)
    out = lora.save_adapter(model, tmp_path / "ad", base_dir=base_a)
    lora.load_adapter(tiny_gpt(13), out, base_dir=base_a)
    with pytest.raises(CheckpointError, match="made for the base"):
        lora.load_adapter(tiny_gpt(13), out, base_dir=base_b)


def test_removed_lora_is_a_plain_gpt_for_checkpoints(tmp_path):
    model, idx = adapted(14), tokens(15)
    want = model(idx)[0].detach()
    lora.remove_lora(model)
    tensors = _model_tensors(model)  # what save_checkpoint / export_model write
    plain = tiny_gpt(99)
    load_weights(plain, Checkpoint(tmp_path, {}, tensors, {}, None))  # strict: same names and shapes
    assert (plain(idx)[0] - want).abs().max().item() < 1e-10
