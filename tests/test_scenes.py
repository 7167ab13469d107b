"""storylib.scenes: the pictures and captions Chapter 17's illustrator learns from."""

from __future__ import annotations

import random

import numpy as np
import pytest

from storylib import scenes as S


def test_a_scene_is_the_same_for_the_same_seed_and_differs_for_another():
    a, b = S.make_dataset(6, seed=3, size=32), S.make_dataset(6, seed=3, size=32)
    assert np.array_equal(a["pictures"], b["pictures"]) and a["captions"] == b["captions"]
    c = S.make_dataset(6, seed=4, size=32)
    assert not np.array_equal(a["pictures"], c["pictures"])
    assert S.make_dataset(3, seed=3, size=32)["captions"] == a["captions"][:3], "scene i depends on (seed, i) only"


def test_pictures_are_rgb_bytes_with_real_variety():
    d = S.make_dataset(24, seed=0, size=32)
    pics = d["pictures"]
    assert pics.shape == (24, 32, 32, 3) and pics.dtype == np.uint8
    assert pics.std(axis=(1, 2)).min() > 5, "every picture has structure, not one flat colour"
    assert len(set(d["captions"])) > 20


def test_the_train_split_never_shows_a_held_out_pair_and_the_held_out_split_always_does():
    for i in range(400):
        assert not S.has_heldout_pair(S.sample_spec(random.Random(i), "train"))
        held = S.sample_spec(random.Random(i), "heldout")
        assert S.has_heldout_pair(held)
        colour, kind = next((t.colour, t.kind) for t in held.things if (t.colour, t.kind) in S.HELDOUT_PAIRS)
        assert colour in S.caption(held) and kind in S.caption(held)
    with pytest.raises(ValueError, match="split"):
        S.sample_spec(random.Random(0), "test")


@pytest.mark.parametrize(("scene", "text"), [
    (S.Scene((S.Thing("ball", "red"), S.Thing("tree", None, "big")), relation="under"), "a red ball under a big tree"),
    (S.Scene((S.Thing("bird", "green", None, 2),), weather="rain"), "two green birds in the rain"),
    (S.Scene((S.Thing("cat", "orange", "small"),), place="left", time="night"),
     "a small orange cat on the left at night"),
    (S.Scene((S.Thing("girl", "blue"),), place="bottom"), "a girl in a blue dress at the bottom"),
    (S.Scene((S.Thing("sun", None),), place="top", time="evening"), "the sun at the top in the evening"),
])
def test_captions_read_like_a_story(scene, text):
    assert S.caption(scene) == text


def test_every_thing_can_be_drawn_in_every_colour_and_size():
    for kind in S.THINGS:
        for colour in (None, *S.COLOURS) if kind in ("sun", "tree") else S.COLOURS:
            scene = S.Scene((S.Thing(kind, colour, "small"),), place="left")
            pic = S.render(scene, random.Random(0), size=16)
            assert pic.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="no drawing"):
        S.render(S.Scene((S.Thing("dragon", "red"),)), random.Random(0), size=16)
