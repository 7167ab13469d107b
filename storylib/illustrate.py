"""Chapter 17 — from a story's sentence to a caption the illustrator knows, and from the caption to a picture.

The image model only knows the scene generator's little language (storylib.scenes): thirteen things, eight colours,
two sizes, on/under/next to, two or three of a thing, night, evening, rain and snow. A story says "Lily kicked her
big red ball under the old tree while it rained". So before drawing, a few rules read the sentence the way a child
reading it aloud would point at a picture book: which things are there (Lily is a girl, a puppy is a dog), what
colour and size each one is (the words just before it), whether one is on, under or next to another, and the time
and the weather. The result is a `scenes.Scene`, and `scenes.caption` writes it in the exact words the model was
trained on. When the sentence holds nothing the model can draw, `NothingToDraw` says so.

    spec = read_scene("Lily kicked her big red ball under the old tree.")   # a scenes.Scene, or NothingToDraw
    caption_for("Lily kicked her big red ball under the old tree.")         # "a big red ball under a tree"
    pick_sentence(story)                                                    # the most drawable sentence
    Illustrator.load("models/illustrator").draw(caption, steps=25, guidance=3.0, seed=0)   # uint8 (64, 64, 3)
    Illustrator.load().illustrate(story)     # Picture(sentence, caption, pixels); .png() gives the PNG bytes
"""

from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storylib import scenes
from storylib.scenes import COLOURS, SUPPORTS, Scene, Thing

# story words -> the scene generator's things (TinyStories' commonest names are girls and boys)
NOUNS = {
    "girl": "girl", "lily": "girl", "sue": "girl", "mia": "girl", "anna": "girl", "amy": "girl", "lucy": "girl",
    "sara": "girl", "sarah": "girl", "emma": "girl", "kitty": "cat", "boy": "boy", "tim": "boy", "tom": "boy",
    "timmy": "boy", "ben": "boy", "max": "boy", "sam": "boy", "jack": "boy", "bob": "boy", "cat": "cat",
    "kitten": "cat", "dog": "dog", "puppy": "dog", "pup": "dog", "doggy": "dog", "bird": "bird", "birdie": "bird",
    "fish": "fish", "ball": "ball", "tree": "tree", "house": "house", "home": "house", "sun": "sun",
    "flower": "flower", "car": "car", "truck": "car", "boat": "boat", "ship": "boat",
}
PLURALS = {"girls": "girl", "boys": "boy", "cats": "cat", "kittens": "cat", "dogs": "dog", "puppies": "dog",
           "birds": "bird", "balls": "ball", "trees": "tree", "houses": "house", "flowers": "flower", "cars": "car",
           "trucks": "car", "boats": "boat", "ships": "boat"}
SIZES = {"small": "small", "little": "small", "tiny": "small", "big": "big", "large": "big", "huge": "big"}
COUNTS = {"two": 2, "three": 3}
RELATIONS = {"on": "on", "onto": "on", "under": "under", "below": "under", "beneath": "under", "next": "next to",
             "near": "next to", "beside": "next to", "by": "next to"}
PLACES = {("on", "the", "left"): "left", ("on", "the", "right"): "right", ("at", "the", "top"): "top",
          ("at", "the", "bottom"): "bottom", ("in", "the", "sky"): "top"}
NIGHT, EVENING = {"night", "dark", "moon", "stars", "bedtime"}, {"evening", "sunset", "dusk"}
RAIN, SNOW = {"rain", "rained", "raining", "rainy"}, {"snow", "snowed", "snowing", "snowy", "snowman"}
MODIFIER_REACH = 3  # a colour or size word counts for the noun at most this many words after it


def illustrator_folder(folder: str | Path | None = None) -> Path:
    """Where the illustrator lives: `folder` when given, else $LLM101N_ILLUSTRATOR, else the course's
    models/illustrator (resolved like every other model folder). The folder may not exist: loading says so."""
    from storylib.train import resolve_course_path

    return resolve_course_path(str(folder or os.environ.get("LLM101N_ILLUSTRATOR") or "models/illustrator"))


class NothingToDraw(ValueError):
    """The sentence names nothing the illustrator can draw."""


def _words(sentence: str) -> list[str]:
    return re.findall(r"[a-z]+", sentence.lower())


def _things(words: list[str]) -> list[tuple[int, Thing]]:
    """(position, Thing) for every drawable noun, with the colour, size and count words just before it."""
    found = []
    for i, w in enumerate(words):
        kind, count = (NOUNS[w], 1) if w in NOUNS else (PLURALS[w], 2) if w in PLURALS else (None, 1)
        if kind is None:
            continue
        before = words[max(0, i - MODIFIER_REACH):i]
        colour = next((b for b in reversed(before) if b in COLOURS), None)
        if kind in ("girl", "boy") and words[i + 1:i + 2] == ["in"]:  # "a girl in a red dress": her clothes
            colour = next((w for w in words[i + 2:i + 5] if w in COLOURS), colour)
        size = next((SIZES[b] for b in reversed(before) if b in SIZES), None)
        count = next((COUNTS[b] for b in reversed(before) if b in COUNTS), count)
        count = count if kind in scenes.COUNTABLE else 1
        found.append((i, Thing(kind, colour, size if count == 1 else None, count)))
    return found


def _relation(words: list[str], things: list[tuple[int, Thing]]) -> tuple[str, Thing, Thing] | None:
    """The first "A on/under/next to B" the generator can draw: B carries A (scenes.SUPPORTS), one of each."""
    for (i, a), (j, b) in zip(things, things[1:], strict=False):
        between = words[i + 1:j]
        rel = next((RELATIONS[w] for w in between if w in RELATIONS), None)
        if rel and b.kind in SUPPORTS and a.kind in SUPPORTS[b.kind] and not (rel == "under" and b.kind == "boat"):
            return rel, a, b
    return None


def _drawable(t: Thing, rng: random.Random) -> Thing:
    """The thing as the generator draws it: the sun and trees keep their colours, everything else has one (a
    colour the story does not give is picked from the sentence's seed, so the same sentence draws the same way)."""
    if t.kind in ("sun", "tree"):
        return Thing(t.kind, None, None if t.kind == "sun" else t.size, t.count)
    return Thing(t.kind, t.colour or rng.choice(sorted(COLOURS)), t.size, t.count)


def _remembered(story: str) -> dict[str, tuple[str | None, str | None]]:
    """kind -> (colour, size) the story first gives it: "his red ball" early on keeps "the ball" red later."""
    memory: dict[str, tuple[str | None, str | None]] = {}
    for _, t in _things(_words(story)):
        colour, size = memory.get(t.kind, (None, None))
        memory[t.kind] = (colour or t.colour, size or t.size)
    return memory


def _recall(t: Thing, memory: dict) -> Thing:
    colour, size = memory.get(t.kind, (None, None))
    return Thing(t.kind, t.colour or colour, t.size or (size if t.count == 1 else None), t.count)


def read_scene(sentence: str, story: str = "") -> Scene:
    """The scene a sentence describes, in the generator's vocabulary; NothingToDraw if it names nothing drawable.
    A colour or size the sentence leaves out is taken from the rest of the `story`, where it gives one."""
    words = _words(sentence)
    memory = _remembered(story)
    things = [(i, _recall(t, memory)) for i, t in _things(words)]
    if not things:
        raise NothingToDraw(f"nothing to draw in {sentence!r}: it names none of {', '.join(scenes.THINGS)}")
    rng = random.Random(" ".join(words))
    wordset = set(words)
    time = "night" if wordset & NIGHT else "evening" if wordset & EVENING else "day"
    weather = "rain" if wordset & RAIN else "snow" if wordset & SNOW else "sunny"
    related = _relation(words, things)
    if related:
        rel, a, b = related
        return Scene((_drawable(Thing(a.kind, a.colour, a.size), rng), _drawable(b, rng)), relation=rel,
                     time=time, weather=weather)
    # one thing: the one the sentence describes most (a colour, a size, a number), the first on ties
    candidates = [t for _, t in things if not (t.kind == "sun" and time == "night")]
    thing = max(candidates, key=lambda t: (t.colour is not None) + (t.size is not None) + (t.count > 1), default=None)
    if thing is None:
        raise NothingToDraw(f"nothing to draw in {sentence!r}: the sun does not shine at night")
    place = next((p for i in range(len(words) - 2) if (p := PLACES.get(tuple(words[i:i + 3])))), None)
    if place is None and thing.kind in ("sun", "bird"):  # the generator always places these (in the sky)
        place = "top"
    elif place == "bottom" and thing.kind == "sun" or place == "top" and thing.kind not in ("sun", "bird", "ball"):
        place = None  # where the generator never puts them
    return Scene((_drawable(thing, rng),), place=place, time=time, weather=weather)


def caption_for(sentence: str, story: str = "") -> str:
    """The caption the illustrator was trained on for this sentence of `story` (raises NothingToDraw)."""
    return scenes.caption(read_scene(sentence, story))


def _score(sentence: str) -> int:
    try:
        scene = read_scene(sentence)
    except NothingToDraw:
        return -1
    return 2 * len(scene.things) + (scene.time != "day") + (scene.weather != "sunny")


def pick_sentence(story: str) -> str:
    """The sentence of the story with the most to draw (two things in a relation beat one; the first on ties)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", story) if s.strip()]
    best = max(sentences, key=_score, default="")
    if not best or _score(best) < 0:
        raise NothingToDraw("nothing to draw in this story: no sentence names a thing the illustrator knows")
    return best


@dataclass(frozen=True)
class Picture:
    """What "Illustrate" shows: the sentence drawn, the caption the model was given and the picture, uint8 (S, S, 3)."""

    sentence: str
    caption: str
    pixels: np.ndarray

    def png(self, scale: int = 4) -> bytes:
        """The picture as PNG bytes, enlarged `scale` times with square pixels (64 × 64 is small on a screen)."""
        from PIL import Image

        img = Image.fromarray(self.pixels)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()


class Illustrator:
    """The trained image half: a VQ-VAE, a DiT and the storyteller's tokenizer, loaded from one folder."""

    def __init__(self, vq, dit, tokenizer):
        self.vq, self.dit, self.tokenizer = vq, dit, tokenizer

    @classmethod
    def load(cls, folder: str | Path = "models/illustrator", device: str = "cpu") -> Illustrator:
        from storylib import dit as D
        from storylib import vqvae as V
        from storylib.train import load_tokenizer, resolve_course_path

        folder = resolve_course_path(str(folder))
        tok, _ = load_tokenizer("models/storyteller/tokenizer.json")
        return cls(V.load_vqvae(folder / "vqvae", device), D.load_dit(folder / "dit", device), tok)

    def draw(self, caption: str, steps: int = 25, guidance: float = 3.0, seed: int = 0) -> np.ndarray:
        """One picture, uint8 (S, S, 3), for a caption in the generator's words (see caption_for)."""
        import torch

        from storylib import dit as D
        from storylib import vqvae as V

        device = next(self.dit.parameters()).device
        tokens = D.encode_captions(self.tokenizer, [caption], self.dit.config.text_len).to(device)
        z = D.sample(self.dit, tokens, steps=steps, guidance=guidance,
                     generator=torch.Generator(device).manual_seed(seed))
        return V.to_pictures(self.vq.decode_latents(z, snap=True).float().cpu())[0]

    def illustrate(self, story: str, sentence: str | None = None, steps: int = 25, guidance: float = 3.0,
                   seed: int = 0) -> Picture:
        """Draw `sentence` (or, when None, the story's most drawable one); raises NothingToDraw with the reason."""
        sentence = (sentence or "").strip() or pick_sentence(story)
        caption = caption_for(sentence, story)
        return Picture(sentence, caption, self.draw(caption, steps=steps, guidance=guidance, seed=seed))
