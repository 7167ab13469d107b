"""storylib.datasets plumbing (not graded): shards on disk, encode_stories' layout, the resumable sampler.

Data is made here: synthetic stories and a small RegexTokenizer trained on them. Nothing is downloaded.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from storylib import chat_template, datasets
from storylib.data import synthetic_stories
from storylib.tokenizer import EOT_TOKEN, STORY_SPECIALS, RegexTokenizer, eot_id


@pytest.fixture(scope="module")
def tok() -> RegexTokenizer:
    t = RegexTokenizer()
    t.train("\n".join(synthetic_stories(60, seed=5, unicode=True)), vocab_size=300)
    t.register_special_tokens({s: 300 + i for i, s in enumerate(STORY_SPECIALS)})
    return t


def test_encode_stories_layout_matches_the_slow_tokenizer(tok):
    stories = synthetic_stories(23, seed=11, unicode=True) + ["<|endoftext|> is text here", ""]
    arr = datasets.encode_stories(stories, tok)
    eot = eot_id(tok)
    assert arr.dtype == np.uint16
    # the layout is EOT, story, EOT, story, ..., EOT
    want = []
    for s in stories:
        want += [eot] + tok.encode_ordinary(s)
    want.append(eot)
    assert arr.tolist() == want
    assert datasets.encode_stories([], tok).tolist() == [eot]


def test_encode_stories_rejects_a_vocab_too_big_for_uint16(tok):
    big = RegexTokenizer(merges=dict(tok.merges), special_tokens={EOT_TOKEN: 70_000})
    with pytest.raises(ValueError, match="uint16"):
        datasets.encode_stories(["hi"], big)


def test_shard_round_trip_is_a_readonly_memmap(tmp_path):
    rng = np.random.default_rng(0)
    for n in (0, 1, 977):
        toks = rng.integers(0, 2**16, size=n, dtype=np.uint16)
        path = datasets.write_shard(toks, tmp_path / f"s{n}.bin")
        assert not (tmp_path / f"s{n}.bin.tmp").exists()
        assert path.stat().st_size == datasets.HEADER_BYTES + 2 * n
        back = datasets.read_shard(path)
        assert back.dtype == np.uint16 and np.array_equal(back, toks)
        if n:
            assert isinstance(back, np.memmap)
            with pytest.raises(ValueError):
                back[0] = 1  # read-only


def test_write_shard_rejects_ids_out_of_range(tmp_path):
    with pytest.raises(ValueError):
        datasets.write_shard(np.array([1, 2, 65536]), tmp_path / "x.bin")
    with pytest.raises(ValueError):
        datasets.write_shard(np.array([-1, 2]), tmp_path / "x.bin")


def test_read_shard_refuses_corrupt_files(tmp_path):
    toks = np.arange(100, dtype=np.uint16)
    good = datasets.write_shard(toks, tmp_path / "good.bin").read_bytes()
    cases = {
        "magic": b"NOPE" + good[4:],
        "version": good[:4] + struct.pack("<I", 99) + good[8:],
        "truncated": good[:-3],
        "trailing": good + b"\0\0",
        "short": good[:10],
        "dtype": good[:16] + b"float32\0" + good[24:],
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(data)
        with pytest.raises(ValueError):
            datasets.read_shard(p)


def test_write_shards_concatenate_to_the_stream_and_cut_between_stories(tmp_path, tok):
    stories = synthetic_stories(57, seed=3, unicode=True)
    full = datasets.encode_stories(stories, tok)
    paths = datasets.write_shards(stories, tok, tmp_path, prefix="val", shard_tokens=500)
    assert len(paths) > 2
    assert [p.name for p in paths] == [f"val_{i:03d}.bin" for i in range(len(paths))]
    eot = eot_id(tok)
    for p in paths:
        assert datasets.read_shard(p)[0] == eot
    assert np.array_equal(datasets.load_tokens(paths), full)
    one = datasets.write_shards(stories, tok, tmp_path / "one", shard_tokens=10**9)
    assert len(one) == 1 and isinstance(datasets.load_tokens(one), np.memmap)


def test_window_sampler_batches_are_shifted_windows():
    rng = np.random.default_rng(1)
    toks = rng.integers(0, 5000, size=1013, dtype=np.uint16)
    s = datasets.WindowSampler(toks, block_size=17, batch_size=5, seed=3)
    x, y = s.next_batch()
    assert x.dtype == torch.int64 and x.shape == (5, 17) and y.shape == (5, 17)
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = s.window_starts(0, 5)
    for b, st in enumerate(starts):
        assert x[b].tolist() == toks[st:st + 17].tolist()
        assert y[b].tolist() == toks[st + 1:st + 18].tolist()


def test_window_sampler_covers_every_target_once_per_epoch():
    n, T = 1000, 13
    s = datasets.WindowSampler(np.arange(n, dtype=np.uint16), block_size=T, batch_size=1, seed=7)
    w = s.windows_per_epoch
    for epoch in range(3):
        starts = s.window_starts(epoch * w, w)
        targets = np.concatenate([np.arange(a + 1, a + T + 1) for a in starts])
        assert len(set(targets.tolist())) == len(targets) == w * T  # no token twice
        assert targets.max() < n and len(targets) >= n - T  # nearly all tokens


def test_window_sampler_resumes_exactly_even_with_another_batch_size():
    toks = np.random.default_rng(2).integers(0, 300, size=777, dtype=np.uint16)
    a = datasets.WindowSampler(toks, 11, 6, seed=42)
    ref = [a.next_batch() for _ in range(30)]  # crosses several epochs
    b = datasets.WindowSampler(toks, 11, 6, seed=42)
    for _ in range(7):
        b.next_batch()
    state = json.loads(json.dumps(b.state_dict()))
    assert state["seed"] == 42 and state["step"] == 7
    c = datasets.WindowSampler(toks, 11, 6, seed=0)
    c.load_state_dict(state)
    for k in range(7, 30):
        x, y = c.next_batch()
        assert torch.equal(x, ref[k][0]) and torch.equal(y, ref[k][1]), f"batch {k} differs after resume"
    d = datasets.WindowSampler(toks, 11, 3, seed=0)
    d.load_state_dict(state)
    x, _ = d.next_batch()
    assert torch.equal(x, ref[7][0][:3])
    with pytest.raises(ValueError):
        datasets.WindowSampler(toks, 12, 6).load_state_dict(state)
    other = datasets.WindowSampler(toks, 11, 6, seed=43)
    assert not torch.equal(other.next_batch()[0], ref[0][0])


def test_chat_template_rejects_malformed_conversations(tok):
    u, a, sy = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
    for bad in ([a], [u, u], [sy, a], [u, a, a], [u, sy], [{"role": "user"}], [{"role": "bot", "content": "x"}]):
        with pytest.raises(ValueError):
            chat_template.render_chat(bad, tok)
    with pytest.raises(ValueError):
        chat_template.render_chat([u, a], tok, add_generation_prompt=True)
    ids, mask = chat_template.render_chat([sy, u, a], tok)
    assert chat_template.parse_chat(ids, tok) == [sy, u, a]
    assert chat_template.parse_chat(chat_template.render_chat([u], tok, add_generation_prompt=True)[0], tok) == [u]


def test_packed_sampler_masks_seams_and_resumes():
    docs = [list(range(k)) for k in (5, 0, 17, 3, 9, 30, 2)]
    packed = datasets.pack_documents(docs, 11, eot=99, pad=98)
    s = datasets.PackedSampler(packed, batch_size=3, seed=1)
    ref = [s.next_batch() for _ in range(6)]
    x, y, seg = ref[0]
    assert x.shape == y.shape == seg.shape == (3, 11)
    assert ((y == -100) == torch.from_numpy(~packed.loss_mask[s._rows(0, 3)])).all()
    t = datasets.PackedSampler(packed, batch_size=3, seed=0)
    state = json.loads(json.dumps(s.state_dict()))
    s2 = datasets.PackedSampler(packed, batch_size=3, seed=1)
    for _ in range(2):
        s2.next_batch()
    t.load_state_dict(s2.state_dict())
    for k in range(2, 6):
        assert all(torch.equal(u, v) for u, v in zip(t.next_batch(), ref[k], strict=True))
    assert state["step"] == 6
    pos = packed.position_ids
    assert (pos[packed.segments[:, :-1] != np.roll(packed.segments[:, :-1], 1, axis=1)] == 0).all()


def test_filter_and_dedup_helpers():
    stories = synthetic_stories(30, seed=2)
    kept, reasons = datasets.filter_stories(stories + ["too short", "cut off in the middle of a sentence and"])
    assert reasons["too_short"] >= 1 and reasons["unfinished"] >= 1 and len(kept) <= 30
    noisy = stories + [s.upper() for s in stories[:5]] + [s.replace(" the ", " a ", 1) for s in stories[:5]]
    keep = datasets.dedup(noisy, threshold=0.6, num_perm=128, bands=32)
    assert keep[:1] == [0] and all(i < 30 or i >= 35 for i in keep)


def test_instruct_command_writes_reproducible_jsonl(tmp_path, monkeypatch):
    from storylib.data import write_fixture

    monkeypatch.setenv("STORYLIB_DATA", str(write_fixture(tmp_path / "data", n_train=40, n_valid=5)))
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert datasets.main(["instruct", "--out", str(out1), "--seed", "3"]) == 0
    assert datasets.main(["instruct", "--out", str(out2), "--seed", "3"]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    rows = [json.loads(line) for line in out1.read_text().splitlines()]
    assert len(rows) == 40 and {"instruction", "response", "features"} <= rows[0].keys()
