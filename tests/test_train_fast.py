"""The trainer's speed options: the fused linear + cross-entropy (storylib.precision.linear_cross_entropy,
fused_loss, TrainConfig.loss_chunks) against F.cross_entropy in float64, and the new TrainConfig fields.
Their speed is measured in bench/train_throughput.py, on a GPU, never here."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from storylib.gpt2 import GPT, GPTConfig
from storylib.precision import fused_loss, linear_cross_entropy
from storylib.train import ConfigError, TrainConfig, train


def _inputs(seed: int, rows: tuple[int, ...], C: int, V: int):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(*rows, 1, generator=g, dtype=torch.float64) * 3  # rows of uneven size
    h = (torch.randn(*rows, C, generator=g, dtype=torch.float64) * scale).requires_grad_()
    w = (torch.randn(V, C, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    t = torch.randint(0, V, rows, generator=g)
    return h, w, t, g


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 7, 500])  # 500 > rows: one row a chunk
def test_linear_cross_entropy_equals_cross_entropy_in_float64(n_chunks):
    h, w, t, g = _inputs(n_chunks, (5, 9), 24, 37)  # 45 rows: 2 and 7 chunks are uneven
    t[1, 4], t[3, :] = -100, -100  # ignored positions, as F.cross_entropy's ignore_index
    dy = torch.rand((), generator=g, dtype=torch.float64) + 0.5  # a weight on the loss: backward scales by it

    loss = linear_cross_entropy(h, w, t, n_chunks)
    (loss * dy).backward()
    got = loss.detach(), h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h @ w.T).view(-1, 37), t.view(-1))
    (ref * dy).backward()

    assert torch.allclose(got[0], ref.detach(), rtol=1e-13, atol=0), f"loss {got[0]} != {ref}"
    assert torch.allclose(got[1], h.grad, rtol=1e-12, atol=1e-15), f"dh off by {(got[1] - h.grad).abs().max():.2e}"
    assert torch.allclose(got[2], w.grad, rtol=1e-12, atol=1e-15), f"dw off by {(got[2] - w.grad).abs().max():.2e}"
    assert got[1][3].abs().max() == 0  # an all-ignored row gets no gradient


def test_linear_cross_entropy_in_bf16_autocast_is_close_to_the_unfused_loss():
    h, w, t, _ = _inputs(11, (64,), 48, 200)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h32, w32, t, 4)
    fused.backward()
    assert fused.dtype == torch.float32 and h32.grad.dtype == torch.float32 and w32.grad.dtype == torch.float32
    ref = F.cross_entropy(h @ w.T, t)
    ref.backward()
    assert abs(fused.item() - ref.item()) / ref.item() < 1e-2  # bf16 matmuls: ~3 significant digits
    for a, b in ((h32.grad, h.grad), (w32.grad, w.grad)):
        assert ((a.double() - b).norm() / b.norm()).item() < 3e-2


def test_linear_cross_entropy_refuses_zero_chunks():
    h, w, t, _ = _inputs(0, (4,), 8, 10)
    with pytest.raises(ValueError, match="n_chunks"):
        linear_cross_entropy(h, w, t, 0)


@pytest.mark.parametrize("fused", [True, False])
def test_gpt_fused_loss_has_forwards_value_and_gradients(fused):
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=16, vocab_size=83, n_layer=2, n_head=2, n_embd=24, fused=fused)).double()
    idx, tgt = torch.randint(0, 83, (3, 13)), torch.randint(0, 83, (3, 13))
    _, ref = model(idx, tgt)
    ref.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = fused_loss(model, idx, tgt, n_chunks=5)
    loss.backward()
    assert torch.allclose(loss, ref, rtol=1e-13, atol=0)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[name], rtol=1e-10, atol=1e-14), f"gradient of {name} differs"
    with pytest.raises(ValueError, match="block_size"):
        fused_loss(model, torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, 17, dtype=torch.long))


def _run(tmp_path, name: str, **settings) -> list[float]:
    cfg = TrainConfig(data="synthetic", n_train_stories=30, n_val_stories=2, eval_stories=2, tokenizer="bytes",
                      n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_steps=6, warmup_steps=2,
                      lr=3e-3, device="cpu", log_interval=1, out_dir=str(tmp_path / name), **settings).validate()
    train(cfg, quiet=True)
    events = [json.loads(line) for line in open(tmp_path / name / "train_log.jsonl")]
    return [e["loss"] for e in events if e["event"] == "train"]


def test_training_with_the_fused_loss_follows_the_plain_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plain = _run(tmp_path, "plain")
    fast = _run(tmp_path, "fast", loss_chunks=3)
    assert len(plain) == len(fast) == 6
    assert max(abs(a - b) for a, b in zip(plain, fast, strict=True)) < 1e-4, (plain, fast)
    assert fast[-1] < fast[0]


@pytest.mark.parametrize("which", ["lm_head", "all"])
def test_fp8_training_follows_the_plain_run(tmp_path, monkeypatch, which):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("storylib.train.fp8_supported", lambda device: True)  # a CPU emulates the FP8 matmuls
    plain = _run(tmp_path, "plain")
    fp8 = _run(tmp_path, which, fp8=which)
    gap = max(abs(a - b) for a, b in zip(plain, fp8, strict=True))
    assert 0 < gap < 0.05, (which, plain, fp8)  # FP8 rounding changes the losses a little, and only a little
    assert fp8[-1] < fp8[0]


@pytest.mark.parametrize("key, value, match", [("loss_chunks", -1, "loss_chunks"),
                                                ("compile_mode", "reduce-overhead", "compile_mode"),
                                                ("fp8", True, "fp8 must be str"), ("fp8", "mlp", "fp8 must be in")])
def test_speed_options_are_checked(key, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{key: value}).validate()


def test_muon_trains_resumes_exactly_and_exports(tmp_path, monkeypatch):
    from storylib.checkpoint import load_model
    from storylib.optim import MuonAdamW

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def cfg(name: str) -> TrainConfig:
        return TrainConfig(data="synthetic", n_train_stories=30, n_val_stories=2, eval_stories=2, tokenizer="bytes",
                           n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_steps=7, warmup_steps=2,
                           lr=3e-3, optimizer="muon", muon_lr=0.03, muon_momentum=0.9, ckpt_interval=3,
                           device="cpu", log_interval=1, out_dir=str(tmp_path / name)).validate()

    class Crash(Exception):
        pass

    def crash_at_5(state):
        if state.step == 5:  # after the checkpoint at step 3: the resumed run redoes steps 4 and 5
            raise Crash

    train(cfg("straight"), quiet=True)
    with pytest.raises(Crash):
        train(cfg("resumed"), quiet=True, on_step=crash_at_5)
    train(cfg("resumed"), resume=True, quiet=True)
    losses = [[e["loss"] for e in map(json.loads, open(tmp_path / d / "train_log.jsonl")) if e["event"] == "train"]
              for d in ("straight", "resumed")]
    assert len(losses[0]) == 7 and losses[0] == losses[1], "a resumed Muon run computes the uninterrupted losses"
    assert losses[0][-1] < losses[0][0]

    from storylib.train import setup

    run = setup(cfg("inspect"), quiet=True)
    assert isinstance(run.optimizer, MuonAdamW)
    muon = {id(p) for g in run.optimizer.muon.param_groups for p in g["params"]}
    for name, p in run.model.named_parameters():
        hidden = p.dim() == 2 and name.startswith("transformer.h.")
        assert (id(p) in muon) == hidden, f"{name}: Muon takes the blocks' matrices only"
    model, _ = load_model(tmp_path / "resumed" / "best")  # the same architecture and state_dict: the chat loads it
    assert model.state_dict().keys() == run.model.state_dict().keys()
    with pytest.raises(ConfigError, match="optimizer must be in"):
        TrainConfig(optimizer="sgd").validate()
