"""storylib.preferences (Chapter 15 §15.1): the programmatic reward on hand-made replies, sampling, preference pairs
and their file. A tiny random GPT with the course's tokenizer (it has the chat specials) stands in for the model."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from storylib import preferences as P

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "models" / "storyteller" / "tokenizer.json")

CREATE = {"kind": "create", "words": ["ball", "tree", "happy"], "character": "a dog named Max", "name": "Max",
          "character_kind": "dog", "dialogue": True, "happy": True, "n_sentences": None, "beginning": False}
GOOD = ("Once upon a time, there was a dog named Max. Max had a red ball. One day, Max took his ball to the big "
        "tree in the park. He threw the ball up high and it got stuck in the tree. Max barked and barked. A little "
        "girl came by. \"I can help you!\" she said. She climbed up the tree and got the ball down. Max wagged his "
        "tail. They played with the ball all day long. Max and the girl were happy friends, and they smiled.")


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = "the a dog cat ran sat jumped big small red blue sun moon hill park boy girl played saw".split()
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def test_a_reply_that_meets_every_rule_gets_the_maximum():
    r = P.reward(CREATE, GOOD, stopped=True)
    assert set(r["terms"]) == {"word_recall", "character", "dialogue", "happy", "stop", "length", "repetition"}
    assert r["total"] == pytest.approx(1.0)
    assert all(v == 1.0 for v in r["terms"].values())


def test_each_term_moves_the_right_way():
    best = P.reward(CREATE, GOOD, True)["total"]
    worse = {
        "stop": P.reward(CREATE, GOOD, stopped=False),
        "word_recall": P.reward(CREATE, GOOD.replace("tree", "bush"), True),
        "character": P.reward(CREATE, GOOD.replace("Max", "Sam"), True),
        "dialogue": P.reward(CREATE, GOOD.replace('"', ""), True),
        "happy": P.reward(CREATE, GOOD.replace("were happy friends, and they smiled", "went home"), True),
        "length": P.reward(CREATE, "Max the dog saw a ball by the tree. \"Hi!\" he said. He was happy.", True),
        "repetition": P.reward(CREATE, GOOD + (" Max threw the ball up high and it got stuck in the tree." * 8),
                               True),
    }
    for term, r in worse.items():
        assert r["terms"][term] < 1.0, term
        assert 0.0 <= r["total"] < best, term
    # a missing word costs its share: 1 of 3 words, weight 2 of the weights that apply
    applied = sum(P.REWARD_WEIGHTS[k] for k in worse["word_recall"]["terms"])
    assert best - worse["word_recall"]["total"] == pytest.approx(P.REWARD_WEIGHTS["word_recall"] / 3 / applied)
    # length: too long falls off linearly, to 0 at twice the window's top
    lo, hi = P.LENGTH_WINDOW["create"]
    assert P.length_term(hi * 2, (lo, hi)) == 0.0 and P.length_term(lo // 2, (lo, hi)) == pytest.approx(0.5, abs=0.02)
    assert P.length_term(int(hi * 1.5), (lo, hi)) == pytest.approx(0.5, abs=0.01)


def test_refinements_and_bounds():
    story = "Tom had a ball. Tom played with the ball in the park. Tom was happy with his friend Sue all day."
    rename = {"kind": "rename", "old": "Tom", "new": "Max"}
    done = P.reward(rename, story.replace("Tom", "Max"), True)
    assert done["terms"]["refine"] == 1.0 and set(done["terms"]) == {"refine", "stop", "length", "repetition"}
    assert P.reward(rename, story, True)["total"] < done["total"]
    title = P.reward({"kind": "title"}, "The Red Ball", True)
    assert title["total"] == 1.0 and "length" not in title["terms"]
    with pytest.raises(ValueError, match="previous"):
        P.reward({"kind": "continue"}, story, True)
    assert P.reward({"kind": "continue"}, "Then it rained. They went home.", True, previous=story)["terms"]["refine"]
    rng = random.Random(1)
    for _ in range(30):
        text = words(rng.randrange(0, 400), seed=rng.randrange(99))
        total = P.reward(CREATE, text, rng.random() < 0.5)["total"]
        assert 0.0 <= total <= 1.0


def _tasks(n: int = 3) -> list[dict]:
    msgs = [{"role": "user", "content": f"Write a story about a ball, number {i}."} for i in range(n)]
    return [{"messages": [m], "spec": CREATE, "previous": None, "prompt": [1, 2, 3]} for m in msgs]


def test_make_pairs_drops_ties_and_picks_best_against_worst():
    tasks = _tasks(3)
    replies = [[{"text": f"reply {i}.{j}", "stopped": j != 1} for j in range(3)] for i in range(3)]
    scores = [[0.2, 0.9, 0.5], [0.4, 0.4, 0.4], [0.30, 0.33, 0.31]]
    pairs = P.make_pairs(tasks, replies, scores, min_gap=0.05)
    assert len(pairs) == 1, "the tied task and the near-tie are dropped"
    p = pairs[0]
    assert (p["chosen"], p["rejected"]) == ("reply 0.1", "reply 0.0")
    assert p["scores"] == {"chosen": 0.9, "rejected": 0.2} and p["stopped"] == {"chosen": False, "rejected": True}
    assert p["source"] == "rules" and p["spec"] == CREATE and p["messages"] == tasks[0]["messages"]
    every = P.make_pairs(tasks, replies, scores, min_gap=0.05, all_pairs=True)
    assert {(q["chosen"], q["rejected"]) for q in every} == {("reply 0.1", "reply 0.2"), ("reply 0.1", "reply 0.0"),
                                                            ("reply 0.2", "reply 0.0")}
    assert all(q["scores"]["chosen"] - q["scores"]["rejected"] >= 0.05 for q in every)
    same = [[{"text": "same", "stopped": True}, {"text": "same", "stopped": True}]]
    assert P.make_pairs(_tasks(1), same, [[1.0, 0.0]]) == [], "identical texts make no pair"


def test_pair_file_round_trip_and_errors(tmp_path):
    tasks = _tasks(2)
    replies = [[{"text": "Ünïcode “quotes” ok", "stopped": True}, {"text": "short", "stopped": False}]] * 2
    pairs = P.make_pairs(tasks, replies, [[0.8, 0.1], [0.7, 0.2]])
    for name in ("pairs.jsonl", "pairs.jsonl.gz"):
        path = P.save_pairs(tmp_path / name, pairs)
        assert P.load_pairs(path) == pairs
    plain = (tmp_path / "pairs.jsonl").read_text()
    assert gzip.decompress((tmp_path / "pairs.jsonl.gz").read_bytes()).decode() == plain
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    bad = dict(json.loads(lines[1]))
    del bad["rejected"]
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: .*missing keys \['rejected'\]"):
        P.load_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        P.load_pairs(tmp_path / "bad.jsonl")
    wrong = {**pairs[0], "messages": [{"role": "assistant", "content": "hi"}]}
    with pytest.raises(ValueError, match="pair 1: messages must end with the user's request"):
        P.save_pairs(tmp_path / "new.jsonl", [pairs[0], wrong])
    assert not (tmp_path / "new.jsonl").exists(), "nothing is written when a pair is bad"


@pytest.fixture(scope="module")
def tiny():
    from storylib.gpt2 import GPT, GPTConfig
    from storylib.train import load_tokenizer

    tok, _ = load_tokenizer(TOKENIZER)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=4160, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    return model, tok


def test_sampling_and_pairs_are_reproducible_from_the_seed(tiny):
    from storylib.conversations import build_conversations
    from storylib.data import synthetic_stories

    model, tok = tiny
    convs = build_conversations(synthetic_stories(5, seed=3), seed=0)
    tasks = P.rl_tasks(convs, tok, model.config.block_size)
    assert len(tasks) >= 5 and all(t["messages"][-1]["role"] == "user" for t in tasks)
    from storylib.chat_template import render_chat

    assert all(render_chat(t["messages"], tok, add_generation_prompt=True)[0] == t["prompt"] for t in tasks)
    runs = [P.sample_replies(model, tok, tasks, 3, seed=s, max_new_tokens=7, batch_size=4) for s in (5, 5, 6)]
    assert all(len(rs) == 3 and all(len(r["ids"]) <= 7 for r in rs) for rs in runs[0])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    scores = P.score_replies(tasks, runs[0])
    assert all(0.0 <= s <= 1.0 for ss in scores for s in ss)
    assert P.make_pairs(tasks, runs[0], scores) == P.make_pairs(tasks, runs[1], P.score_replies(tasks, runs[1]))


def test_bucketed_generation_keeps_short_requests_from_being_cut(tiny):
    from storylib import sft

    model, tok = tiny
    short, long = [tok.special_tokens["<|user|>"], 11, 12], list(range(20, 100))  # 3 and 80 of a 96-id context
    plain = sft.generate_replies(model, [short, long], [], max_new_tokens=40, batch_size=2, seed=0)
    assert [len(ids) for ids, _ in plain] == [16, 16], "one batch: both cut at 96 - 80 tokens"
    bucketed = P.generate_bucketed(model, tok, [short, long], seed=0, max_new_tokens=40, batch_size=2, bucket=32)
    assert [len(ids) for ids, _ in bucketed] == [40, 16] and not bucketed[0][1]
