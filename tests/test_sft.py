"""storylib.sft on Chapter 7's trainer: data = "chat", init_from, LoRA checkpoints, exact resume, evaluation, and
the chat model loader. Tiny models trained here on synthetic stories (storylib.data.write_fixture); the course's
tokenizer (it has the chat specials)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from storylib import sft
from storylib.checkpoint import load_model, read_checkpoint
from storylib.data import load_stories, write_fixture
from storylib.train import ConfigError, load_config, train

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "models" / "storyteller" / "tokenizer.json")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny base model (1 block, width 32, context 384) trained 2 steps on synthetic stories: its best/ folder."""
    d = tmp_path_factory.mktemp("base")
    cfg = load_config(None, ["data=synthetic", "n_train_stories=30", "n_val_stories=4", "eval_stories=4",
                             "n_layer=1", "n_head=2", "n_embd=32", "block_size=384", f"tokenizer={TOKENIZER!r}",
                             "batch_size=2", "max_steps=2", "warmup_steps=0", "device=cpu", f"out_dir={d!s}"])
    train(cfg, quiet=True)
    return d / "best"


@pytest.fixture
def stories(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYLIB_DATA", str(write_fixture(tmp_path / "tinystories", n_train=50, n_valid=8)))


def sft_config(base: Path, out: Path, *extra: str):
    return load_config(None, ["data=chat", f"init_from={base!s}", "n_train_stories=50", "n_val_stories=6",
                              "eval_stories=3", "plain_val_stories=4", "batch_size=3", "max_steps=4",
                              "warmup_steps=1", "eval_interval=2", "ckpt_interval=2", "log_interval=1", "device=cpu",
                              "dropout=0.0", f"out_dir={out!s}", *extra])


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_chat_sampler_epochs_and_state():
    examples = [([i, i + 1, i + 2], [0, 1, 1], 3) for i in range(7)]
    s = sft.ChatSampler(examples, block_size=4, batch_size=3, pad_id=99, seed=5)
    seen = [int(x[0]) for _ in range(7) for x in s.next_batch()[0]]  # 21 rows: 3 epochs of 7
    for e in range(3):
        assert sorted(seen[7 * e : 7 * e + 7]) == list(range(7)), "each epoch visits every example once"
    state = s.state_dict()
    after = [s.next_batch() for _ in range(3)]
    t = sft.ChatSampler(examples, block_size=4, batch_size=3, pad_id=99, seed=5)
    t.load_state_dict(state)
    again = [t.next_batch() for _ in range(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(after, again, strict=True))
    with pytest.raises(ValueError):
        sft.ChatSampler(examples[:3], 4, 3, 99, seed=5).load_state_dict(state)


def test_config_checks():
    with pytest.raises(ConfigError, match="init_from"):
        load_config(None, ["data=chat", "lora_rank=4"])
    with pytest.raises(ConfigError, match="weight_decay"):
        load_config(None, ["data=chat", "lora_rank=4", "init_from=models/storyteller"])
    with pytest.raises(ConfigError, match="data must be"):
        load_config(None, ["data=chats"])


def test_lora_run_on_the_trainer(base, stories, tmp_path):
    out = tmp_path / "lora"
    result = train(sft_config(base, out, "lora_rank=2", "lora_alpha=4", "weight_decay=0", "chat_seeds=2"), quiet=True)
    events = log(out)
    final = [e for e in events if e.get("final")]
    assert len(final) == 1 and 0 < final[0]["plain_val_bpb"] < 20, "an SFT run scores plain stories at the end"
    assert result["val_stories"] > 0
    # best/: the merged plain model, and adapter/ that gives the same model back on its base
    merged, tok = load_model(out / "best")
    chat, _ = sft.load_chat_model(out / "best" / "adapter")
    x = torch.randint(0, tok.n_vocab, (2, 17))
    assert (merged(x)[0] - chat(x)[0]).abs().max() < 1e-2, "the adapter (fp16) + base = the merged best/"
    # the base weights did not move; the adapters did
    last = read_checkpoint(out / "last").model
    plain = read_checkpoint(base).model
    w = "transformer.h.0.attn.c_attn"
    assert torch.equal(last[f"{w}.base.weight"], plain[f"{w}.weight"].float())
    assert last[f"{w}.lora_B"].abs().sum() > 0
    rows = sft.chat_token_rows(tok)
    others = [i for i in range(tok.n_vocab) if i not in rows]
    wte = "transformer.wte.weight"
    assert torch.equal(last[wte][others], plain[wte][others].float()), "only the chat tokens' embeddings train"
    assert not torch.equal(last[wte][rows], plain[wte][rows].float())


def test_full_finetune_resumes_exactly(base, stories, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(sft_config(base, straight, "max_steps=6"), quiet=True)

    class Crash(Exception):
        pass

    def crash_at_4(state):
        if state.step == 4:
            raise Crash

    with pytest.raises(Crash):
        train(sft_config(base, resumed, "max_steps=6"), quiet=True, on_step=crash_at_4)
    train(sft_config(base, resumed, "max_steps=6"), resume=True, quiet=True)
    losses = [[e["loss"] for e in log(d) if e["event"] == "train"] for d in (straight, resumed)]
    assert losses[0] == losses[1], "a resumed SFT run computes the losses of an uninterrupted one"
    model, _ = load_model(straight / "best")
    assert model.config.n_layer == 1 and model.config.block_size == 384, "init_from's architecture"


def test_evaluate_and_baseline(base, stories):
    from storylib.conversations import build_conversations

    model, tok = load_model(base)
    convs = build_conversations(load_stories("valid", limit=4), seed=0)
    for run in (sft.evaluate, sft.evaluate_base):
        r = run(model, tok, convs, plain_stories=load_stories("valid", limit=2), max_new_tokens=6)
        assert r["n_conversations"] == 4 and r["by_kind"]["counts"]["create"] == 4
        want = {"create_all_words", "rename_done", "ends_with_end", "response_bpb", "plain_val_bpb"}
        assert want <= set(r["metrics"])
        assert all(len(rec["reply"]) >= 0 and "checks" in rec for rec in r["records"])
    assert r["metrics"]["ends_with_end"] is None, "the base model has no <|end|>: n/a"
    assert r["metrics"]["rename_done"] is None


def test_load_chat_model_errors(tmp_path):
    from storylib.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="neither an adapter"):
        (tmp_path / "empty").mkdir()
        sft.load_chat_model(tmp_path / "empty")
