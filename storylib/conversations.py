"""Chapter 14 — chat data made by rules: requests, refinements, a held-out split, and the rules that check replies.

An instruction-tuned storyteller needs conversations: a user asks for a story, the assistant tells it, the user
asks for a change, the assistant makes it. Nobody wrote such conversations for TinyStories, so we make them from
the stories themselves, by rules, the way Chapter 11's `make_instruction` made single requests: the story is the
answer, and the request is written to fit it. Every later turn asks for a change that a rule can make *exactly*
(rename a character, change a word, shorten, add a title or a moral, continue), so every target is right by
construction, and the same rules then grade the model's replies.

    make_conversation     one conversation from one story: a create request, then 0-2 refine requests
    build_conversations   one conversation per story, reproducible from (stories, seed)
    split_conversations   by story: no story of the held-out part is in the training part
    rename                a character's new name, whole words only, possessives too        (exercise ch14.rename)
    replace_word          a content word changed everywhere, capitals kept
    make_title, make_moral, shorten
                          the other refine targets, each by one written-down rule
    check_reply           the rule metrics of one reply, given the spec of its turn
    repeated_ngram_rate   how much of a text repeats itself                               (exercise ch14.repetition)
    story_prompt          a plain story opening that asks the base model for the same story
    fit_conversation      drop the oldest turns until a conversation fits the context
    assistant_turns, training_examples
                          each assistant turn with its context: for evaluation, and as (ids, mask) for training

A conversation is {"story_id": the first 12 hex of sha1(story), "messages": [system?, user, assistant, ...],
"specs": one spec per assistant turn}. A spec is what the checker needs: {"kind": "create", "words",
"character", "name", "character_kind", "dialogue", "happy", "n_sentences", "beginning"} or {"kind": "rename",
"old", "new"}, {"kind": "title"}, {"kind": "continue"}, {"kind": "shorten", "n_sentences"},
{"kind": "change_word", "old", "new"}, {"kind": "moral"}.

The recipe, per story (`make_conversation`, all draws from `example_rng(story, seed)`):
  - a system prompt with probability P_SYSTEM, one of SYSTEM_PROMPTS;
  - with probability P_BEGIN, if the story has at least 5 sentences: "write only the first k sentences"
    (k in 2..4), then "continue" whose target is the rest of the story; the conversation ends there;
  - otherwise a create request (Chapter 11's make_instruction, sometimes "in N sentences" for stories of at most
    MAX_SENTENCES_ASKED sentences), then 0, 1 or 2 refine requests (REFINE_TURNS), each a different kind among
    those that apply to the current story, tried in a random order weighted by REFINE_WEIGHTS (rename needs a
    named character, change_word a noun from NOUNS, shorten at least 5 sentences, moral a story without one).
Counts per kind, turns and system prompts: `conversation_stats(build_conversations(stories))`.
Not made: "tell it again for a younger child" — no rule makes that target exactly, so it is left out.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from storylib.chat_template import render_chat
from storylib.datasets import (
    _SENTENCE_RE,
    _WORD_RE,
    DIALOGUE_CLAUSE,
    HAPPY_CLAUSE,
    character_phrase,
    content_words,
    example_rng,
    make_instruction,
    sentences,
    split_of,
    story_features,
)

SYSTEM_PROMPTS = (
    "You are a storyteller for young children. You write short, simple stories.",
    "You are a friendly assistant who writes and edits short stories for kids.",
    "You write bedtime stories. Keep the words simple.",
    "You help children write and change their stories.",
)
P_SYSTEM = 0.25
P_BEGIN = 0.15
REFINE_TURNS = ((0, 0.35), (1, 0.40), (2, 0.25))  # (number of refine turns, probability)
MAX_SENTENCES_ASKED = 10  # "in N sentences" only for stories this short: a model cannot count to 30
P_SENTENCES = 0.5

# common TinyStories names; a rename picks a new one of the same group, not already in the story
GIRL_NAMES = ("Lily", "Lucy", "Sue", "Mia", "Sara", "Anna", "Amy", "Jane", "Sally", "Daisy", "Molly", "Mary",
              "Emma", "Ella", "Jenny", "Lisa", "Kate", "Rose", "Zoe")
BOY_NAMES = ("Tim", "Tom", "Max", "Sam", "Jack", "Bob", "Ben", "John", "Joe", "Billy", "Andy", "Peter",
             "Danny", "Fred", "Jake", "Leo", "Toby", "Mike")
# concrete nouns a change_word request may swap: a noun for a noun keeps the sentences grammatical
NOUNS = ("ball", "toy", "tree", "box", "hat", "cake", "kite", "book", "car", "boat", "flower", "rock", "stick",
         "bike", "doll", "drum", "shoe", "sock", "cup", "bed", "house", "door", "cookie", "bag", "bell", "bone",
         "bowl", "bus", "chair", "coat", "hill", "leaf", "pond", "rope", "shell", "star", "table", "truck",
         "apple", "egg", "orange", "umbrella", "owl", "ant", "island", "igloo")
# adjectives that often follow "the" and would make a poor title ("The Big")
_NOT_TITLE = frozenset("big small old new red blue green yellow pink white black good bad best last first "
                       "same other next whole".split())
# (words that trigger it, the moral): the first rule whose words the story uses gives its moral
MORALS = (
    (("share", "shared", "sharing", "shares"), "sharing makes everyone happy"),
    (("sorry",), "it is important to say sorry when you make a mistake"),
    (("careful",), "it is important to be careful"),
    (("listen", "listened", "listening"), "we should listen to the people who love us"),
    (("help", "helped", "helping", "helps"), "it is good to help others"),
    (("brave", "scared", "afraid"), "being brave helps us do hard things"),
    (("try", "tried", "trying", "practice", "practiced"), "if you keep trying, you can do it"),
    (("friend", "friends"), "good friends make everything better"),
    (("kind", "kindness", "nice"), "it is good to be kind"),
)
DEFAULT_MORAL = "every day can bring something new"

# each request varies over several phrasings; {k}, {n}, {old}, {new} are filled in
BEGIN_CLAUSES = (" Only write the first {k} sentences for now.", " Just start it: write the first {k} sentences.",
                 " Write only the beginning, {k} sentences.")
SENTENCES_CLAUSES = (" Use {n} sentences.", " Make it {n} sentences long.", " Tell it in {n} sentences.")
CONTINUE_REQUESTS = ("Continue the story.", "What happens next? Please finish the story.", "Please go on.",
                     "Keep going and finish the story.", "Now write the rest of the story.")
RENAME_REQUESTS = ("Change {old}'s name to {new}.", "Can you call {old} {new} instead?",
                   "Please rename {old} to {new}.", "Tell the same story, but call {old} {new}.")
# when the story says "a cat named Tom", the request may name the character by what it is
RENAME_BY_KIND = ("Call the {kind} {new}.", "Name the {kind} {new} instead.", "Can the {kind} be called {new}?")
TITLE_REQUESTS = ("Give this story a title.", "What would be a good title for this story?",
                  "Can you think of a title for the story?", "Please write a short title for it.")
SHORTEN_REQUESTS = ("Make the story shorter: tell it in {n} sentences.", "Can you shorten it to {n} sentences?",
                    "That is too long. Please use only {n} sentences.", "Tell the same story in just {n} sentences.")
# words are not quoted: '"truck"' is tokenized as ' "', 'tr', 'uck', '"', unlike the ' truck' the story needs
CHANGE_WORD_REQUESTS = ("Change the word {old} to {new} everywhere.", "Can you use the word {new} instead of {old}?",
                        "Please replace every {old} with a {new}.", "Tell it again with a {new} in place of the {old}.")
MORAL_REQUESTS = ("Add a moral to the story.", "What is the lesson of this story? Add it at the end.",
                  "Can you end the story with a moral?", "Please add a line with the moral of the story.")

# refine kinds and their weights: rename and change_word, the edits graded hardest, come first more often
REFINE_WEIGHTS = {"rename": 3.0, "change_word": 2.0, "title": 1.0, "shorten": 1.0, "moral": 1.0}
REFINE_KINDS = tuple(REFINE_WEIGHTS)
TITLE_MAX_WORDS = 8
COPY_N = 6  # a continuation "repeats the previous text" if half its word 6-grams are in it


# ----------------------------------------------------------------------------- words and sentences


def story_id(story: str) -> str:
    """The first 12 hex digits of sha1 of the story's UTF-8 text."""
    return hashlib.sha1(story.encode("utf-8")).hexdigest()[:12]


def words_of(text: str) -> list[str]:
    """The lower-cased words of a text (Chapter 11's _WORD_RE: letters, inner apostrophes); no punctuation."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the `sentences` of a text: cutting at an end keeps the paragraphs intact."""
    return [m.span() for m in _SENTENCE_RE.finditer(text) if m.group().strip()]


def _has_word(text: str, word: str, ignore_case: bool = False) -> bool:
    """Is `word` a whole word of `text`: not part of a longer word ("dad" is in "dad's", not in "daddy")?"""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE if ignore_case else 0) is not None


# ----------------------------------------------------------------------------- the refine targets


def rename(story: str, old: str, new: str) -> str:
    """`story` with every whole-word occurrence of the name `old` replaced by `new`.  (exercise ch14.rename)

    Whole word: an occurrence of `old` (case-sensitive) whose neighbouring characters, if any, are not word
    characters (letters, digits, underscore: `str.isalnum()` or "_"). So "Tom" becomes "Ben" in "Tom", "Tom's",
    "Tom’s", "Tom," and "(Tom)", but "Tommy" and "Tomato" stay. Raises ValueError if `old` is empty.
    """
    if not old:
        raise ValueError("the old name must not be empty")
    ### BEGIN SOLUTION ch14.rename (§14.2, 2 pts): re.sub of re.escape(old) between (?<!\w) and (?!\w); new stays plain
    pattern = rf"(?<!\w){re.escape(old)}(?!\w)"
    return re.sub(pattern, lambda m: new, story)
    ### END SOLUTION


def replace_word(story: str, old: str, new: str) -> str:
    """Every whole-word `old` (any case) replaced by `new`, keeping a capital first letter or all capitals."""

    def repl(m: re.Match) -> str:
        w = m.group()
        if w.isupper() and len(w) > 1:
            return new.upper()
        return new[:1].upper() + new[1:] if w[0].isupper() else new

    return re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", repl, story, flags=re.IGNORECASE)


def shorten(story: str, n: int) -> str:
    """The first n - 1 sentences and the last one (the story's own ending), paragraphs kept."""
    spans = sentence_spans(story)
    if not 2 <= n < len(spans):
        raise ValueError(f"cannot shorten a story of {len(spans)} sentences to {n}")
    return story[:spans[n - 2][1]].rstrip() + "\n" + story[spans[-1][0]:].strip()


def _title_noun(story: str, skip: set[str]) -> str | None:
    """The noun most often named after "the" (first seen wins a tie), if any: of the up to 3 words after "the"
    (no punctuation between), the last of the content words that follow the adjectives in _NOT_TITLE, stopping
    at a verb-like word (-ing, or -ed in a word of 5+ letters): "the big red ball" -> "ball", "the hidden
    treasure was" -> "treasure", "the kite rolled" -> "kite"."""
    allowed = {w for w in content_words(story) if not (w.endswith("ing") or (w.endswith("ed") and len(w) > 4))}
    allowed -= skip | _NOT_TITLE
    nouns = []
    for m in re.finditer(r"\b[Tt]he((?:\s+[^\W\d_]+){1,3})", story):
        run = [w.lower() for w in m.group(1).split()]
        while run and run[0] in _NOT_TITLE | {"little"}:
            run.pop(0)
        taken = [w for w in run[:next((i for i, w in enumerate(run) if w not in allowed), len(run))]]
        if taken:
            nouns.append(taken[-1])
    counts = Counter(nouns)
    return max(counts, key=counts.get) if counts else None  # max keeps the first of equal counts


def make_title(story: str) -> str:
    """A short title by rule: "<Hero> and the <Noun>", "The Story of <Hero>", "The <Noun>" or "A Little Story";
    the hero is the named character, else "The <kind>"; the noun is `_title_noun`."""
    f = story_features(story)
    hero = f["name"] or (f"The {f['kind'].capitalize()}" if f["kind"] else None)
    noun = _title_noun(story, {w.lower() for w in (f["name"], f["kind"]) if w})
    if hero and noun:
        return f"{hero} and the {noun.capitalize()}"
    if hero:
        return f"The Story of {hero}"
    return f"The {noun.capitalize()}" if noun else "A Little Story"


def make_moral(story: str) -> str:
    """The moral line: "The moral of the story is that <moral>." from the first MORALS rule the story's words hit."""
    words = set(words_of(story))
    moral = next((m for triggers, m in MORALS if words & set(triggers)), DEFAULT_MORAL)
    return f"The moral of the story is that {moral}."


def _gender_names(story: str, name: str) -> tuple[str, ...]:
    """The names a new name is drawn from: the old name's group, else the group its pronouns point to."""
    if name in GIRL_NAMES or name in BOY_NAMES:
        return GIRL_NAMES if name in GIRL_NAMES else BOY_NAMES
    w = Counter(words_of(story))
    she, he = w["she"] + w["her"], w["he"] + w["his"] + w["him"]
    return GIRL_NAMES if she > he else BOY_NAMES if he > she else GIRL_NAMES + BOY_NAMES


def _renamable(story: str) -> str | None:
    """The named character of the story, if a rename can be asked for: a name that follows "named"/"called",
    or one of the common names (not "Mommy" or "Everyone", which Chapter 11's rule may also find)."""
    name = story_features(story)["name"]
    if not name or not name.isalpha():
        return None
    named = re.search(rf"\b(?:named|called)\s+{re.escape(name)}(?!\w)", story)
    return name if named or name in GIRL_NAMES + BOY_NAMES else None


# ----------------------------------------------------------------------------- making conversations


def _refine(kind: str, story: str, rng: random.Random) -> tuple[str, str, dict] | None:
    """(request, target, spec) of one refine kind for the current story, or None where the kind does not apply."""
    if kind == "rename":
        old = _renamable(story)
        if old is None:
            return None
        pool = [n for n in _gender_names(story, old) if not _has_word(story, n, ignore_case=True) and n != old]
        new = rng.choice(pool)
        kind_ = story_features(story)["kind"]
        by_kind = bool(kind_) and re.search(rf"\b{re.escape(kind_)}\s+(?:named|called)\s+{re.escape(old)}(?!\w)", story)
        request = rng.choice(RENAME_REQUESTS + (RENAME_BY_KIND if by_kind else ()))
        return request.format(old=old, new=new, kind=kind_), rename(story, old, new), \
            {"kind": "rename", "old": old, "new": new}
    if kind == "title":
        return rng.choice(TITLE_REQUESTS), make_title(story), {"kind": "title"}
    if kind == "shorten":
        if len(sentence_spans(story)) < 5:
            return None
        n = rng.randint(3, min(5, len(sentence_spans(story)) - 2))
        return rng.choice(SHORTEN_REQUESTS).format(n=n), shorten(story, n), {"kind": "shorten", "n_sentences": n}
    if kind == "change_word":
        present = set(words_of(story))
        f = story_features(story)
        olds = [w for w in NOUNS if w in present and w not in {f["kind"], (f["name"] or "").lower()}]
        if not olds:
            return None
        old = rng.choice(olds)
        pool = [w for w in NOUNS if not _has_word(story, w, True) and (w[0] in "aeiou") == (old[0] in "aeiou")]
        new = rng.choice(pool)
        return rng.choice(CHANGE_WORD_REQUESTS).format(old=old, new=new), replace_word(story, old, new), \
            {"kind": "change_word", "old": old, "new": new}
    if kind == "moral":
        if "moral" in story.lower():
            return None
        return rng.choice(MORAL_REQUESTS), story.rstrip() + "\n" + make_moral(story), {"kind": "moral"}
    raise ValueError(f"unknown refine kind {kind!r}; expected one of {REFINE_KINDS}")


def _create(story: str, rng: random.Random, k: int | None = None) -> tuple[str, dict]:
    """(request, spec) of a create turn from Chapter 11's make_instruction; with k, a request for the first k
    sentences of `story` (which is then that beginning), with no happy ending asked."""
    ex = make_instruction(story, rng)
    f, request = ex["features"], ex["instruction"]
    n = None
    if k is not None:
        request = request.replace(HAPPY_CLAUSE, "") + rng.choice(BEGIN_CLAUSES).format(k=k)
        n = k
    elif len(sentences(story)) <= MAX_SENTENCES_ASKED and rng.random() < P_SENTENCES:
        n = len(sentences(story))
        request += rng.choice(SENTENCES_CLAUSES).format(n=n)
    c = character_phrase(f)
    spec = {"kind": "create", "words": [w for w in f["words"] if re.search(rf"\b{re.escape(w)}\b", request)],
            "character": c if c is not None and c in request else None, "name": f["name"],
            "character_kind": f["kind"], "dialogue": DIALOGUE_CLAUSE in request, "happy": HAPPY_CLAUSE in request,
            "n_sentences": n, "beginning": k is not None}
    return request, spec


def make_conversation(story: str, rng: random.Random) -> dict:
    """One conversation from one story, by the recipe in the module docstring; all draws from `rng`."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < P_SYSTEM else []
    specs = []

    def turn(request: str, target: str, spec: dict) -> None:
        messages.extend([{"role": "user", "content": request}, {"role": "assistant", "content": target}])
        specs.append(spec)

    spans = sentence_spans(story)
    if len(spans) >= 5 and rng.random() < P_BEGIN:
        k = rng.randint(2, min(4, len(spans) - 3))
        begin, rest = story[:spans[k - 1][1]].strip(), story[spans[k - 1][1]:].strip()
        request, spec = _create(begin, rng, k)
        turn(request, begin, spec)
        turn(rng.choice(CONTINUE_REQUESTS), rest, {"kind": "continue"})
        return {"story_id": story_id(story), "messages": messages, "specs": specs}

    request, spec = _create(story, rng)
    turn(request, story, spec)
    n_refine = rng.choices([n for n, _ in REFINE_TURNS], weights=[p for _, p in REFINE_TURNS])[0]
    # a weighted order without replacement (Efraimidis & Spirakis): sort by u ** (1 / weight), largest first
    kinds = sorted(REFINE_KINDS, key=lambda k: rng.random() ** (1 / REFINE_WEIGHTS[k]), reverse=True)
    current = story
    for kind in kinds:
        if len(specs) > n_refine:
            break
        made = _refine(kind, current, rng)
        if made is not None:
            turn(*made)
            current = made[1] if kind != "title" else current  # a title leaves the story as it is
    return {"story_id": story_id(story), "messages": messages, "specs": specs}


def build_conversations(stories: Iterable[str], seed: int = 0) -> list[dict]:
    """One conversation per story, `make_conversation(story, example_rng(story, seed))`, in order: the same
    stories and seed give the same list, and a story's conversation does not depend on the other stories."""
    return [make_conversation(s, example_rng(s, seed)) for s in stories]


def split_conversations(stories: Iterable[str], seed: int = 0,
                        val_fraction: float = 0.05) -> tuple[list[dict], list[dict]]:
    """(train, held-out) conversations, split BY STORY with Chapter 11's `split_of` (salt "ch14"): a story and
    its copies (up to case, quotes, spacing) land on the same side, whatever the seed."""
    stories = list(stories)
    convs = build_conversations(stories, seed)
    side = [split_of(s, val_fraction, salt="ch14") for s in stories]
    return ([c for c, s in zip(convs, side, strict=True) if s == "train"],
            [c for c, s in zip(convs, side, strict=True) if s == "valid"])


def conversation_stats(convs: Sequence[dict]) -> dict:
    """Counts for the book: conversations, assistant turns, turns per conversation, specs per kind, system prompts."""
    return {
        "conversations": len(convs),
        "assistant_turns": sum(len(c["specs"]) for c in convs),
        "turns": dict(sorted(Counter(len(c["specs"]) for c in convs).items())),
        "kinds": dict(Counter(s["kind"] for c in convs for s in c["specs"]).most_common()),
        "create_asks": dict(Counter(k for c in convs for s in c["specs"] if s["kind"] == "create"
                                    for k in ("words", "character", "dialogue", "happy", "n_sentences")
                                    if s[k]).most_common()),
        "with_system": sum(c["messages"][0]["role"] == "system" for c in convs),
    }


# ----------------------------------------------------------------------------- checking replies


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """The fraction of the word n-grams of `text` that repeat an earlier n-gram of it.  (exercise ch14.repetition)

    Words are `words_of(text)` (lower-cased, punctuation dropped). With words w_0 .. w_{L-1}, the n-grams are
    g_i = (w_i, ..., w_{i+n-1}) for i = 0 .. L-n; the rate is the number of i for which g_i equals some g_j with
    j < i, divided by L - n + 1. A text of fewer than n words has rate 0.0. Raises ValueError if n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = words_of(text)
    ### BEGIN SOLUTION ch14.repetition (§14.6, 2 pts): walk the n-grams in order; count those already seen
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)
    ### END SOLUTION


def _copied_fraction(reply: str, previous: str, n: int = COPY_N) -> float:
    """The fraction of the reply's word n-grams that also occur in `previous` (0.0 for a reply that has none)."""
    w, p = words_of(reply), words_of(previous)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    before = {tuple(p[i:i + n]) for i in range(len(p) - n + 1)}
    return sum(g in before for g in grams) / len(grams) if grams else 0.0


def _check_create(spec: dict, reply: str) -> dict:
    asked = spec["words"]
    present = [_has_word(reply, w, ignore_case=True) for w in asked]
    f = story_features(reply)
    if spec["character"] is None:
        character = None
    else:
        character = _has_word(reply, spec["name"]) if spec["name"] else _has_word(reply, spec["character_kind"], True)
    return {
        "all_words": all(present) if asked else None,
        "word_recall": sum(present) / len(asked) if asked else None,
        "character": character,
        "dialogue": f["dialogue"] if spec["dialogue"] else None,
        "happy": f["happy_ending"] if spec["happy"] else None,
        "n_sentences_ok": len(sentences(reply)) == spec["n_sentences"] if spec["n_sentences"] else None,
    }


def check_reply(spec: dict, reply: str, previous: str | None = None) -> dict:
    """The rule metrics of one reply to the request that `spec` describes; `previous` is the story it refines
    (needed for "continue"). Booleans are True when the rule holds, None where the request did not ask.

      every kind     repeated_ngram_rate (4-grams), and ok: every boolean metric of the kind is True
      create         all_words, word_recall (fraction of the words found as whole words, any case), character
                     (the name, else the kind, as a whole word), dialogue, happy (Chapter 11's story_features),
                     n_sentences_ok (exactly that many `sentences`)
      rename         renamed (the new name is a whole word of the reply, same case), old_gone (the old one is
                     not), rename_done (both)
      title          title_ok: one line of 1 to TITLE_MAX_WORDS words
      continue       continues: at least 2 sentences, and under half of its word 6-grams copied from `previous`
      shorten        sentences_ok: exactly n_sentences `sentences`
      change_word    old_gone (no whole word `old`, any case), new_present, word_changed (both)
      moral          has_moral ("moral" in the reply's last sentence, any case)
    Raises ValueError for an unknown kind, or a "continue" without `previous`.
    """
    kind = spec["kind"]
    if kind == "create":
        out = _check_create(spec, reply)
    elif kind == "rename":
        renamed, gone = _has_word(reply, spec["new"]), not _has_word(reply, spec["old"])
        out = {"renamed": renamed, "old_gone": gone, "rename_done": renamed and gone}
    elif kind == "title":
        line = reply.strip()
        out = {"title_ok": "\n" not in line and 1 <= len(line.split()) <= TITLE_MAX_WORDS}
    elif kind == "continue":
        if previous is None:
            raise ValueError("checking a continuation needs the previous text")
        out = {"continues": len(sentences(reply)) >= 2 and _copied_fraction(reply, previous) < 0.5}
    elif kind == "shorten":
        out = {"sentences_ok": len(sentences(reply)) == spec["n_sentences"]}
    elif kind == "change_word":
        gone, new = not _has_word(reply, spec["old"], True), _has_word(reply, spec["new"], True)
        out = {"old_gone": gone, "new_present": new, "word_changed": gone and new}
    elif kind == "moral":
        last = (sentences(reply) or [""])[-1]
        out = {"has_moral": "moral" in last.lower()}
    else:
        raise ValueError(f"unknown spec kind {kind!r}")
    out["ok"] = all(v for v in out.values() if isinstance(v, bool))
    out["repeated_ngram_rate"] = repeated_ngram_rate(reply, 4)
    return out


def story_prompt(spec: dict) -> str:
    """A plain story opening for the BASE model, the baseline: "Once upon a time, there was <character>." when
    the create request asked for a character, else "Once upon a time,". (The words, dialogue and ending cannot
    be asked of a model that only continues text; that is what the chat model is for.)"""
    if spec["kind"] != "create":
        raise ValueError(f"a story prompt is made from a create spec, not {spec['kind']!r}")
    return f"Once upon a time, there was {spec['character']}." if spec["character"] else "Once upon a time,"


# ----------------------------------------------------------------------------- fitting the context


def _is_story(text: str) -> bool:
    return len(sentences(text)) >= 2


def reference_index(messages: Sequence[dict], last_user: int) -> int | None:
    """The index of the assistant message the user message at `last_user` refers to: the latest earlier
    assistant message that is a story (2+ sentences; a title is not), else the latest assistant message."""
    earlier = [i for i in range(last_user) if messages[i]["role"] == "assistant"]
    stories = [i for i in earlier if _is_story(messages[i]["content"])]
    return (stories or earlier or [None])[-1]


def fit_conversation(messages: Sequence[dict], tokenizer, max_tokens: int, reserve: int = 0) -> list[dict]:
    """The conversation with its oldest whole (user, assistant) pairs dropped until it fits `max_tokens`.

    Kept always: a system message, the last user message (with the assistant reply after it, when `messages`
    ends with one: a training example), and the (user, assistant) pair whose story that user message refers to
    (`reference_index`). Fits means len(render_chat(kept, tokenizer, add_generation_prompt)) + reserve <=
    max_tokens, with add_generation_prompt when `messages` ends with a user message (serving: `reserve` is
    room for the reply). Raises ValueError if even what is always kept does not fit.
    """
    messages = list(messages)
    if not messages or messages[-1]["role"] == "system":
        raise ValueError("a conversation to fit must end with a user or an assistant message")
    generation = messages[-1]["role"] == "user"
    last_user = len(messages) - (1 if generation else 2)
    head = 1 if messages and messages[0]["role"] == "system" else 0
    ref = reference_index(messages, last_user)
    pairs = [i for i in range(head, last_user, 2) if ref != i + 1]  # user indices of droppable pairs
    dropped: set[int] = set()

    def kept() -> list[dict]:
        return [m for i, m in enumerate(messages) if i not in dropped]

    def fits() -> bool:
        return len(render_chat(kept(), tokenizer, add_generation_prompt=generation)[0]) + reserve <= max_tokens

    for i in pairs:
        if fits():
            return kept()
        dropped |= {i, i + 1}
    if not fits():
        raise ValueError(f"the last turn does not fit {max_tokens} tokens (reserve {reserve}) even alone")
    return kept()


def assistant_turns(conv: dict) -> list[dict]:
    """Each assistant turn of a conversation: {"messages": the messages before it (ending with the user's
    request), "spec", "previous": the story the request refers to (None for a first turn), "target"}."""
    msgs, out = conv["messages"], []
    idx = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for i, spec in zip(idx, conv["specs"], strict=True):
        ref = reference_index(msgs, i - 1)
        out.append({"messages": msgs[:i], "spec": spec, "target": msgs[i]["content"],
                    "previous": msgs[ref]["content"] if ref is not None else None})
    return out


def training_examples(conv: dict, tokenizer, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) for each assistant turn that fits: its context by `fit_conversation` (what serving sees), the
    reply, and a mask on that reply and its <|end|> only (earlier replies are context, trained in their own
    turn). Turns that cannot fit `max_tokens` are left out."""
    out = []
    for t in assistant_turns(conv):
        messages = t["messages"] + [{"role": "assistant", "content": t["target"]}]
        try:
            window = fit_conversation(messages, tokenizer, max_tokens)
        except ValueError:
            continue
        ids, _ = render_chat(window, tokenizer)
        context, _ = render_chat(window[:-1], tokenizer, add_generation_prompt=True)
        out.append((ids, [0] * len(context) + [1] * (len(ids) - len(context))))
    return out
