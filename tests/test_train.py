"""storylib.train and storylib.checkpoint: configs, a tiny run whose loss falls, exact resume after a SIGKILL,
checkpoints that refuse to be misread, load_model / export_model, and GPTConfig.fused (PyTorch's kernels) against the
hand-written model.

Synthetic stories only (storylib.data.synthetic_stories), tiny models, CPU; nothing is downloaded and ../shared is
never read. The resume test runs the trainer in subprocesses with one thread each, as a user's runs would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # storylib is imported from the repo folder, not installed (see pyproject.toml)

from storylib import gpt2  # noqa: E402
from storylib.checkpoint import CheckpointError, export_model, load_model, save_checkpoint  # noqa: E402
from storylib.data import synthetic_stories  # noqa: E402
from storylib.gpt2 import GPT, GPTConfig, bits_per_byte  # noqa: E402
from storylib.tokenizer import RegexTokenizer, eot_id  # noqa: E402
from storylib.train import ConfigError, TrainConfig, load_config, load_tokenizer, main, train  # noqa: E402

TINY = """
[model]
n_layer = 2
n_head = 2
n_embd = 24
block_size = 24
dropout = 0.1
fused = {fused}

[data]
data = "synthetic"
tokenizer = "{tokenizer}"
n_train_stories = 120
n_val_stories = 12
eval_stories = 6

[optim]
batch_size = 6
max_steps = {steps}
lr = 3e-3
min_lr = 3e-4
warmup_steps = 3

[system]
device = "cpu"
dtype = "fp32"

[run]
out_dir = "{out_dir}"
seed = 7
log_interval = 1
eval_interval = 4
ckpt_interval = 4
"""


def write_config(path: Path, out_dir: Path, steps: int = 12, tokenizer: str = "bytes", fused: bool = True) -> Path:
    path.write_text(TINY.format(out_dir=out_dir.as_posix(), steps=steps, tokenizer=tokenizer,
                                fused=str(fused).lower()), encoding="utf-8")
    return path


def log_events(out_dir: Path) -> list[tuple]:
    """The numbers of train_log.jsonl that must not depend on interruptions: float reprs, compared exactly."""
    out = []
    for line in (out_dir / "train_log.jsonl").read_text().splitlines():
        e = json.loads(line)
        out.append((e["event"], e["step"], repr(e.get("loss")), repr(e.get("val_loss")), repr(e.get("val_bpb")),
                    e["tokens_seen"]))
    return out


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory) -> Path:
    """A 300-token BPE tokenizer (plus <|endoftext|> = 300) trained on synthetic stories, saved as JSON."""
    tok = RegexTokenizer()
    tok.train("\n".join(synthetic_stories(60, seed=3)), 300)
    tok.register_special_tokens({"<|endoftext|>": 300})
    return tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_bpe) -> tuple[Path, Path]:
    """(config, out_dir) of a finished 20-step run with the small BPE tokenizer, made once for several tests."""
    d = tmp_path_factory.mktemp("run")
    cfg_path = write_config(d / "tiny.toml", d / "out", steps=20, tokenizer=small_bpe.as_posix())
    train(load_config(cfg_path), quiet=True)
    return cfg_path, d / "out"


def copy_run(run: tuple[Path, Path], dest: Path) -> tuple[Path, Path]:
    cfg_path, out_dir = run
    shutil.copytree(out_dir, dest / "out")
    tokenizer = load_config(cfg_path).tokenizer
    return write_config(dest / "tiny.toml", dest / "out", steps=24, tokenizer=tokenizer), dest / "out"


# ----------------------------------------------------------------------------- the fast path of Chapter 5's model


def test_fused_model_matches_the_hand_written_one():
    torch.manual_seed(0)
    cfg = dict(block_size=16, vocab_size=37, n_layer=2, n_head=3, n_embd=24)
    ref = GPT(GPTConfig(**cfg)).double()
    fast = GPT(GPTConfig(**cfg, fused=True)).double()
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    for T in (16, 9):  # the whole block, and shorter than it
        idx = torch.randint(0, 37, (3, T), generator=g)
        tgt = torch.randint(0, 37, (3, T), generator=g)
        (la, lossa), (lb, lossb) = ref(idx, tgt), fast(idx, tgt)
        assert torch.allclose(la, lb, rtol=0, atol=1e-10), f"fused logits differ by {(la - lb).abs().max():.2e}"
        ref.zero_grad(), fast.zero_grad()
        lossa.backward(), lossb.backward()
        for (name, pa), pb in zip(ref.named_parameters(), fast.parameters(), strict=True):
            assert torch.allclose(pa.grad, pb.grad, rtol=0, atol=1e-10), f"gradient of {name} differs with fused=True"


def test_bits_per_byte_with_a_bpe_tokenizer(small_bpe):
    tok = RegexTokenizer.load(small_bpe)
    eot = eot_id(tok)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=320, n_layer=1, n_head=2, n_embd=16)).double()
    stories = synthetic_stories(5, seed=11)
    got = bits_per_byte(model, stories, encode_fn=tok.encode_ordinary, eot=eot)
    nats = 0.0  # the oracle: each story on its own, [EOT] + ids + [EOT], all n + 1 predictions scored
    for s in stories:
        ids = torch.tensor([[eot, *tok.encode_ordinary(s), eot]])
        assert ids.shape[1] <= 257, "this oracle needs stories that fit one window"
        logits, _ = model(ids[:, :-1])
        nats += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    want = nats / math.log(2) / sum(len(s.encode()) for s in stories)
    assert abs(got - want) < 1e-9, f"bits per byte should be {want}, got {got}"
    # the default is still Chapter 5's bytes
    byte_model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=16)).double()
    assert bits_per_byte(byte_model, stories) == bits_per_byte(byte_model, stories, encode_fn=gpt2.encode, eot=256)


# ----------------------------------------------------------------------------- configs


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 1e-3\nn_lyer = 3\n")
    with pytest.raises(ConfigError, match="n_lyer.*did you mean 'n_layer'"):
        load_config(bad)
    bad.write_text("[model]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"'lr' belongs in \[optim\]"):
        load_config(bad)
    bad.write_text("[trainer]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown table \[trainer\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match="batch_size must be int"):
        load_config(None, ["batch_size=1.5"])
    with pytest.raises(ConfigError, match="multiple of n_head"):
        load_config(None, ["n_embd=30", "n_head=4"])
    cfg = load_config(None, ["optim.lr=3e-4", "device=cpu", "compile=true"])
    assert (cfg.lr, cfg.device, cfg.compile) == (3e-4, "cpu", True)
    for name in ("storyteller", "cpu_learner", "tinystories_full"):  # the shipped configs parse
        assert isinstance(load_config(ROOT / "configs" / f"{name}.toml"), TrainConfig)


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 'blue'\n")
    assert main([str(bad)]) == 2
    assert "unknown config key 'colour'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- training


def test_tiny_run_learns_and_writes_checkpoints(finished_run):
    _, out = finished_run
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    assert len(losses) == 20, f"log_interval = 1 should log all 20 steps, got {len(losses)}"
    assert losses[-1] < losses[0] - 0.5, f"the training loss should fall, got {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert evals[0]["step"] == 0 and evals[-1].get("final"), "evaluations at the start and (final) at the end"
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"], "validation bits per byte should fall"
    assert all(k in events[1] for k in ("step", "loss", "lr", "tokens_seen", "elapsed", "tokens_per_s"))
    for name in ("last", "best"):
        names = {p.name for p in (out / name).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "SHA256SUMS"} <= names
    assert "trainer_state.safetensors" in {p.name for p in (out / "last").iterdir()}
    assert not list(out.glob(".*")), "no temporary folders should be left behind"


# `llm101n train CONFIG --quiet` that SIGKILLs itself after step 6, as a power cut would (no cleanup, no atexit):
# the kill is train's on_step callback, so the trainer itself has no crash switch
KILLED_AFTER_STEP_6 = """
import os, signal, sys
from storylib.train import load_config, train

def power_cut(state):
    if state.step == 6:
        os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[1]), quiet="--quiet" in sys.argv, on_step=power_cut)
"""


def test_kill_and_resume_reproduces_the_run_bit_for_bit(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "storylib.train"]

    def start(cfg: Path, *args: str, program: Sequence[str] = cmd) -> subprocess.Popen:
        return subprocess.Popen([*program, str(cfg), "--quiet", *args], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(p: subprocess.Popen) -> tuple[int, str]:
        _, err = p.communicate(timeout=120)
        return p.returncode, err

    b_cfg = write_config(tmp_path / "b.toml", tmp_path / "b")
    a = start(write_config(tmp_path / "a.toml", tmp_path / "a"))  # uninterrupted, side by side with b
    killed = start(b_cfg, program=[sys.executable, "-c", KILLED_AFTER_STEP_6])  # killed after step 6; last/ is step 4
    (rc_a, err_a), (rc_b, err_b) = finish(a), finish(killed)
    assert rc_a == 0, err_a
    assert rc_b == -9, f"the run should have been killed, rc = {rc_b}: {err_b}"
    steps_logged = [e[1] for e in log_events(tmp_path / "b") if e[0] == "train"]
    assert steps_logged[-1] == 6, "the killed run should have logged past its last checkpoint"
    assert json.loads((tmp_path / "b" / "last" / "trainer_state.json").read_text())["step"] == 4
    rc, err = finish(start(b_cfg, "--resume"))
    assert rc == 0, err
    want, got = log_events(tmp_path / "a"), log_events(tmp_path / "b")
    first = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), None)
    assert first is None and len(want) == len(got), (
        f"the resumed run should log exactly what the uninterrupted run logged; first difference at line {first}: "
        f"{want[first] if first is not None else len(want)} vs {got[first] if first is not None else len(got)}")
    for name in ("model.safetensors", "trainer_state.safetensors"):
        assert (tmp_path / "a" / "last" / name).read_bytes() == (tmp_path / "b" / "last" / name).read_bytes(), (
            f"last/{name} should be identical after an interrupted and resumed run")


def test_a_crash_during_a_save_leaves_a_usable_checkpoint(finished_run, tmp_path):
    from storylib.checkpoint import find_checkpoint, read_checkpoint

    _, out = copy_run(finished_run, tmp_path)
    (out / "last").rename(out / ".last.old")  # the moment between moving the old folder aside and the new one in
    (out / ".last.tmp").mkdir()  # and a half-written new one
    found = find_checkpoint(out)
    assert found == out / ".last.old", f"resume should fall back to the previous checkpoint, found {found}"
    assert read_checkpoint(found, resume=True).trainer["step"] == 20


def test_training_refuses_to_overwrite_a_checkpoint(finished_run, tmp_path):
    cfg_path, out = copy_run(finished_run, tmp_path)
    with pytest.raises(CheckpointError, match="--resume"):
        train(load_config(cfg_path), quiet=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(load_config(cfg_path, [f"out_dir={(tmp_path / 'empty').as_posix()}"]), resume=True, quiet=True)


# ----------------------------------------------------------------------------- broken and foreign checkpoints


@pytest.mark.parametrize("damage", ["truncate_model", "garbage_state", "garbage_state_resummed", "no_sums"])
def test_corrupt_checkpoint_is_named_and_nothing_is_overwritten(finished_run, tmp_path, damage):
    cfg_path, out = copy_run(finished_run, tmp_path)
    last = out / "last"
    if damage == "truncate_model":
        data = (last / "model.safetensors").read_bytes()
        (last / "model.safetensors").write_bytes(data[: len(data) // 2])
        culprit = "model.safetensors"
    elif damage.startswith("garbage_state"):
        (last / "trainer_state.json").write_text("{not json")
        culprit = "trainer_state.json"
        if damage == "garbage_state_resummed":  # damage that the checksums do not see: the parser still names it
            lines = (last / "SHA256SUMS").read_text().splitlines()
            digest = hashlib.sha256(b"{not json").hexdigest()
            fixed = [f"{digest}  trainer_state.json" if ln.endswith("  trainer_state.json") else ln for ln in lines]
            (last / "SHA256SUMS").write_text("\n".join(fixed) + "\n")
    else:
        (last / "SHA256SUMS").unlink()
        culprit = "SHA256SUMS"
    before = tree_digest(out)
    with pytest.raises(CheckpointError) as err:
        train(load_config(cfg_path), resume=True, quiet=True)
    assert culprit in str(err.value), f"the error should name {culprit}: {err.value}"
    assert tree_digest(out) == before, "a failed resume must not change anything in out_dir"
    if damage == "truncate_model":
        with pytest.raises(CheckpointError, match="model.safetensors"):
            load_model(last)


def test_resume_with_another_model_or_tokenizer_says_what_differs(finished_run, tmp_path):
    cfg_path, out = copy_run(finished_run, tmp_path)
    before = tree_digest(out)
    with pytest.raises(CheckpointError, match=r"n_embd = 24.*n_embd = 32"):
        train(load_config(cfg_path, ["n_embd=32"]), resume=True, quiet=True)
    with pytest.raises(CheckpointError, match="another tokenizer"):
        train(load_config(cfg_path, ["tokenizer=bytes"]), resume=True, quiet=True)
    assert tree_digest(out) == before
    # settings that may change on resume (here: more steps) continue the run
    result = train(load_config(cfg_path), resume=True, quiet=True)
    assert result["step"] == 24


# ----------------------------------------------------------------------------- using a trained model


def test_load_model_and_export_round_trip(small_bpe, tmp_path):
    cfg = load_config(None, ["n_layer=2", "n_head=2", "n_embd=32", "block_size=16", f"tokenizer={small_bpe}",
                             "data=synthetic", "n_train_stories=10", "fused=false"])
    tok, tok_id = load_tokenizer(cfg.tokenizer)
    torch.manual_seed(3)
    model = GPT(cfg.gpt_config(tok.n_vocab)).eval()
    with torch.no_grad():  # make every tensor distinct from its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(tmp_path / "ckpt", model, cfg, tok, tok_id, {"step": 5})
    loaded, tok2 = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    fast, _ = load_model(tmp_path / "ckpt", fused=True)
    assert fast.config.fused and torch.allclose(fast(torch.tensor([[1, 2, 3]]))[0], model(torch.tensor([[1, 2, 3]]))[0],
                                                atol=1e-5)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight, "lm_head should be tied to wte again"
    text = "Once upon a time, Tom met a dog."
    assert tok2.encode_ordinary(text) == tok.encode_ordinary(text)
    idx = torch.tensor([tok.encode_ordinary(text)[:16]])
    assert torch.equal(loaded(idx)[0], model(idx)[0]), "a loaded model should give identical logits"
    export_model(tmp_path / "ckpt", tmp_path / "export")
    small, _ = load_model(tmp_path / "export")
    half = sum(v.numel() for k, v in model.state_dict().items() if k != "lm_head.weight") * 2
    assert (tmp_path / "export" / "model.safetensors").stat().st_size < half + 4096, "fp16: 2 bytes per weight"
    assert torch.allclose(small(idx)[0], model(idx)[0], atol=2e-3), "fp16 export should be close to the model"
    # a checkpoint of another shape is refused, naming the tensor
    cfg_json = json.loads((tmp_path / "export" / "config.json").read_text())
    cfg_json["model"]["n_embd"] = 16
    (tmp_path / "export" / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(CheckpointError, match="config.json"):  # checksum: the file was edited
        load_model(tmp_path / "export")
