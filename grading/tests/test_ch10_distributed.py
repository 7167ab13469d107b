"""Chapter 10 — distributed: the ring all-reduce, gradient averaging, buckets, shards, a ZeRO step, FSDP's
gather/free around a layer, resharding a checkpoint.

The collectives run on storylib.distributed.LocalGroup: p threads of one process exchanging tensors (`run_local`),
so the tests need no network and no second process. Oracles: float64 sums and means written out here, a
single-process torch.optim.AdamW on the whole flat parameter (ZeRO must take exactly its steps), x @ W.T + b in
float64 for the gathered layer, and plain Python lists for buckets and shard ranges. Sizes are odd (not multiples
of the world size) so that the padding and the uneven ring chunks are exercised. The proofs on real gloo processes
and against PyTorch's DistributedDataParallel are tests/test_distributed.py (not graded: they spawn processes).
"""

from __future__ import annotations

import math

import pytest
import torch

from storylib import distributed as D


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed: int) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * torch.rand(*shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- ch10.ring_all_reduce


@pytest.mark.exercise("ch10.ring_all_reduce")
@pytest.mark.parametrize("p, n", [(2, 9), (3, 37), (4, 5), (5, 64)])
def test_ring_all_reduce(p, n):
    xs = [rand(n, seed=10 * p + r) for r in range(p)]
    results, stats = D.run_local(D.ring_all_reduce, [(x.clone(),) for x in xs], stats=True)
    want = torch.stack(xs).sum(0)
    for r, got in enumerate(results):
        assert got.shape == (n,)
        assert torch.allclose(got, want, rtol=0, atol=1e-12), f"rank {r}: not the sum over ranks"
    assert all(torch.equal(results[0], g) for g in results), "every rank ends with the same bits"
    for r, s in enumerate(stats):
        assert s["collectives"] == 0, "send and recv only: no all_reduce, all_gather, ..."
        assert s["sends"] == 2 * (p - 1), f"rank {r}: p - 1 sends to reduce-scatter, p - 1 to all-gather"
        # chunks sent: reduce-scatter sends chunks r, r-1, ..., all-gather chunks r+1, r, ...: each chunk's size
        sizes = [c.numel() for c in torch.tensor_split(torch.empty(n), p)]
        want_bytes = 8 * (sum(sizes[(r - s_) % p] for s_ in range(p - 1))
                          + sum(sizes[(r + 1 - s_) % p] for s_ in range(p - 1)))
        assert s["sent_bytes"] == want_bytes, f"rank {r}: sent {s['sent_bytes']} bytes, the ring sends {want_bytes}"


@pytest.mark.exercise("ch10.ring_all_reduce")
def test_ring_all_reduce_2d():
    xs = [rand(3, 7, seed=r) for r in range(3)]
    for got in D.run_local(D.ring_all_reduce, [(x.clone(),) for x in xs]):
        assert got.shape == (3, 7), "x keeps its shape"
        assert torch.allclose(got, sum(xs), atol=1e-12)


# ----------------------------------------------------------------------------- ch10.average_gradients


@pytest.mark.exercise("ch10.average_gradients")
@pytest.mark.parametrize("p", [1, 2, 3])
def test_average_gradients(p):
    shapes = [(5, 3), (7,), (2, 3, 4)]
    grads = [[rand(*s, seed=100 * r + i) for i, s in enumerate(shapes)] for r in range(p)]
    results = D.run_local(D.average_gradients, [([g.clone() for g in gs],) for gs in grads])
    for r, got in enumerate(results):
        for i, s in enumerate(shapes):
            want = sum(grads[q][i] for q in range(p)) / p
            assert got[i].shape == s and torch.allclose(got[i], want, atol=1e-12), f"rank {r}, gradient {i}: the mean"


# ----------------------------------------------------------------------------- ch10.buckets


def buckets_oracle(nbytes, cap):
    out, cur = [], []
    for i in range(len(nbytes) - 1, -1, -1):
        cur = cur + [i]
        if sum(nbytes[j] for j in cur) >= cap:
            out, cur = out + [cur], []
    return out + ([cur] if cur else [])


@pytest.mark.exercise("ch10.buckets")
def test_buckets_examples():
    assert D.assign_buckets([4, 4, 4], 8) == [[2, 1], [0]]
    assert D.assign_buckets([100, 1, 1], 8) == [[2, 1, 0]], "too few bytes: one bucket"
    assert D.assign_buckets([1, 50, 2], 8) == [[2, 1], [0]], "a parameter bigger than the cap closes its bucket"


@pytest.mark.exercise("ch10.buckets")
@pytest.mark.parametrize("seed", range(4))
def test_buckets_random(seed):
    g = gen(seed)
    nbytes = [4 * int(v) for v in torch.randint(1, 300, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g)]
    cap = 4 * int(torch.randint(50, 700, (1,), generator=g))
    got = D.assign_buckets(nbytes, cap)
    assert got == buckets_oracle(nbytes, cap)
    assert sorted(i for b in got for i in b) == list(range(len(nbytes))), "every parameter in exactly one bucket"


# ----------------------------------------------------------------------------- ch10.shard_range


@pytest.mark.exercise("ch10.shard_range")
@pytest.mark.parametrize("numel, world", [(10, 3), (12, 4), (7, 1), (5, 8), (1001, 7), (0, 2)])
def test_shard_range(numel, world):
    chunk = math.ceil(numel / world)
    ranges = [D.shard_range(numel, r, world) for r in range(world)]
    for r, (start, stop) in enumerate(ranges):
        assert (start, stop) == (min(r * chunk, numel), min(r * chunk + chunk, numel)), f"rank {r}"
    covered = [i for start, stop in ranges for i in range(start, stop)]
    assert covered == list(range(numel)), "the ranges cut [0, numel) in rank order, no gap, no overlap"


# ----------------------------------------------------------------------------- ch10.zero_step


@pytest.mark.exercise("ch10.zero_step")
@pytest.mark.parametrize("p, numel", [(2, 13), (3, 31), (4, 8)])
def test_zero_step_equals_adamw_on_the_whole(p, numel):
    steps, lr, wd = 3, 0.05, 0.1
    padded = D.padded_numel(numel, p)
    param = torch.zeros(padded, dtype=torch.float64)
    param[:numel] = rand(numel, seed=numel)
    grads = [torch.zeros(steps, padded, dtype=torch.float64) for _ in range(p)]
    for r in range(p):
        grads[r][:, :numel] = rand(steps, numel, seed=1000 + r)
    results = D.run_local(D.zero_demo, [(param.clone(), grads[r], lr, wd) for r in range(p)])
    # one process: AdamW on the whole parameter with the mean gradient
    whole = torch.nn.Parameter(param[:numel].clone())
    opt = torch.optim.AdamW([whole], lr=lr, weight_decay=wd, foreach=False)
    for k in range(steps):
        whole.grad = sum(grads[r][k, :numel] for r in range(p)) / p
        opt.step()
    n = padded // p
    for r, got in enumerate(results):
        assert torch.allclose(got["flat"][:numel], whole.detach(), rtol=0, atol=1e-12), f"rank {r}: parameters"
        lo, hi = r * n, min((r + 1) * n, numel)
        st = opt.state[whole]
        assert got["exp_avg"].shape == (n,), "each rank keeps AdamW state for its shard only"
        assert torch.allclose(got["exp_avg"][: hi - lo], st["exp_avg"][lo:hi], atol=1e-12), f"rank {r}: m of my shard"
        assert torch.allclose(got["exp_avg_sq"][: hi - lo], st["exp_avg_sq"][lo:hi], atol=1e-12)


# ----------------------------------------------------------------------------- ch10.unshard


@pytest.mark.exercise("ch10.unshard")
@pytest.mark.parametrize("p", [2, 3])
def test_unshard_gathers_and_frees(p):
    out_f, in_f = 5, 7  # 40 parameters: padded to a multiple of p
    ws = [rand(out_f, in_f, seed=r) for r in range(p)]  # each rank's own copy: the gathered layer is a patchwork
    bs = [rand(out_f, seed=50 + r) for r in range(p)]
    x = rand(4, in_f, seed=99)
    results = D.run_local(D.unshard_demo, [(ws[r], bs[r], x) for r in range(p)])
    numel = out_f * in_f + out_f
    padded, n = D.padded_numel(numel, p), D.padded_numel(numel, p) // p
    flats = [torch.cat([torch.cat([w.reshape(-1), b]), torch.zeros(padded - numel, dtype=torch.float64)])
             for w, b in zip(ws, bs, strict=True)]
    full = torch.cat([flats[r][r * n : (r + 1) * n] for r in range(p)])  # rank r contributes its own slice r
    w_full, b_full = full[: out_f * in_f].view(out_f, in_f), full[out_f * in_f : numel]
    for r, got in enumerate(results):
        assert got["sharded_bytes"] == 0 and got["freed_bytes"] == 0, "sharded: the whole layer holds no bytes"
        assert got["whole_bytes"] == 8 * padded, "unshard: the storage is back, all of it"
        assert torch.allclose(got["y"], x @ w_full.T + b_full, atol=1e-12), f"rank {r}: the layer with every shard"
        assert torch.equal(got["shard"], full[r * n : (r + 1) * n]), "the shard itself is untouched"
        # d(sum y)/dW[o, i] = sum over the batch of x[:, i]; d/db = the batch size; the same x on every rank
        want = torch.cat([(torch.ones(out_f, 1, dtype=torch.float64) * x.sum(0)).reshape(-1),
                          torch.full((out_f,), 4.0, dtype=torch.float64),
                          torch.zeros(padded - numel, dtype=torch.float64)])
        assert torch.allclose(got["shard_grad"], want[r * n : (r + 1) * n], atol=1e-12), \
            f"rank {r}: backward ran on the gathered weights again, and my slice of the gradient came back"


# ----------------------------------------------------------------------------- ch10.reshard


@pytest.mark.exercise("ch10.reshard")
@pytest.mark.parametrize("numel, old, new", [(23, 2, 3), (23, 3, 1), (40, 4, 8), (7, 1, 4), (101, 5, 2)])
def test_reshard(numel, old, new):
    whole = rand(numel, seed=numel + old)
    chunk = math.ceil(numel / old)
    padded = torch.cat([whole, torch.zeros(chunk * old - numel, dtype=torch.float64)])
    shards = [padded[r * chunk : (r + 1) * chunk].clone() for r in range(old)]
    got = D.reshard(shards, numel, new)
    new_chunk = math.ceil(numel / new)
    assert len(got) == new and all(s.shape == (new_chunk,) for s in got), "new shards of ceil(numel / new) each"
    assert torch.equal(torch.cat(got)[:numel], whole), "nothing lost, nothing moved"
    assert (torch.cat(got)[numel:] == 0).all(), "the padding is zeros"
    back = D.reshard(got, numel, old)
    assert all(torch.equal(a, b) for a, b in zip(back, shards, strict=True)), "resharding back gives the old shards"
