"""storylib.conversations (not graded): the chat data is reproducible, split by story, and every target passes
the rule that checks it; fit_conversation keeps what a reply needs and fits the context.

Data is made here: synthetic stories (and a few real ones where the course data is on disk) and a small
RegexTokenizer trained on them. Nothing is downloaded.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from storylib import conversations as CV
from storylib.chat_template import check_conversation, render_chat
from storylib.data import load_stories, synthetic_stories
from storylib.datasets import sentences
from storylib.tokenizer import STORY_SPECIALS, RegexTokenizer


@pytest.fixture(scope="module")
def tok() -> RegexTokenizer:
    t = RegexTokenizer()
    t.train("\n".join(synthetic_stories(60, seed=5, unicode=True)), vocab_size=300)
    t.register_special_tokens({s: 300 + i for i, s in enumerate(STORY_SPECIALS)})
    return t


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return synthetic_stories(1500, seed=1) + synthetic_stories(1500, seed=2, unicode=True)


def real_stories(n: int) -> list[str]:
    try:
        return load_stories("valid", limit=n)
    except FileNotFoundError:
        return []


# ----------------------------------------------------------------------------- building and splitting


def test_build_is_deterministic_and_per_story(stories):
    a = CV.build_conversations(stories[:300], seed=0)
    assert a == CV.build_conversations(stories[:300], seed=0)
    assert a != CV.build_conversations(stories[:300], seed=1), "another seed should give other conversations"
    shuffled = stories[:300][::-1]
    assert CV.build_conversations(shuffled, seed=0) == a[::-1], "a story's conversation must not depend on the others"
    for conv, story in zip(a, stories[:300], strict=True):
        assert conv["story_id"] == CV.story_id(story) and len(conv["story_id"]) == 12
        check_conversation(conv["messages"])
        assert len(conv["specs"]) == sum(m["role"] == "assistant" for m in conv["messages"])


def test_conversations_mix_kinds_turns_and_system_prompts(stories):
    stats = CV.conversation_stats(CV.build_conversations(stories))
    assert set(stats["kinds"]) == {"create", *CV.REFINE_KINDS, "continue"}
    assert set(stats["turns"]) == {1, 2, 3}
    assert 0 < stats["with_system"] < stats["conversations"]
    assert stats["kinds"]["create"] == stats["conversations"] == len(stories)
    assert set(stats["create_asks"]) == {"words", "character", "dialogue", "happy", "n_sentences"}


def test_requests_vary_in_phrasing(stories):
    convs = CV.build_conversations(stories)
    by_kind: dict[str, set[str]] = {}
    for c in convs:
        users = [m["content"] for m in c["messages"] if m["role"] == "user"]
        for spec, text in zip(c["specs"], users, strict=True):
            by_kind.setdefault(spec["kind"], set()).add(text.split('"')[0][:18])
    for kind, starts in by_kind.items():
        assert len(starts) >= 3, f"{kind} requests have only {len(starts)} phrasings: {starts}"


def test_split_is_by_story_and_deterministic(stories):
    train, held = CV.split_conversations(stories, seed=0, val_fraction=0.1)
    assert len(train) + len(held) == len(stories)
    assert not {c["story_id"] for c in train} & {c["story_id"] for c in held}
    assert abs(len(held) - 0.1 * len(stories)) < 5 * (len(stories) * 0.09) ** 0.5
    assert CV.split_conversations(stories, seed=0, val_fraction=0.1) == (train, held)
    # another seed changes the conversations, never which side a story is on
    train1, held1 = CV.split_conversations(stories, seed=1, val_fraction=0.1)
    assert [c["story_id"] for c in held1] == [c["story_id"] for c in held]
    # a duplicated story lands on one side only
    dup_train, dup_held = CV.split_conversations(stories[:200] + stories[:200], val_fraction=0.3)
    assert not {c["story_id"] for c in dup_train} & {c["story_id"] for c in dup_held}


# ----------------------------------------------------------------------------- targets pass their own checks


def test_every_target_passes_its_own_checker(stories):
    pool = stories + real_stories(300)
    counts = Counter()
    for seed in (0, 1):
        for conv in CV.build_conversations(pool, seed=seed):
            for t in CV.assistant_turns(conv):
                got = CV.check_reply(t["spec"], t["target"], t["previous"])
                failed = {k: v for k, v in got.items() if v is False}
                assert got["ok"] and not failed, f"{t['spec']} fails {failed} on its own target {t['target']!r}"
                counts[t["spec"]["kind"]] += 1
    assert min(counts.values()) >= 300, counts


def test_previous_is_the_story_the_request_refers_to(stories):
    for conv in CV.build_conversations(stories[:500]):
        turns = CV.assistant_turns(conv)
        assert turns[0]["previous"] is None
        for i in range(1, len(turns)):
            # a request refers to the story just told, or the one before a title
            told = i - 2 if turns[i - 1]["spec"]["kind"] == "title" else i - 1
            assert turns[i]["previous"] == turns[told]["target"]


def test_targets_follow_their_rules(stories):
    for story, conv in zip(stories[:800], CV.build_conversations(stories[:800]), strict=True):
        for t in CV.assistant_turns(conv):
            spec, target, prev = t["spec"], t["target"], t["previous"]
            if spec["kind"] == "rename":
                assert target == CV.rename(prev, spec["old"], spec["new"]) and spec["new"] not in prev.split()
            elif spec["kind"] == "change_word":
                assert target == CV.replace_word(prev, spec["old"], spec["new"])
                assert spec["old"] in CV.NOUNS and spec["new"] in CV.NOUNS
            elif spec["kind"] == "shorten":
                assert sentences(target)[:-1] == sentences(prev)[:spec["n_sentences"] - 1]
                assert sentences(target)[-1] == sentences(prev)[-1]
            elif spec["kind"] == "moral":
                assert target.startswith(prev.rstrip()) and target.endswith(CV.make_moral(prev))
            elif spec["kind"] == "continue":
                assert sentences(prev) + sentences(target) == sentences(story), "begin + continue = the story"
            elif spec["kind"] == "title":
                assert target == CV.make_title(prev)
            else:
                assert target == story if not spec["beginning"] else story.startswith(target)


def test_create_specs_say_what_was_asked(stories):
    for conv in CV.build_conversations(stories[:800]):
        spec, request = conv["specs"][0], conv["messages"][-2 * len(conv["specs"])]["content"]
        assert all(re.search(rf"\b{re.escape(w)}\b", request) for w in spec["words"])
        assert spec["character"] is None or spec["character"] in request
        assert spec["happy"] == ("happy ending" in request)
        assert spec["dialogue"] == ("dialogue" in request)
        if spec["beginning"]:
            assert not spec["happy"] and conv["specs"][1]["kind"] == "continue"


# ----------------------------------------------------------------------------- the checkers say no


def test_checkers_reject_wrong_replies():
    story = ('Once upon a time, there was a girl named Lily. Lily had a red ball. "Look!" said Lily. '
             "She played with the ball all day. Lily was very happy.")
    create = {"kind": "create", "words": ["ball", "played", "kite"], "character": "a girl named Lily",
              "name": "Lily", "character_kind": "girl", "dialogue": True, "happy": True, "n_sentences": 6,
              "beginning": False}
    got = CV.check_reply(create, story)  # 6 sentences: "Look!" ends one
    assert got["all_words"] is False and got["word_recall"] == pytest.approx(2 / 3)
    assert got["character"] and got["dialogue"] and got["happy"] and got["n_sentences_ok"] and not got["ok"]
    sad = CV.check_reply({**create, "words": ["ball"]}, "Tom lost the ball. He cried.")
    assert not sad["character"] and not sad["dialogue"] and not sad["happy"] and not sad["n_sentences_ok"]
    half = CV.check_reply({"kind": "rename", "old": "Lily", "new": "Mia"}, story.replace("Lily", "Mia", 1))
    assert half["renamed"] and not half["old_gone"] and not half["rename_done"]
    assert not CV.check_reply({"kind": "rename", "old": "Lily", "new": "Mia"}, "Mia and Lily's cat.")["old_gone"]
    assert not CV.check_reply({"kind": "title"}, "A very long title that goes on and on and on")["title_ok"]
    assert not CV.check_reply({"kind": "title"}, "Lily\nand the ball")["title_ok"]
    assert not CV.check_reply({"kind": "title"}, "  ")["title_ok"]
    assert not CV.check_reply({"kind": "continue"}, story, previous=story)["continues"], "a repeat is no continuation"
    assert not CV.check_reply({"kind": "continue"}, "The end.", previous=story)["continues"]
    assert not CV.check_reply({"kind": "shorten", "n_sentences": 3}, story)["sentences_ok"]
    changed = CV.check_reply({"kind": "change_word", "old": "ball", "new": "kite"}, story.replace("ball", "kite", 1))
    assert changed["new_present"] and not changed["old_gone"] and not changed["word_changed"]
    assert not CV.check_reply({"kind": "moral"}, story)["has_moral"]
    with pytest.raises(ValueError):
        CV.check_reply({"kind": "continue"}, story)
    with pytest.raises(ValueError):
        CV.check_reply({"kind": "sing"}, story)


def test_repeated_ngram_rate_and_story_prompt():
    assert CV.repeated_ngram_rate("the cat sat. The cat sat! the cat sat", n=3) == pytest.approx(4 / 7)
    assert CV.repeated_ngram_rate("one two three", n=4) == 0.0
    assert CV.repeated_ngram_rate("", n=1) == 0.0
    create = {"kind": "create", "character": "a dog named Spot"}
    assert CV.story_prompt(create) == "Once upon a time, there was a dog named Spot."
    assert CV.story_prompt({**create, "character": None}) == "Once upon a time,"
    with pytest.raises(ValueError):
        CV.story_prompt({"kind": "title"})


def test_word_rules():
    assert CV.rename("Tom, Tommy and Tom's Tomato; atom. TOM", "Tom", "Ben") == "Ben, Tommy and Ben's Tomato; atom. TOM"
    assert CV.replace_word("Ball! The ball, balls. BALL", "ball", "kite") == "Kite! The kite, balls. KITE"
    story = "A.\nB. C! D? E."
    assert CV.shorten(story, 3) == "A.\nB.\nE."
    with pytest.raises(ValueError):
        CV.shorten(story, 5)
    assert CV.make_title("Once there was a dog named Rex. Rex found the big red ball. The ball was fun.") == \
        "Rex and the Ball"
    assert CV.make_moral("They shared the cake.") == "The moral of the story is that sharing makes everyone happy."


# ----------------------------------------------------------------------------- fitting the context


def n_tokens(messages, tok) -> int:
    return len(render_chat(messages, tok, add_generation_prompt=messages[-1]["role"] == "user")[0])


def conversation(story: str, tok) -> list[dict]:
    return [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Write a story."}, {"role": "assistant", "content": story},
            {"role": "user", "content": "Give this story a title."}, {"role": "assistant", "content": "The Ball"},
            {"role": "user", "content": "Change the word \"ball\" to \"kite\"."},
            {"role": "assistant", "content": story.replace("ball", "kite")},
            {"role": "user", "content": "Please rename Lily to Mia."}]


def test_fit_conversation_keeps_what_the_reply_needs(tok):
    story = " ".join(synthetic_stories(3, seed=9))
    msgs = conversation(story, tok)
    full = n_tokens(msgs, tok)
    assert CV.fit_conversation(msgs, tok, full) == msgs, "a conversation that fits is left as it is"
    fitted = CV.fit_conversation(msgs, tok, full - 1)
    assert n_tokens(fitted, tok) <= full - 1
    # the oldest pair goes first; the system message, the last request and the story it refers to stay
    assert fitted == [msgs[0], *msgs[3:]]
    least = CV.fit_conversation(msgs, tok, n_tokens([msgs[0], *msgs[5:]], tok))
    assert least == [msgs[0], *msgs[5:]]
    with pytest.raises(ValueError):
        CV.fit_conversation(msgs, tok, n_tokens([msgs[0], *msgs[5:]], tok) - 1)
    with pytest.raises(ValueError):
        CV.fit_conversation(msgs, tok, full, reserve=10**6)
    # a title between the story and the request: the story's pair is kept, the title's goes
    msgs2 = msgs[:5] + [msgs[7]]
    assert CV.fit_conversation(msgs2, tok, n_tokens(msgs2, tok) - 1) == [msgs[0], msgs[1], msgs[2], msgs[7]]
    # a training example (ending with the reply) keeps that reply with its request
    train = msgs + [{"role": "assistant", "content": story.replace("Lily", "Mia")}]
    fitted = CV.fit_conversation(train, tok, n_tokens(train, tok) - 1)
    assert fitted[-2:] == train[-2:] and n_tokens(fitted, tok) <= n_tokens(train, tok) - 1


def test_fit_conversation_respects_reserve(tok):
    msgs = conversation(" ".join(synthetic_stories(2, seed=4)), tok)
    full = n_tokens(msgs, tok)
    fitted = CV.fit_conversation(msgs, tok, full, reserve=5)
    assert len(fitted) < len(msgs) and n_tokens(fitted, tok) + 5 <= full


def test_training_examples_are_rendered_as_served(tok, stories):
    rng = random.Random(0)
    for conv in CV.build_conversations(rng.sample(stories, 60)):
        examples = iter(CV.training_examples(conv, tok, max_tokens=200))
        for t in CV.assistant_turns(conv):
            try:
                window = CV.fit_conversation(t["messages"] + [{"role": "assistant", "content": t["target"]}], tok, 200)
            except ValueError:
                continue  # a turn that cannot fit is left out
            ids, mask = next(examples)
            assert len(ids) == len(mask) <= 200
            prompt, _ = render_chat(window[:-1], tok, add_generation_prompt=True)
            assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
            assert all(mask[len(prompt):]) and tok.decode(ids[len(prompt):-1]) == t["target"]
        assert next(examples, None) is None
    assert CV.training_examples(CV.build_conversations(stories[:1])[0], tok, max_tokens=8) == []
