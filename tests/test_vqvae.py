"""storylib.vqvae: the VQ-VAE that turns Chapter 17's pictures into a small grid of codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from storylib import vqvae as V
from storylib.scenes import make_dataset

# ----------------------------------------------------------------------------- the pieces


def test_pictures_go_to_tensors_in_minus_one_one_and_back_exactly():
    pics = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    x = V.to_tensor(pics)
    assert x.shape == (3, 3, 5, 7) and x.dtype == torch.float32
    assert torch.equal(x[1, 2, 4, 6], torch.tensor(pics[1, 4, 6, 2] / 127.5 - 1, dtype=torch.float32))
    assert np.array_equal(V.to_pictures(x), pics)
    wild = torch.tensor([-3.0, -1.0, 0.0, 0.999, 5.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert V.to_pictures(wild)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]  # clamped, rounded (127.5 -> 128)
    with pytest.raises(ValueError, match="uint8"):
        V.to_tensor(pics.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        V.to_pictures(torch.zeros(2, 4, 4, 3))


def test_nearest_codes_match_a_float64_brute_force_oracle():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(37, 5, generator=g, dtype=torch.float64) * torch.rand(5, generator=g, dtype=torch.float64) * 3
    codebook = torch.randn(13, 5, generator=g, dtype=torch.float64) * 2 + 0.5
    oracle = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)
    idx = V.nearest_codes(z, codebook)
    assert idx.dtype == torch.int64 and idx.shape == (37,)
    assert torch.equal(idx, oracle)
    assert len(set(oracle.tolist())) > 3, "the test data uses several codes"
    # in float32 the chosen code is at the nearest distance, up to rounding
    idx32 = V.nearest_codes(z.float(), codebook.float())
    d = ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(d[torch.arange(37), idx32], d.min(1).values, rtol=1e-5, atol=1e-5)


def test_straight_through_forwards_zq_and_hands_the_gradient_to_z_unchanged():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    zq = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    out = V.straight_through(z, zq)
    assert torch.allclose(out, zq, atol=1e-12)
    weights = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    assert torch.equal(z.grad, weights), "the gradient reaches z as it is"
    assert zq.grad is None, "none reaches zq"


def test_commitment_loss_is_beta_mse_and_its_gradient_goes_to_z_only():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zq = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loss = V.commitment_loss(z, zq, 0.3)
    assert torch.allclose(loss, 0.3 * ((z - zq) ** 2).mean())
    loss.backward()
    assert torch.allclose(z.grad, 0.3 * 2 * (z - zq).detach() / z.numel())
    assert zq.grad is None


def test_perplexity_counts_the_codes_really_in_use():
    K = 11
    uniform = torch.arange(K).repeat(7)[torch.randperm(7 * K, generator=torch.Generator().manual_seed(0))]
    assert V.codebook_perplexity(uniform, K) == pytest.approx(K)
    assert V.codebook_perplexity(torch.full((5, 3), 4), K) == pytest.approx(1.0)
    two = torch.tensor([1, 6, 6, 1, 1, 6])  # half and half: exp(log 2) = 2
    assert V.codebook_perplexity(two, K) == pytest.approx(2.0)
    skew = torch.tensor([0, 0, 0, 2])  # p = (3/4, 1/4)
    assert V.codebook_perplexity(skew, K) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_psnr_in_minus_one_one_and_in_bytes():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (5, 3, 9, 7))
    y = np.clip(x + rng.normal(0, 1, (5, 1, 1, 1)) * 0.05 * rng.normal(size=x.shape), -1, 1)
    mse = ((x - y) ** 2).reshape(5, -1).mean(1)
    assert V.psnr(torch.tensor(x), torch.tensor(y)) == pytest.approx(np.mean(10 * np.log10(4 / mse)), rel=1e-9)
    assert V.psnr(torch.tensor(x), torch.tensor(x)) == math.inf
    a = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    in_bytes = V.psnr(a, b)
    assert in_bytes == pytest.approx(V.psnr(V.to_tensor(a), V.to_tensor(b)), rel=1e-5), "same pictures, same dB"
    assert 25 < in_bytes < 45
    with pytest.raises(ValueError, match="alike"):
        V.psnr(a, V.to_tensor(b))


# ----------------------------------------------------------------------------- the quantiser


def _quantizer(codebook, cluster_size, decay=0.5, dead_threshold=0.0):
    vq = V.VectorQuantizer(len(codebook), codebook.shape[1], beta=0.25, decay=decay, dead_threshold=dead_threshold)
    vq.codebook.copy_(codebook)
    vq.cluster_size.copy_(cluster_size)
    vq.embed_sum.copy_(codebook * cluster_size[:, None])
    return vq


def _grid(vectors):
    """(N, D) vectors -> a (1, D, 1, N) latent grid, in that order."""
    return vectors.t().reshape(1, vectors.shape[1], 1, -1)


def test_the_ema_update_moves_a_used_code_toward_the_mean_of_its_vectors():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    vq = _quantizer(codebook, torch.tensor([2.0, 3.0, 4.0]), decay=0.5)
    batch = torch.tensor([[1.0, 1.5], [2.5, 0.0], [-0.5, -1.5]])  # all nearest code 0; mean (1, 0), n = 3
    zq, idx, loss = vq(_grid(batch))
    assert idx.tolist() == [[[0, 0, 0]]] and torch.equal(zq, torch.zeros(1, 2, 1, 3)), "zq: the codes as chosen"
    assert loss.item() == pytest.approx(0.25 * (batch**2).mean().item())
    # N_0 = 0.5·2 + 0.5·3 = 2.5; S_0 = 0.5·(0, 0) + 0.5·(3, 0) = (1.5, 0); e_0 = S_0 / N_0 = (0.6, 0)
    assert vq.cluster_size.tolist() == pytest.approx([2.5, 1.5, 2.0])
    assert torch.allclose(vq.codebook[0], torch.tensor([0.6, 0.0]), atol=1e-4)
    assert torch.allclose(vq.codebook[1:], codebook[1:], atol=1e-4), "unused codes stay put"
    assert int(vq.restarts) == 0
    vq.eval()  # evaluation never changes the codebook
    before = vq.codebook.clone()
    vq(_grid(batch))
    assert torch.equal(vq.codebook, before)


def test_a_dead_code_is_restarted_on_an_encoder_output_of_the_batch():
    codebook = torch.tensor([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 4.0, -1.0], [100.0, 100.0, 100.0]])
    vq = _quantizer(codebook, torch.tensor([5.0, 5.0, 5.0, 0.2]), decay=0.99, dead_threshold=0.5)
    batch = torch.randn(21, 3, generator=torch.Generator().manual_seed(5)) + torch.tensor([1.0, 1.0, 0.0])
    _, idx, _ = vq(_grid(batch))
    assert 3 not in idx.flatten().tolist(), "nobody chose the far-away code"
    assert int(vq.restarts) == 1 and vq.cluster_size[3].item() == 1.0
    assert (vq.codebook[3] == batch).all(1).any(), "it now sits on one of the batch's vectors"
    # a fresh quantizer: every code starts dead, so the first batch initialises the codebook from the data
    fresh = V.VectorQuantizer(7, 3)
    fresh(_grid(batch))
    assert int(fresh.restarts) == 7 and all((row == batch).all(1).any() for row in fresh.codebook)


def test_the_quantizer_rejects_a_grid_of_the_wrong_depth():
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        V.VectorQuantizer(8, 4)(torch.zeros(2, 3, 4, 4))


# ----------------------------------------------------------------------------- the model


def test_config_is_checked_and_the_model_keeps_shapes_for_odd_sizes():
    with pytest.raises(ValueError, match="downsample"):
        V.VQConfig(channels=(8, 16, 32), downsample=4)
    with pytest.raises(ValueError, match="multiple"):
        V.VQConfig(image_size=30)
    cfg = V.VQConfig(image_size=24, channels=(8, 16), n_res=1, latent_dim=3, codebook_size=17)
    model = V.VQVAE(cfg)
    x = torch.rand(3, 3, 24, 24) * 2 - 1
    x_hat, idx, commit = model(x)
    assert x_hat.shape == x.shape and idx.shape == (3, 6, 6) and commit.dim() == 0
    assert model.encode(x).shape == (3, 3, 6, 6) and cfg.latent_size == 6
    (((x_hat - x) ** 2).mean() + commit).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0, "the straight-through estimator reaches the encoder"
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 3, 22, 24))


@pytest.fixture(scope="module")
def trained():
    pictures = make_dataset(40, seed=0, size=16)["pictures"]
    cfg = V.VQConfig(image_size=16, channels=(8, 16), n_res=1, latent_dim=3, codebook_size=32)
    torch.manual_seed(0)
    before = V.evaluate_vqvae(V.VQVAE(cfg), pictures)
    model, log = V.train_vqvae(pictures, cfg, steps=100, batch_size=16, lr=3e-3, progress=False, log_every=25)
    return pictures, before, model, log


def test_a_tiny_vqvae_learns_to_reconstruct_small_scenes(trained):
    pictures, before, model, log = trained
    assert [r["step"] for r in log] == [25, 50, 75, 100]
    assert set(log[0]) == {"step", "loss", "recon_mse", "psnr", "perplexity", "restarts", "lr"}
    assert log[-1]["psnr"] > log[0]["psnr"] + 1.5 and log[-1]["loss"] < log[0]["loss"]
    after = V.evaluate_vqvae(model, pictures)
    assert after["psnr"] > before["psnr"] + 3, (before, after)
    assert after["perplexity"] > 4 and after["codes_used"] > 8, "the codebook is in use, not collapsed"
    assert log[-1]["restarts"] >= 32 * 0.5, "the first batch initialises the (dead) codebook"
    assert not model.training


def test_latents_have_unit_variance_and_decode_back(trained):
    pictures, _, model, _ = trained
    x = V.to_tensor(pictures)
    lat = model.latents(x)
    assert lat.shape == (40, 3, 4, 4)
    assert lat.double().std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4), "latent_scale = 1 / std(zq)"
    zq, idx = model.quantize(model.encode(x))
    assert torch.allclose(model.codes_to_latents(idx), zq * model.latent_scale)
    assert torch.allclose(model.decode_latents(lat), model.decode(zq), atol=1e-5)
    noisy = lat + 0.01 * torch.randn(lat.shape, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(model.decode_latents(noisy, snap=True), model.decode(zq), atol=1e-5), "snap: nearest codes"


def test_save_and_load_give_the_same_model(trained, tmp_path):
    pictures, _, model, _ = trained
    (tmp_path / "dit.json").write_text("{}")  # the folder is shared with the other illustrator models
    V.save_vqvae(model, tmp_path)
    assert (tmp_path / "dit.json").exists()
    loaded = V.load_vqvae(tmp_path)
    x = V.to_tensor(pictures[:7])
    for a, b in zip(model(x), loaded(x), strict=True):
        assert torch.equal(a, b)
    assert loaded.latent_scale == model.latent_scale and loaded.cfg == model.cfg
    assert int(loaded.quantizer.restarts) == int(model.quantizer.restarts) and not loaded.training


def test_a_missing_corrupt_or_mismatched_file_is_named(trained, tmp_path):
    _, _, model, _ = trained
    V.save_vqvae(model, tmp_path)
    weights, config = tmp_path / "vqvae.safetensors", tmp_path / "vqvae.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()
    data = bytearray(good_weights)
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="vqvae.safetensors.*corrupt"):
        V.load_vqvae(tmp_path)
    weights.write_bytes(good_weights[: len(good_weights) // 3])
    with pytest.raises(ValueError, match="vqvae.safetensors"):
        V.load_vqvae(tmp_path)
    weights.write_bytes(good_weights)
    doc = json.loads(good_config)
    doc["config"]["latent_dim"] = 5  # a config the weights were not made for
    config.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="vqvae.safetensors.*config needs"):
        V.load_vqvae(tmp_path)
    doc["config"] = {**json.loads(good_config)["config"], "colour": "blue"}
    config.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="vqvae.json.*colour"):
        V.load_vqvae(tmp_path)
    config.write_text(good_config[:-10])
    with pytest.raises(ValueError, match="vqvae.json"):
        V.load_vqvae(tmp_path)
    config.unlink()
    with pytest.raises(ValueError, match="vqvae.json: missing"):
        V.load_vqvae(tmp_path)


def test_train_vqvae_rejects_pictures_that_do_not_fit_the_config():
    cfg = V.VQConfig(image_size=16, channels=(8, 16), n_res=0, latent_dim=2, codebook_size=8)
    with pytest.raises(ValueError, match="uint8"):
        V.train_vqvae(np.zeros((4, 16, 16, 3), np.float32), cfg, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\(N, 16, 16, 3\)"):
        V.train_vqvae(np.zeros((4, 32, 32, 3), np.uint8), cfg, steps=1, progress=False)
