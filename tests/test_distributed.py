"""Chapter 10's proofs on real processes: storylib.distributed over torch.distributed (gloo, 2 CPU processes).

Every strategy (DDP with buckets, DDP with no_sync accumulation, ZeRO-1, ZeRO-2, ZeRO-3/FSDP) trains a tiny
storyteller (storylib.gpt2.GPT) a few steps on 2 gloo ranks and must match one process on the same global batch:
losses and every parameter after every step. The models are float64 so that "equal" can be tight: the only
difference allowed is the order in which the all-reduce sums the ranks' gradients (one process sums the batch
in one order, gloo sums two halves), a few float64 ulps that AdamW's division by sqrt(v) may magnify; 1e-10 is
~10^5 ulps of headroom and 10^-6 of the distance training moved the weights. Differential tests: our DDP against
PyTorch's DistributedDataParallel on the same ranks (float32, the same batches; 1e-6), and PyTorch's
fully_shard (FSDP2) where it runs on CPU/gloo. Memory per rank (world sizes 1, 2, 4) against the formula runs on
LocalGroup threads (bytes held do not depend on the transport). A rank that dies mid-step must end the job
with an error naming it within a timeout. Two gloo launches in all, so the file takes ~20 s on 2 busy cores.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from storylib import distributed as D
from storylib.gpt2 import GPT, GPTConfig
from storylib.optim import AdamW

CFG = GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=24)
ADAMW = dict(lr=1e-2, weight_decay=0.1)
TOL = 1e-10  # float64; see the module docstring
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")


def tiny_gpt(dtype=torch.float64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG).to(dtype)


def make_batches(steps: int = 3, batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, CFG.vocab_size, (batch, CFG.block_size), generator=g),
             torch.randint(0, CFG.vocab_size, (batch, CFG.block_size), generator=g)) for _ in range(steps)]


# ----------------------------------------------------------------------------- what the ranks run (importable)


def rank_proofs(group, batches) -> dict:
    """On each rank: every strategy from the same start, then PyTorch's DDP and fully_shard for comparison."""
    out = {s: D.train_distributed(group, s, tiny_gpt(), batches, **ADAMW) for s in STRATEGIES}
    out["ddp_accumulate"] = D.train_distributed(group, "ddp", tiny_gpt(), batches, accumulate=2, **ADAMW)
    out["ours_fp32"] = D.train_distributed(group, "ddp", tiny_gpt(torch.float32), batches, **ADAMW)
    out["torch_ddp"] = torch_ddp(group, batches)
    out["fully_shard"] = torch_fully_shard(group, batches)
    zero = D.ZeRO(tiny_gpt(), group, stage=2, **ADAMW)  # a checkpoint of 2 shards, for the reshard test
    for x, y in batches[:2]:
        zero_step(zero, D.batch_slice(x, group), D.batch_slice(y, group))
    out["checkpoint"] = zero.state_dict()
    return out


def zero_step(zero: D.ZeRO, x, y) -> None:
    _, loss = zero.model(x, y)
    loss.backward()
    zero.step()
    zero.zero_grad()


def torch_ddp(group, batches) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_gpt(torch.float32)
    ddp = DistributedDataParallel(model, bucket_cap_mb=1 / 64)
    opt = AdamW(model.parameters(), **ADAMW)
    params = []
    for x, y in batches:
        _, loss = ddp(D.batch_slice(x, group), D.batch_slice(y, group))
        loss.backward()
        opt.step()
        opt.zero_grad()
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return {"params": params}


def torch_fully_shard(group, batches) -> dict:
    """PyTorch's FSDP2 on CPU/gloo, one unit per block and the root; its full parameters after every step."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = tiny_gpt(torch.float32)
        mesh = init_device_mesh("cpu", (group.world_size,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), **ADAMW, foreach=False)
        params = []
        for x, y in batches:
            _, loss = model(D.batch_slice(x, group), D.batch_slice(y, group))
            loss.backward()
            opt.step()
            opt.zero_grad()
            params.append(torch.cat([p.detach().full_tensor().reshape(-1) for p in model.parameters()]))
        return {"params": params}
    except Exception as e:  # noqa: BLE001 - reported, and the test says so
        return {"error": f"{type(e).__name__}: {e}"}


def rank_dies(group, batches) -> None:
    """Rank 1 exits in the middle of a step; rank 0 waits in the all-reduce for it."""
    model = tiny_gpt()
    ddp = D.DDP(model, group)
    x, y = D.batch_slice(batches[0][0], group), D.batch_slice(batches[0][1], group)
    if group.rank == 1:
        os._exit(3)
    _, loss = ddp(x, y)
    loss.backward()


# ----------------------------------------------------------------------------- gloo, 2 processes


@pytest.fixture(scope="module")
def gloo_runs():
    batches = make_batches()
    t0 = time.perf_counter()
    ranks = D.launch(rank_proofs, 2, batches, timeout=240)
    print(f"gloo proofs: {time.perf_counter() - t0:.1f} s")
    ref_losses, ref_params = D.train_reference(tiny_gpt(), batches, **ADAMW)
    return ranks, ref_losses, ref_params, batches


@pytest.mark.parametrize("strategy", [*STRATEGIES, "ddp_accumulate"])
def test_strategy_matches_one_process(gloo_runs, strategy):
    ranks, ref_losses, ref_params, _ = gloo_runs
    moved = (ref_params[-1] - torch.cat([p.detach().reshape(-1) for p in tiny_gpt().parameters()])).abs().max()
    assert moved > 1e-3, "training moved the weights (equality is not trivial)"
    for r in ranks:
        got = r[strategy]
        assert len(got["params"]) == len(ref_params)
        for step, (a, b) in enumerate(zip(got["params"], ref_params, strict=True)):
            err = (a - b).abs().max().item()
            assert err < TOL, f"{strategy}, rank {r[strategy]['rank']}, step {step}: parameters differ by {err:.2e}"
        assert got["losses"] == pytest.approx(ref_losses, abs=TOL), f"{strategy}: loss curve"


def test_ours_matches_pytorch_ddp(gloo_runs):
    ranks = gloo_runs[0]
    for r in ranks:
        for step, (a, b) in enumerate(zip(r["ours_fp32"]["params"], r["torch_ddp"]["params"], strict=True)):
            assert (a - b).abs().max().item() < 1e-6, f"step {step}: our DDP vs torch DDP (float32)"


def test_zero3_matches_pytorch_fully_shard(gloo_runs):
    ranks = gloo_runs[0]
    if "error" in ranks[0]["fully_shard"]:
        pytest.skip(f"fully_shard does not run on CPU/gloo here: {ranks[0]['fully_shard']['error']}")
    for r in ranks:
        for step, (a, b) in enumerate(zip(r["ours_fp32"]["params"], r["fully_shard"]["params"], strict=True)):
            assert (a - b).abs().max().item() < 1e-5, f"step {step}: our training vs torch fully_shard (float32)"


def test_checkpoint_reshard_resumes_on_other_world_sizes(gloo_runs):
    """2 gloo ranks saved ZeRO-2 shards after 2 steps; 1 and 4 ranks load them and take step 3: as one process."""
    ranks, _, ref_params, batches = gloo_runs
    shards = [r["checkpoint"] for r in ranks]
    assert [s["param"].numel() for s in shards] == [D.padded_numel(shards[0]["numel"], 2) // 2] * 2

    def resume(group, shards):
        zero = D.ZeRO(tiny_gpt(), group, stage=2, **ADAMW)
        zero.load_state_dict(shards)
        zero_step(zero, D.batch_slice(batches[2][0], group), D.batch_slice(batches[2][1], group))
        return torch.cat([p.detach().reshape(-1) for p in zero.params])

    for world in (1, 4):
        for rank, got in enumerate(D.run_local(resume, [(shards,)] * world)):
            err = (got - ref_params[2]).abs().max().item()
            assert err < TOL, f"resumed on {world} ranks, rank {rank}: step 3 differs by {err:.2e}"


def test_rank_death_ends_the_job():
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"rank 1 failed.*exit code 3"):
        D.launch(rank_dies, 2, make_batches(1), timeout=60)
    assert time.perf_counter() - t0 < 60, "the job ended with an error instead of hanging"


# ----------------------------------------------------------------------------- memory per rank (threads)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_memory_per_rank_matches_formula(world):
    model = tiny_gpt(torch.float32)
    n = model.num_params()
    batches = make_batches(1, batch=4)
    for strategy in STRATEGIES:
        runs = D.run_local(lambda g, m, s=strategy: D.train_distributed(g, s, m, batches, **ADAMW),
                           [(copy.deepcopy(model),) for _ in range(world)])
        want = D.memory_formula(strategy, n, world)
        for r in runs:
            got = r["memory"]
            for part in want:
                # ZeRO-3 pads each layer to a multiple of N, the formula the whole model: < 16 bytes per unit per rank
                slack = 16 * (CFG.n_layer + 1) * world if strategy == "zero3" else 0
                assert abs(got[part] - want[part]) <= slack, f"{strategy}, N={world}, {part}: {got} vs {want}"
