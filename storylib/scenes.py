"""Chapter 17 — little story scenes, drawn by rules, each with the caption a story would give it.

The illustrator needs pictures with captions, and nobody drew TinyStories. So we draw them: a scene is a few
things from the stories (a girl, a dog, a ball, a tree...) with a colour, a size and a place, under a sky with a time
of day and maybe weather, rendered with PIL at 4x and shrunk (antialiased), with enough jitter (positions, sizes,
shades, backgrounds, noise) that a model must learn the concepts rather than the pixels. The caption is written
the way stories say it: "a red ball under a big tree", "two birds in the rain", "a small blue cat on the left at
night". Everything follows from a seed.

    spec = sample_spec(rng, split="train")     # what is in the scene (a Scene), drawn from the train split
    caption(spec)                              # "a red ball under a big tree"
    picture = render(spec, rng, size=32)       # uint8 (size, size, 3)
    make_dataset(n, seed, split, size)         # pictures (n, size, size, 3), captions, specs, attribute labels

Held-out combinations: a few colour + thing pairs (HELDOUT_PAIRS, e.g. "blue dog") never appear in the train split
and appear in every held-out scene, so a model that draws them has composed what it learned separately.
`attributes(spec)` gives the labels an attribute classifier is trained on (thing, colour, place, count).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

THINGS = ("girl", "boy", "cat", "dog", "bird", "fish", "ball", "tree", "house", "sun", "flower", "car", "boat")
COLOURS = {"red": (214, 39, 40), "blue": (31, 119, 220), "green": (44, 160, 44), "yellow": (240, 200, 30),
           "purple": (148, 80, 189), "orange": (255, 127, 14), "pink": (240, 120, 180), "brown": (140, 86, 55)}
SIZES = ("small", "big")
PLACES = ("left", "right", "top", "bottom")  # "on the left", "at the top"
RELATIONS = ("on", "under", "next to")
TIMES = ("day", "night", "evening")
WEATHER = ("sunny", "rain", "snow")
NUMBERS = {1: "a", 2: "two", 3: "three"}
PLURAL = {"fish": "fish"}  # the rest add "s"

# things that stand on the ground, that fly or swim, that can be counted, that can carry something on them
GROUNDED = {"girl", "boy", "cat", "dog", "ball", "tree", "house", "flower", "car"}
COUNTABLE = {"cat", "dog", "bird", "fish", "ball", "flower", "car", "boat", "tree"}
SUPPORTS = {"tree": ("bird", "cat", "ball"), "house": ("bird", "cat"), "car": ("cat", "dog", "ball", "bird"),
            "boat": ("girl", "boy", "cat", "dog", "bird")}  # "a cat on a car"; "under" uses the same pairs
HELDOUT_PAIRS = (("blue", "dog"), ("red", "cat"), ("yellow", "car"), ("green", "bird"), ("pink", "boat"))


@dataclass(frozen=True)
class Thing:
    kind: str
    colour: str | None  # None for things that keep their own colours (the sun, a tree's green)
    size: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Scene:
    """What a picture shows: one thing with a place, or two things in a relation; a sky; the weather."""

    things: tuple[Thing, ...]
    place: str | None = None  # for one thing: where in the picture
    relation: str | None = None  # for two: things[0] <relation> things[1]
    time: str = "day"
    weather: str = "sunny"


# ----------------------------------------------------------------------------- specs and captions


def _colourable(kind: str) -> bool:
    return kind not in ("sun", "tree")


def _thing(rng: random.Random, kind: str, allow: set) -> Thing:
    colours = [c for c in COLOURS if (c, kind) in allow or (c, kind) not in HELDOUT_PAIRS]
    colour = rng.choice(colours) if _colourable(kind) else None
    size = rng.choice(SIZES + (None,)) if kind != "sun" else None
    return Thing(kind, colour, size)


def _places(kind: str) -> tuple:
    """Where a thing can be: the sun and birds in the sky, a ball anywhere, the rest on the ground or the water."""
    if kind == "sun":
        return ("left", "right", "top")
    if kind == "bird":  # a bird with no place would be drawn where one "at the top" is
        return PLACES
    if kind == "ball":
        return PLACES + (None,)
    return ("left", "right", "bottom", None)


def sample_spec(rng: random.Random, split: str = "train") -> Scene:
    """A scene drawn from `split`: "train" never holds a HELDOUT_PAIRS pair; "heldout" always holds one."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    allow = set(HELDOUT_PAIRS) if split == "heldout" else set()
    time, weather = rng.choice(TIMES), rng.choice(WEATHER) if rng.random() < 0.4 else "sunny"
    if time == "night" and weather == "sunny":
        weather = rng.choice(("sunny", "rain", "snow"))
    forced = rng.choice(HELDOUT_PAIRS) if split == "heldout" else None
    if rng.random() < 0.5:  # one thing (maybe several of it) in a place
        kind = forced[1] if forced else rng.choice([k for k in THINGS if not (k == "sun" and time == "night")])
        thing = Thing(forced[1], forced[0], rng.choice(SIZES + (None,))) if forced else _thing(rng, kind, allow)
        if kind in COUNTABLE and rng.random() < 0.3:
            thing = Thing(thing.kind, thing.colour, None, rng.choice((2, 3)))
        place = rng.choice(_places(kind))
        return Scene((thing,), place=place, time=time, weather=weather)
    base = rng.choice(sorted(SUPPORTS))
    if forced and forced[1] in SUPPORTS:
        base = forced[1]
    elif forced:
        base = rng.choice([b for b in SUPPORTS if forced[1] in SUPPORTS[b]] or sorted(SUPPORTS))
    top_kind = forced[1] if forced and forced[1] != base else rng.choice(SUPPORTS[base])
    relation = rng.choice(RELATIONS) if base != "boat" else rng.choice(("on", "next to"))
    first = Thing(top_kind, forced[0], None) if forced and top_kind == forced[1] else _thing(rng, top_kind, allow)
    second = Thing(base, forced[0], rng.choice(SIZES)) if forced and base == forced[1] and first.kind != base \
        else _thing(rng, base, allow)
    return Scene((first, second), relation=relation, time=time, weather=weather)


def _noun_phrase(t: Thing, article: str = "a") -> str:
    if t.kind in ("girl", "boy"):  # people are not coloured: their clothes are
        words = [w for w in (t.size, t.kind) if w]
        lead = "an" if words[0][0] in "aeiou" else "a"
        clothes = "dress" if t.kind == "girl" else "shirt"
        article = "an" if t.colour and t.colour[0] in "aeiou" else "a"
        return " ".join([lead, *words]) + (f" in {article} {t.colour} {clothes}" if t.colour else "")
    words = [w for w in (t.size, t.colour) if w]
    noun = t.kind if t.count == 1 else PLURAL.get(t.kind, t.kind + "s")
    lead = NUMBERS[t.count] if t.count > 1 else ("an" if (words or [noun])[0][0] in "aeiou" else "a")
    lead = lead if article == "a" or t.count > 1 else article
    return " ".join([lead, *words, noun])


def caption(scene: Scene) -> str:
    """The scene as a story would say it: 'a red ball under a big tree', 'two birds in the rain at night'."""
    if len(scene.things) == 1:
        t = scene.things[0]
        text = _noun_phrase(t, "the" if t.kind == "sun" else "a")
        if scene.place:
            text += " at the " + scene.place if scene.place in ("top", "bottom") else " on the " + scene.place
    else:
        text = f"{_noun_phrase(scene.things[0])} {scene.relation} {_noun_phrase(scene.things[1])}"
    if scene.weather in ("rain", "snow"):
        text += f" in the {scene.weather}"
    if scene.time != "day":
        text += " at night" if scene.time == "night" else " in the evening"
    return text


def attributes(scene: Scene) -> dict:
    """Labels for an attribute classifier: the first thing's kind, colour and count, where it is, the relation,
    the second thing and its colour (a held-out pair may be the second thing: "a cat on a yellow car"). Sizes are
    not labelled: "small" and "big" are relative, and the captions' sizes go unchecked."""
    t, other = scene.things[0], scene.things[1] if len(scene.things) > 1 else None
    return {"thing": t.kind, "colour": t.colour, "count": t.count, "place": scene.place,
            "relation": scene.relation, "other": other.kind if other else None,
            "other_colour": other.colour if other else None, "time": scene.time, "weather": scene.weather}


# ----------------------------------------------------------------------------- drawing


def _shade(rgb: tuple, rng: random.Random, spread: int = 18) -> tuple:
    return tuple(int(np.clip(c + rng.randint(-spread, spread), 0, 255)) for c in rgb)


def _sky(draw: ImageDraw.ImageDraw, S: int, scene: Scene, rng: random.Random) -> int:
    """The sky's gradient, the ground (grass), stars at night; returns the ground's top row."""
    top, bottom = {"day": ((110, 170, 235), (190, 225, 250)), "evening": ((250, 140, 80), (250, 210, 150)),
                   "night": ((10, 15, 50), (40, 50, 100))}[scene.time]
    top, bottom = _shade(top, rng, 12), _shade(bottom, rng, 12)
    ground = int(S * rng.uniform(0.68, 0.76))
    for y in range(ground):
        f = y / max(ground - 1, 1)
        draw.line([(0, y), (S, y)], fill=tuple(int(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)))
    grass = (60, 140, 60) if scene.time == "day" else (40, 90, 45) if scene.time == "evening" else (20, 50, 30)
    draw.rectangle([0, ground, S, S], fill=_shade(grass, rng, 10))
    if scene.time == "night":
        for _ in range(rng.randint(4, 9)):
            x, y, r = rng.uniform(0, S), rng.uniform(0, ground * 0.6), S * 0.006
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 220))
    return ground


def _weather(draw: ImageDraw.ImageDraw, S: int, scene: Scene, rng: random.Random) -> None:
    if scene.weather == "rain":
        for _ in range(rng.randint(40, 70)):
            x, y = rng.uniform(0, S), rng.uniform(0, S)
            # dark streaks by day and in the evening, light ones at night: rain must show against any sky,
            # and be about a pixel wide once the picture is shrunk
            fill = (215, 225, 250) if scene.time == "night" else (60, 80, 130)
            draw.line([(x, y), (x - S * 0.015, y + S * 0.05)], fill=fill, width=max(1, S // 64))
    elif scene.weather == "snow":
        for _ in range(rng.randint(40, 70)):
            x, y, r = rng.uniform(0, S), rng.uniform(0, S), S * rng.uniform(0.006, 0.012)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 255))


def _draw_thing(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, s: float, rgb: tuple,
                rng: random.Random) -> None:
    """One thing centred at (cx, cy) with a height of about s pixels, in colour rgb."""
    dark = tuple(int(c * 0.55) for c in rgb)
    skin, black = (240, 200, 160), (30, 30, 30)

    def ell(x0, y0, x1, y1, fill):
        d.ellipse([cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s], fill=fill)

    def poly(points, fill):
        d.polygon([(cx + x * s, cy + y * s) for x, y in points], fill=fill)

    def rect(x0, y0, x1, y1, fill):
        d.rectangle([cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s], fill=fill)

    if kind in ("girl", "boy"):
        ell(-0.13, -0.5, 0.13, -0.24, skin)
        ell(-0.15, -0.54, 0.15, -0.36, (90, 60, 30) if kind == "boy" else (200, 150, 60))
        if kind == "girl":
            poly([(0, -0.26), (-0.24, 0.2), (0.24, 0.2)], rgb)
        else:
            rect(-0.15, -0.25, 0.15, 0.15, rgb)
        rect(-0.1, 0.15, -0.04, 0.5, dark)
        rect(0.04, 0.15, 0.1, 0.5, dark)
    elif kind in ("cat", "dog"):
        ell(-0.4, -0.1, 0.25, 0.3, rgb)
        ell(0.1, -0.35, 0.45, -0.02, rgb)
        if kind == "cat":
            poly([(0.14, -0.25), (0.2, -0.45), (0.27, -0.3)], rgb)
            poly([(0.3, -0.3), (0.38, -0.47), (0.42, -0.22)], rgb)
        else:
            ell(0.05, -0.3, 0.16, -0.05, dark)
            ell(0.4, -0.22, 0.52, -0.12, black)
        for x in (-0.32, -0.15, 0.02, 0.17):
            rect(x, 0.2, x + 0.07, 0.45, rgb)
        poly([(-0.38, 0.0), (-0.55, -0.2), (-0.5, -0.25)], rgb)
        ell(0.28, -0.25, 0.33, -0.2, black)
    elif kind == "bird":
        ell(-0.3, -0.15, 0.2, 0.15, rgb)
        ell(0.1, -0.25, 0.32, -0.03, rgb)
        poly([(0.3, -0.16), (0.45, -0.12), (0.3, -0.08)], (250, 170, 30))
        poly([(-0.1, -0.05), (0.1, -0.05), (-0.05, -0.35)], dark)
        ell(0.2, -0.18, 0.25, -0.13, black)
    elif kind == "fish":
        ell(-0.35, -0.18, 0.3, 0.18, rgb)
        poly([(-0.3, 0), (-0.55, -0.2), (-0.55, 0.2)], dark)
        ell(0.15, -0.07, 0.21, -0.01, black)
    elif kind == "ball":
        ell(-0.3, -0.3, 0.3, 0.3, rgb)
        rect(-0.3, -0.05, 0.3, 0.05, (250, 250, 250))
    elif kind == "tree":
        rect(-0.08, 0.0, 0.08, 0.5, (110, 70, 40))
        ell(-0.38, -0.55, 0.38, 0.15, _shade((40, 130, 50), rng, 20))
    elif kind == "house":
        rect(-0.4, -0.1, 0.4, 0.5, rgb)
        poly([(-0.5, -0.1), (0, -0.5), (0.5, -0.1)], dark)
        rect(-0.08, 0.2, 0.08, 0.5, (90, 60, 40))
        rect(0.17, 0.02, 0.3, 0.15, (220, 240, 250))
    elif kind == "sun":
        for a in range(8):
            t = a * math.pi / 4
            d.line([(cx + 0.25 * s * math.cos(t), cy + 0.25 * s * math.sin(t)),
                    (cx + 0.42 * s * math.cos(t), cy + 0.42 * s * math.sin(t))], fill=(250, 210, 40),
                   width=max(1, int(s * 0.06)))
        ell(-0.25, -0.25, 0.25, 0.25, (252, 220, 50))
    elif kind == "flower":
        rect(-0.03, -0.05, 0.03, 0.5, (40, 130, 50))
        for a in range(5):
            t = a * 2 * math.pi / 5
            x, y = 0.15 * math.cos(t), -0.2 + 0.15 * math.sin(t)
            ell(x - 0.12, y - 0.12, x + 0.12, y + 0.12, rgb)
        ell(-0.07, -0.27, 0.07, -0.13, (250, 210, 40))
    elif kind == "car":
        rect(-0.5, -0.05, 0.5, 0.25, rgb)
        poly([(-0.3, -0.05), (-0.2, -0.3), (0.2, -0.3), (0.32, -0.05)], rgb)
        rect(-0.15, -0.24, 0.15, -0.08, (220, 240, 250))
        ell(-0.38, 0.15, -0.18, 0.35, black)
        ell(0.18, 0.15, 0.38, 0.35, black)
    elif kind == "boat":
        poly([(-0.5, 0.1), (0.5, 0.1), (0.35, 0.35), (-0.35, 0.35)], rgb)
        rect(-0.02, -0.5, 0.02, 0.1, (110, 70, 40))
        poly([(0.02, -0.48), (0.35, 0.05), (0.02, 0.05)], (245, 245, 245))
    else:
        raise ValueError(f"no drawing for {kind!r}; known: {THINGS}")


def _colour_of(t: Thing, rng: random.Random) -> tuple:
    return _shade(COLOURS[t.colour], rng) if t.colour else (0, 0, 0)


def _place_xy(place: str | None, S: int, ground: int, kind: str, rng: random.Random) -> tuple[float, float]:
    x = {"left": 0.25, "right": 0.75}.get(place, 0.5) * S + rng.uniform(-0.06, 0.06) * S
    if place == "top" or kind in ("sun",) or (kind == "bird" and place != "bottom"):
        y = rng.uniform(0.15, 0.3) * S
    elif place == "bottom":
        y = rng.uniform(0.8, 0.88) * S
    else:
        y = ground - rng.uniform(0.0, 0.04) * S
    return x, y


def render(scene: Scene, rng: random.Random, size: int = 32, supersample: int = 4) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) RGB picture: drawn at size x supersample, then shrunk (antialiased)."""
    S = size * supersample
    img = Image.new("RGB", (S, S))
    d = ImageDraw.Draw(img)
    ground = _sky(d, S, scene, rng)
    scale = {"small": 0.22, None: 0.3, "big": 0.42}
    if scene.things[0].kind == "fish" or any(t.kind in ("boat", "fish") for t in scene.things):
        d.rectangle([0, ground, S, S], fill=_shade((40, 90, 180), rng, 12))  # water instead of grass
    if len(scene.things) == 1:
        t = scene.things[0]
        s = scale[t.size] * S * rng.uniform(0.9, 1.1) / (1 + 0.25 * (t.count - 1))
        x0, y0 = _place_xy(scene.place, S, ground, t.kind, rng)
        for i in range(t.count):
            dx = (i - (t.count - 1) / 2) * s * 1.1
            y = y0 - (0.0 if t.kind not in GROUNDED else s * 0.35)
            _draw_thing(d, t.kind, x0 + dx, y, s, _colour_of(t, rng), rng)
    else:
        a, b = scene.things
        sb = scale[b.size] * S * rng.uniform(1.1, 1.3)
        sa = scale[a.size] * S * rng.uniform(0.75, 0.9)  # any smaller, and a small cat is a few pixels
        bx = S * rng.uniform(0.42, 0.58) if scene.relation != "next to" else S * rng.uniform(0.3, 0.4)
        by = ground - sb * 0.35
        _draw_thing(d, b.kind, bx, by, sb, _colour_of(b, rng), rng)
        if scene.relation == "on":
            ax, ay = bx + rng.uniform(-0.1, 0.1) * sb, by - sb * 0.5 - sa * 0.3
        elif scene.relation == "under":
            ax, ay = bx + rng.uniform(-0.15, 0.15) * sb, ground + sa * 0.25
        else:
            ax, ay = bx + sb * 0.5 + sa * 0.6 + rng.uniform(0, 0.05) * S, ground - sa * 0.35
        _draw_thing(d, a.kind, ax, ay, sa, _colour_of(a, rng), rng)
    _weather(d, S, scene, rng)
    img = img.filter(ImageFilter.GaussianBlur(supersample / 4)).resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(img, dtype=np.float32)
    pixels += np.random.default_rng(rng.getrandbits(32)).normal(0, 3.0, pixels.shape)  # a little sensor noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _scene(seed: int, split: str, i: int, size: int) -> tuple[np.ndarray, Scene]:
    rng = random.Random(f"{seed}/{split}/{i}")
    spec = sample_spec(rng, split)
    return render(spec, rng, size), spec


def _scenes(args: tuple) -> list:
    seed, split, start, stop, size = args
    return [_scene(seed, split, i, size) for i in range(start, stop)]


def make_dataset(n: int, seed: int = 0, split: str = "train", size: int = 32, workers: int = 1) -> dict:
    """n scenes of `split` from `seed`: {"pictures": uint8 (n, size, size, 3), "captions", "specs",
    "attributes"}; the same (n, seed, split, size) gives the same bytes, and scene i depends only on (seed, i),
    so `workers` processes (a GPU machine's cores: ~6 ms a 64×64 scene on one) draw the same set, faster."""
    chunks = [(seed, split, a, min(a + 1000, n), size) for a in range(0, n, 1000)]
    if workers > 1 and len(chunks) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            scenes = [x for chunk in pool.imap(_scenes, chunks) for x in chunk]
    else:
        scenes = [x for chunk in map(_scenes, chunks) for x in chunk]
    pictures = np.empty((n, size, size, 3), np.uint8)
    for i, (picture, _) in enumerate(scenes):
        pictures[i] = picture
    specs = [spec for _, spec in scenes]
    return {"pictures": pictures, "captions": [caption(s) for s in specs], "specs": specs,
            "attributes": [attributes(s) for s in specs]}


def has_heldout_pair(scene: Scene) -> bool:
    return any((t.colour, t.kind) in HELDOUT_PAIRS for t in scene.things)
