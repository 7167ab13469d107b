"""storylib.scene_classifier: the attribute classifier that judges the illustrator's pictures."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from storylib import scene_classifier as C
from storylib import scenes as S

TINY = C.ClassifierConfig(width=4, depth=1, n_features=8, grid=2)


@pytest.fixture(scope="module")
def trained():
    """A small classifier trained 250 steps on 400 train-split scenes at 32x32, and 400 unseen scenes."""
    torch.manual_seed(0)
    data = S.make_dataset(400, seed=11, split="train", size=32)
    model, log = C.train_classifier(data["pictures"], data["attributes"], steps=250, batch_size=32, lr=5e-3,
                                    device="cpu", seed=0, progress=False,
                                    config=C.ClassifierConfig(width=8, depth=1, n_features=64), warmup=10)
    test = S.make_dataset(400, seed=12, split="train", size=32)
    return model, log, test


# ----------------------------------------------------------------------------- labels


def test_heads_cover_every_attribute_the_generator_gives_in_both_splits_and_round_trip():
    attrs = [S.attributes(S.sample_spec(random.Random(i), split)) for split in ("train", "heldout")
             for i in range(1500)]
    assert list(C.HEADS) == list(attrs[0]) == list(C.CAPTION_KEYS)
    labels = C.encode_labels(attrs)
    assert all(v.dtype == torch.int64 and v.shape == (len(attrs),) for v in labels.values())
    assert C.decode_labels(labels) == attrs
    for key, classes in C.HEADS.items():  # every class is used: no dead head outputs
        assert set(labels[key].tolist()) == set(range(len(classes))), key
    assert C.HEADS["colour"][0] is None and set(C.HEADS["colour"][1:]) == set(S.COLOURS)
    assert C.HEADS["count"] == (1, 2, 3)


def test_judge_dataset_mixes_both_splits_and_keeps_pictures_with_their_labels():
    d = C.judge_dataset(13, seed=3, size=16, heldout_share=0.3)
    assert d["pictures"].shape == (13, 16, 16, 3) and len(d["captions"]) == len(d["attributes"]) == 13
    assert sum(S.has_heldout_pair(s) for s in d["specs"]) == 4
    train, held = S.make_dataset(9, 3, "train", 16), S.make_dataset(4, 3, "heldout", 16)
    by_caption = dict(zip(train["captions"] + held["captions"], np.concatenate([train["pictures"], held["pictures"]]),
                          strict=True))
    for pic, text, spec, attrs in zip(d["pictures"], d["captions"], d["specs"], d["attributes"], strict=True):
        assert np.array_equal(pic, by_caption[text]) and S.caption(spec) == text and S.attributes(spec) == attrs
    with pytest.raises(ValueError, match="heldout_share"):
        C.judge_dataset(4, heldout_share=1.5)


@pytest.mark.parametrize(("key", "value"), [("thing", "dragon"), ("colour", "teal"), ("count", 4), ("time", None)])
def test_encode_labels_rejects_values_that_are_not_classes(key, value):
    a = S.attributes(S.sample_spec(random.Random(0)))
    with pytest.raises(ValueError, match=key):
        C.encode_labels([a, {**a, key: value}])
    with pytest.raises(ValueError, match="missing"):
        C.encode_labels([{k: v for k, v in a.items() if k != key}])


def test_caption_match_needs_every_key_and_fails_when_any_one_differs():
    for i in range(30):
        truth = S.attributes(S.sample_spec(random.Random(i), "heldout" if i % 2 else "train"))
        assert C.caption_match(dict(truth), truth)
        for key in C.CAPTION_KEYS:
            other = next(c for c in C.HEADS[key] if c != truth[key])
            wrong = {**truth, key: other}
            assert not C.caption_match(wrong, truth)
            assert C.caption_match(wrong, truth, keys=[k for k in C.CAPTION_KEYS if k != key])
        assert not C.caption_match({k: v for k, v in truth.items() if k != "time"}, truth)


# ----------------------------------------------------------------------------- Fréchet distance


def _with_covariance(rng, mu, sigma, n):
    """n rows whose sample mean is exactly mu and sample covariance (ddof 1) exactly diag(sigma²)."""
    z = rng.normal(size=(n, len(mu)))
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), z]))
    return mu + q[:, 1:] * sigma * np.sqrt(n - 1)  # orthonormal columns, orthogonal to the ones vector


def test_frechet_distance_equals_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=7), rng.normal(size=7)
    sig_a, sig_b = rng.uniform(0.1, 3, 7), rng.uniform(0.1, 3, 7)
    a, b = _with_covariance(rng, mu_a, sig_a, 53), _with_covariance(rng, mu_b, sig_b, 38)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sig_a - sig_b) ** 2).sum()
    assert C.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert C.frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_matches_an_eigvals_oracle_on_correlated_features():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(61, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    b = rng.standard_t(5, size=(44, 6)) @ rng.normal(size=(6, 6)) * 0.7
    sa, sb = np.cov(a.T), np.cov(b.T)
    # tr((Sa Sb)^½) = Σ √λ over the eigenvalues of the non-symmetric product Sa Sb (real and >= 0)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    oracle = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt
    assert C.frechet_distance(a, b) == pytest.approx(oracle, rel=1e-8)
    assert C.frechet_distance(a, b) == pytest.approx(C.frechet_distance(b, a), rel=1e-8), "symmetric"
    assert abs(C.frechet_distance(a, a)) < 1e-8, "zero for the same set"
    delta = rng.normal(size=6)
    shift = ((a.mean(0) + delta - b.mean(0)) ** 2).sum() - ((a.mean(0) - b.mean(0)) ** 2).sum()
    assert C.frechet_distance(a + delta, b) - C.frechet_distance(a, b) == pytest.approx(shift, rel=1e-8)
    assert C.frechet_distance(a + delta, a) == pytest.approx((delta**2).sum(), rel=1e-8)


@pytest.mark.parametrize(("a", "b"), [(np.zeros((5, 3)), np.zeros((5, 4))), (np.zeros((1, 3)), np.zeros((5, 3))),
                                      (np.zeros(5), np.zeros(5)), (np.full((4, 2), np.nan), np.zeros((4, 2)))])
def test_frechet_distance_rejects_bad_shapes_and_values(a, b):
    with pytest.raises(ValueError):
        C.frechet_distance(a, b)


# ----------------------------------------------------------------------------- the network and training


def test_the_network_gives_one_logit_per_class_and_features_for_odd_sizes():
    model = C.AttributeClassifier(TINY).eval()
    x = torch.rand(3, 3, 40, 24) * 2 - 1
    logits = model(x)
    assert {k: v.shape for k, v in logits.items()} == {k: (3, len(c)) for k, c in C.HEADS.items()}
    assert model.features(x).shape == (3, 8)
    with pytest.raises(ValueError, match="16"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        C.predict(model, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=">= 1"):
        C.AttributeClassifier(C.ClassifierConfig(width=0))


def test_augment_changes_brightness_only_never_the_hue_or_the_layout():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 17, 19, generator=g) * 1.6 - 0.9  # within [-1, 1], away from the clamp at 1 after x1.08
    y = C.augment(x, torch.Generator().manual_seed(1), noise=0.0)
    ratio = (y + 1) / (x + 1)  # one factor per picture, the same for every pixel and channel
    flat = ratio.flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat), atol=1e-5)
    assert (flat[:, 0] - 1).abs().max() <= 0.08 + 1e-6 and (flat[:, 0] - 1).abs().max() > 0.01
    noisy = C.augment(x, torch.Generator().manual_seed(1), brightness=0.0, noise=0.03)
    assert 0.02 < (noisy - x).std() < 0.04 and noisy.abs().max() <= 1


def test_training_beats_chance_clearly_on_unseen_pictures(trained):
    model, log, test = trained
    assert len(log["loss"]) == len(log["lr"]) == 250
    assert np.mean(log["loss"][-20:]) < 0.7 * np.mean(log["loss"][:5])
    assert not model.training
    acc = C.caption_accuracy(model, test["pictures"], test["attributes"], batch_size=64)
    assert acc["n"] == 400 and set(acc["per_attribute"]) == set(C.CAPTION_KEYS)
    # chance: always answering the commonest class; "clearly": by 4 binomial sigmas. The thing is judged on the
    # one-thing scenes, where it is the only thing drawn (in a two-thing scene it is a few pixels at 32x32).
    one = [i for i, s in enumerate(test["specs"]) if len(s.things) == 1]
    for key, idx in (("thing", one), ("time", list(range(400)))):
        truth = [test["attributes"][i] for i in idx]
        got = C.caption_accuracy(model, test["pictures"][idx], truth)["per_attribute"][key]
        majority = max(np.unique([a[key] for a in truth], return_counts=True)[1]) / len(idx)
        assert got > majority + 4 * np.sqrt(majority * (1 - majority) / len(idx)), (key, got, majority)
    assert acc["per_attribute"]["time"] > 0.9, "the sky's colour gives the time away"
    preds = C.predict(model, test["pictures"][:37], batch_size=16)
    assert len(preds) == 37 and all(list(p) == list(C.HEADS) for p in preds)
    assert acc["all"] == pytest.approx(np.mean([C.caption_match(p, a) for p, a in
                                                zip(C.predict(model, test["pictures"]), test["attributes"],
                                                    strict=True)]))


def test_picture_features_are_the_penultimate_layer_and_separate_real_from_noise(trained):
    model, _, test = trained
    feats = C.picture_features(model, test["pictures"][:50], batch_size=16)
    assert feats.shape == (50, 64) and feats.dtype == np.float64
    with torch.no_grad():
        direct = model.features(C.to_tensor(test["pictures"][:50])).double().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-6)
    other = C.picture_features(model, test["pictures"][50:100])
    noise = C.picture_features(model, np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8))
    assert C.frechet_distance(feats, other) < 0.5 * C.frechet_distance(feats, noise)


# ----------------------------------------------------------------------------- on disk


def _perturbed_tiny():
    model = C.AttributeClassifier(TINY).train()
    model(torch.rand(5, 3, 32, 32) * 2 - 1)  # moves BatchNorm's running statistics off their defaults
    return model.eval()


def test_save_and_load_give_the_same_logits(tmp_path):
    model = _perturbed_tiny()
    C.save_classifier(model, tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "classifier.safetensors"]
    loaded = C.load_classifier(tmp_path / "clf", "cpu")
    assert loaded.config == TINY and not loaded.training
    x = torch.rand(4, 3, 33, 35) * 2 - 1
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in C.HEADS)


def test_loading_bad_files_raises_a_clear_value_error(tmp_path):
    folder = C.save_classifier(_perturbed_tiny(), tmp_path / "clf")
    meta = json.loads((folder / "classifier.json").read_text())
    weights = (folder / "classifier.safetensors").read_bytes()

    def broken(json_text: str | None, data: bytes | None, match: str):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        if json_text is not None:
            (bad / "classifier.json").write_text(json_text)
        if data is not None:
            (bad / "classifier.safetensors").write_bytes(data)
        with pytest.raises(ValueError, match=match):
            C.load_classifier(bad)

    broken(None, weights, "classifier.json is missing")
    broken(json.dumps(meta), None, "classifier.safetensors is missing")
    broken("{not json", weights, "not a classifier config")
    broken(json.dumps({**meta, "format": "other/1"}), weights, "format")
    broken(json.dumps({**meta, "heads": {**meta["heads"], "time": ["day", "night"]}}), weights, "other classes")
    broken(json.dumps({**meta, "config": {**meta["config"], "width": 5}}), weights, "shape")
    broken(json.dumps({**meta, "config": {**meta["config"], "depth": 2}}), weights, "missing")
    broken(json.dumps({**meta, "config": {**meta["config"], "colour": 2}}), weights, "not a classifier config")
    broken(json.dumps(meta), weights[: len(weights) // 2], "safetensors")
