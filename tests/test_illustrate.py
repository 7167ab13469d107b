"""storylib.illustrate: story sentences -> the scene generator's captions -> pictures."""

import io
import random

import numpy as np
import pytest

from storylib import illustrate as I
from storylib import scenes
from storylib.scenes import Scene, Thing
from tests.illustrator_model import tiny_illustrator


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_generator_caption_reads_back_as_itself(split):
    """The rules understand the generator's own language: caption_for(caption(spec)) == caption(spec)."""
    for i in range(1500):
        spec = scenes.sample_spec(random.Random(f"illustrate/{split}/{i}"), split)
        assert I.caption_for(scenes.caption(spec)) == scenes.caption(spec)


@pytest.mark.parametrize("sentence, scene", [
    ("Lily kicked her big red ball under the old tree.",
     Scene((Thing("ball", "red", "big"), Thing("tree", None, None)), relation="under")),
    ("At night, a little green cat sat on the blue car.",
     Scene((Thing("cat", "green", "small"), Thing("car", "blue", None)), relation="on", time="night")),
    ("One day, Tim saw two brown puppies in the rain.",
     Scene((Thing("dog", "brown", None, 2),), weather="rain")),
    ("The yellow bird sang next to the pink house in the evening.",
     Scene((Thing("bird", "yellow", None), Thing("house", "pink", None)), relation="next to", time="evening")),
    ("The sun was bright in the sky.", Scene((Thing("sun", None, None),), place="top")),
    ("Max had a purple boat. It snowed.", Scene((Thing("boat", "purple", None),), weather="snow")),
])
def test_story_sentences_become_the_scene_they_describe(sentence, scene):
    assert I.read_scene(sentence) == scene
    assert I.caption_for(sentence) == scenes.caption(scene)


def test_a_missing_colour_is_chosen_once_per_sentence():
    """The generator never draws an uncoloured ball: the rules pick a colour, the same one every time."""
    spec = I.read_scene("The ball rolled far away.")
    assert spec.things[0].kind == "ball" and spec.things[0].colour in scenes.COLOURS
    assert all(I.read_scene("The ball rolled far away.") == spec for _ in range(5))


@pytest.mark.parametrize("sentence, why", [("She was very happy.", "names none of"),
                                           ("", "names none of"),
                                           ("The sun went down and it was night.", "does not shine at night")])
def test_nothing_to_draw_says_why(sentence, why):
    with pytest.raises(I.NothingToDraw, match=why):
        I.caption_for(sentence)


def test_pick_sentence_prefers_the_most_drawable():
    story = "Once upon a time there was a girl. She was kind! One day a bird sat on a tree. They were friends."
    assert I.pick_sentence(story) == "One day a bird sat on a tree."
    with pytest.raises(I.NothingToDraw):
        I.pick_sentence("They were happy. The end.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained VQ-VAE + DiT, saved and loaded the way models/illustrator is."""
    return tiny_illustrator(tmp_path_factory.mktemp("illustrator"))


def test_the_illustrator_draws_a_picture_for_a_caption(tiny):
    ill = I.Illustrator.load(tiny)
    caption = I.caption_for("A red ball under a tree.")
    a, b = ill.draw(caption, steps=3, seed=1), ill.draw(caption, steps=3, seed=1)
    assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
    assert np.array_equal(a, b), "the same caption and seed must draw the same picture"


def test_illustrate_picks_the_sentence_and_gives_a_png(tiny):
    from PIL import Image

    ill = I.Illustrator.load(tiny)
    story = "Tom was sad. Then he saw two red birds on a house at night. He smiled."
    pic = ill.illustrate(story, steps=2)
    assert pic.sentence == "Then he saw two red birds on a house at night."
    assert pic.caption == I.caption_for(pic.sentence) and pic.pixels.shape == (16, 16, 3)
    img = Image.open(io.BytesIO(pic.png(scale=3)))
    assert img.size == (48, 48) and np.array_equal(np.asarray(img.convert("RGB"))[::3, ::3], pic.pixels)
    chosen = ill.illustrate(story, sentence="A dog next to a car.", steps=2)
    assert chosen.caption == I.caption_for("A dog next to a car.")
    with pytest.raises(I.NothingToDraw, match="nothing to draw"):
        ill.illustrate("They were happy. The end.")


def test_illustrator_folder_is_the_argument_else_the_env_else_the_course(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM101N_ILLUSTRATOR", str(tmp_path / "from-env"))
    assert I.illustrator_folder(tmp_path / "given") == tmp_path / "given"
    assert I.illustrator_folder() == tmp_path / "from-env"
    monkeypatch.delenv("LLM101N_ILLUSTRATOR")
    assert I.illustrator_folder().parts[-2:] == ("models", "illustrator")


def test_a_colour_the_sentence_leaves_out_comes_from_the_story():
    story = "Tom had a big red ball. He kicked it far. At last, Tom found his ball near a tree. A dog ran."
    assert I.caption_for("At last, Tom found his ball near a tree.", story) == "a big red ball next to a tree"
    assert I.caption_for("The blue ball fell.", story) == "a big blue ball", "the sentence's own words win"
    dog = I.read_scene("A dog ran.", story).things[0]
    assert dog.colour in scenes.COLOURS and dog.colour == I.read_scene("A dog ran.").things[0].colour, \
        "no colour in the story: the sentence's own seeded choice"
    two = I.read_scene("He saw two balls.", story).things[0]
    assert (two.colour, two.size, two.count) == ("red", None, 2), "a size is for one thing only"
