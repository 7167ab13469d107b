"""Chapter 10 — distributed training: data parallelism and ZeRO from collectives, written to be read top to bottom.

N processes ("ranks") each hold a copy of the storyteller and a slice of the batch. They talk only through a few
collectives, and every strategy below is a choice of which collective moves which bytes when:

    Group               what a rank can do: rank, world_size, send/recv, all_reduce, broadcast, all_gather,
                        reduce_scatter. Two backings: TorchGroup (torch.distributed, gloo on CPUs: real processes)
                        and LocalGroup (N threads of one process exchanging tensors: what the grader runs)
    ring_all_reduce     all-reduce from send/recv alone: reduce-scatter then all-gather around a ring, each rank
                        sending 2(p-1)/p of the bytes                                  (exercise ch10.ring_all_reduce)
    average_gradients   data parallelism in one line: sum every gradient over ranks, divide by N
                                                                                     (exercise ch10.average_gradients)
    assign_buckets      gradients grouped into buckets of ~bucket_bytes, last layer first (exercise ch10.buckets)
    DDP                 broadcast the initial weights; backward hooks all-reduce a bucket as soon as its gradients
                        are ready, so communication overlaps the rest of backward; no_sync() for accumulation
    shard_range         which slice of a flat parameter a rank owns                    (exercise ch10.shard_range)
    zero_step           ZeRO: reduce-scatter the gradient, AdamW on my shard, all-gather the parameters
                                                                                           (exercise ch10.zero_step)
    ZeRO                stage 1 (optimizer state sharded), stage 2 (+ gradients sharded)
    FSDPUnit.unshard    ZeRO-3: a layer's parameters exist only as shards; all-gather them just before the layer
                        runs (forward, and again for backward), free them right after  (exercise ch10.unshard)
    FSDP                stage 3: one unit per transformer block, plus the root (embeddings, final LayerNorm)
    reshard             a checkpoint saved by N ranks, loaded by M                          (exercise ch10.reshard)
    launch              start N gloo processes on this machine; a rank that dies ends the job with its error

Memory per rank with Ψ parameters in fp32 and AdamW (two moments): parameters 4Ψ, gradients 4Ψ, optimizer state
8Ψ. DDP holds all 16Ψ on every rank; ZeRO-1 4Ψ + 4Ψ + 8Ψ/N; ZeRO-2 4Ψ + 12Ψ/N; ZeRO-3 16Ψ/N (`memory_formula`).

Conventions: every collective sums (the average is taken by the caller, dividing by N); a flat buffer is padded
with zeros to a multiple of N so that every rank owns a slice of the same length, ceil(numel / N).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from storylib.optim import AdamW

TIMEOUT_S = 60.0  # a collective that waits longer than this has lost a peer: fail, never hang

# ----------------------------------------------------------------------------- the process group


class _Done:
    """The handle of a collective that has already finished (LocalGroup runs every collective at once)."""

    def wait(self) -> None:
        pass


class LocalGroup:
    """world_size ranks as threads of one process: send/recv through queues, collectives through a barrier.

    The sums run in rank order on every rank, so all ranks get bitwise the same result. Built by `run_local`;
    a rank that raises breaks the barrier, so the others fail at once instead of waiting forever.
    """

    class World:
        def __init__(self, world_size: int, timeout: float):
            self.world_size, self.timeout = world_size, timeout
            self.barrier = threading.Barrier(world_size, timeout=timeout)
            self.slots: list[torch.Tensor | None] = [None] * world_size
            self.mail = {(s, d): queue.Queue() for s in range(world_size) for d in range(world_size)}
            self.failed = threading.Event()

    def __init__(self, rank: int, world: LocalGroup.World):
        self.rank, self.world_size, self.world = rank, world.world_size, world
        self.stats = {"sends": 0, "sent_bytes": 0, "collectives": 0}  # what this rank did (tests read it)

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Post a copy of tensor to rank dst; returns at once."""
        self.stats["sends"] += 1
        self.stats["sent_bytes"] += tensor.numel() * tensor.element_size()
        self.world.mail[(self.rank, dst)].put(tensor.detach().clone())

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Wait for the next tensor rank src sent to this rank; copy it into tensor."""
        deadline = time.monotonic() + self.world.timeout
        while True:
            if self.world.failed.is_set():
                raise RuntimeError(f"rank {self.rank}: another rank failed while this one waited in recv")
            try:
                got = self.world.mail[(src, self.rank)].get(timeout=0.05)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank {self.rank}: recv from rank {src} timed out") from None
        if got.shape != tensor.shape:
            raise ValueError(f"rank {self.rank}: recv of shape {tuple(got.shape)} into {tuple(tensor.shape)}")
        return tensor.copy_(got)

    def _exchange(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor, in rank order (a copy each)."""
        w = self.world
        self.stats["collectives"] += 1
        w.slots[self.rank] = tensor.detach().clone()
        w.barrier.wait()
        everyone = list(w.slots)
        w.barrier.wait()  # everyone has read the slots before anyone writes the next collective's
        return everyone

    def all_reduce(self, tensor: torch.Tensor, async_op: bool = False):
        everyone = self._exchange(tensor)
        total = everyone[0]
        for t in everyone[1:]:
            total = total + t
        tensor.copy_(total)
        return _Done() if async_op else None

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        tensor.copy_(self._exchange(tensor)[src])

    def all_gather(self, output: torch.Tensor, input: torch.Tensor) -> None:
        """output (flat, world_size · n) = every rank's input (n), in rank order."""
        output.copy_(torch.cat([t.reshape(-1) for t in self._exchange(input)]))

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor) -> None:
        """output (n) = the sum over ranks of slice `rank` of their input (world_size · n)."""
        n = output.numel()
        everyone = self._exchange(input)
        total = everyone[0][self.rank * n : (self.rank + 1) * n]
        for t in everyone[1:]:
            total = total + t[self.rank * n : (self.rank + 1) * n]
        output.copy_(total)

    def barrier(self) -> None:
        self.world.barrier.wait()


class TorchGroup:
    """The same interface over torch.distributed (initialised by `launch`; gloo on CPUs)."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._sends: list = []

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        # isend of a copy, so the caller may reuse its buffer; completed at the next recv
        self._sends.append(dist.isend(tensor.detach().clone(), dst))

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        dist.recv(tensor, src)
        for work in self._sends:
            work.wait()
        self._sends.clear()
        return tensor

    def all_reduce(self, tensor: torch.Tensor, async_op: bool = False):
        return dist.all_reduce(tensor, async_op=async_op)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        dist.broadcast(tensor, src)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor) -> None:
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.1x
        gather(output, input.clone())  # a copy: input may be a view of output (ZeRO)

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor) -> None:
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed likewise
        scatter(output, input.contiguous())

    def barrier(self) -> None:
        dist.barrier()


class TimedGroup:
    """Any group, with the seconds its collectives and receives took added up in `seconds` (the bench's
    communication share; an async collective counts its launch and its wait)."""

    def __init__(self, group):
        self.group, self.rank, self.world_size, self.seconds = group, group.rank, group.world_size, 0.0

    def __getattr__(self, name: str):
        fn = getattr(self.group, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if out is not None and hasattr(out, "wait"):
                out = _TimedWork(out, self)
            self.seconds += time.perf_counter() - t0
            return out

        return timed


class _TimedWork:
    def __init__(self, work, owner: TimedGroup):
        self.work, self.owner = work, owner

    def wait(self) -> None:
        t0 = time.perf_counter()
        self.work.wait()
        self.owner.seconds += time.perf_counter() - t0


def run_local(fn: Callable, per_rank: Sequence[Sequence], timeout: float = 20.0, stats: bool = False):
    """fn(group, *per_rank[r]) on len(per_rank) threads, one LocalGroup rank each; their results in rank order
    (with stats=True: and each rank's group.stats, what it sent and how many collectives it called).

    The first exception of any rank is raised here (the others are released from their waits first).
    """
    world = LocalGroup.World(len(per_rank), timeout)
    results: list = [None] * len(per_rank)
    groups = [LocalGroup(r, world) for r in range(len(per_rank))]
    errors: list[tuple[int, BaseException]] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(groups[rank], *per_rank[rank])
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append((rank, e))
            world.failed.set()
            world.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(len(per_rank))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if any(t.is_alive() for t in threads):
        world.failed.set()
        world.barrier.abort()
        raise TimeoutError(f"run_local: a rank did not finish within {timeout} s")
    if errors:
        first = [e for e in errors if not isinstance(e[1], threading.BrokenBarrierError)] or errors
        raise first[0][1]
    return (results, [g.stats for g in groups]) if stats else results


# ----------------------------------------------------------------------------- the ring


def ring_all_reduce(group, x: torch.Tensor) -> torch.Tensor:
    """Sum x over all ranks, in place, with send/recv alone (Patarasuk & Yuan, 2009).  (exercise ch10.ring_all_reduce)

    Cut flat x into p chunks with torch.tensor_split (p = world_size; sizes may differ by one). Rank r sends to
    r + 1 and receives from r - 1 (mod p). Reduce-scatter, p - 1 steps: at step s, send chunk (r - s) mod p, receive
    chunk (r - s - 1) mod p and add it to yours; afterwards rank r holds the full sum of chunk (r + 1) mod p.
    All-gather, p - 1 steps: at step s, send chunk (r + 1 - s) mod p, receive chunk (r - s) mod p and overwrite
    yours. Each rank sends 2(p - 1) chunks: 2(p - 1)/p of x's bytes, whatever p. Returns x.
    """
    p, r = group.world_size, group.rank
    chunks = torch.tensor_split(x.view(-1), p)
    ### BEGIN SOLUTION ch10.ring_all_reduce (§10.2, 3 pts): p-1 steps send right, receive left and add; p-1 of copying
    right, left = (r + 1) % p, (r - 1) % p
    for s in range(p - 1):
        group.send(chunks[(r - s) % p], right)
        incoming = chunks[(r - s - 1) % p]
        incoming.add_(group.recv(torch.empty_like(incoming), left))
    for s in range(p - 1):
        group.send(chunks[(r + 1 - s) % p], right)
        group.recv(chunks[(r - s) % p], left)
    ### END SOLUTION
    return x


def ring_bytes_per_rank(nbytes: int, world_size: int) -> float:
    """What one rank sends in a ring all-reduce of nbytes: 2(p - 1)/p · nbytes (and receives as much)."""
    return 2 * (world_size - 1) / world_size * nbytes


# ----------------------------------------------------------------------------- data parallelism


def average_gradients(group, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Make every rank's gradients the mean over ranks, in place.  (exercise ch10.average_gradients)

    Each rank computed its gradients on its own slice of the batch; with equal slices, the gradient of the mean
    loss over the whole batch is the mean of the ranks' gradients: all-reduce (a sum) each, divide by world_size.
    Returns grads.
    """
    ### BEGIN SOLUTION ch10.average_gradients (§10.3, 1 pts): all-reduce sums; you want the mean
    for g in grads:
        group.all_reduce(g)
        g.div_(group.world_size)
    ### END SOLUTION
    return grads


def assign_buckets(nbytes: Sequence[int], bucket_bytes: int) -> list[list[int]]:
    """Group parameters into buckets for all-reduce, in the order backward produces their gradients.
    (exercise ch10.buckets)

    nbytes[i]: the gradient size of parameter i, in model.parameters() order. Backward reaches the last layers
    first, so walk the parameters from last to first, adding each to the open bucket; once the open bucket
    holds >= bucket_bytes, close it (a single parameter larger than bucket_bytes is a bucket of its own). The
    last bucket may be smaller. Returns the buckets in the order they fill, each a list of parameter indices in
    the order added: assign_buckets([4, 4, 4], 8) == [[2, 1], [0]].
    """
    ### BEGIN SOLUTION ch10.buckets (§10.4, 2 pts): last parameter first; close a bucket once it is full enough
    buckets, open_, size = [], [], 0
    for i in reversed(range(len(nbytes))):
        open_.append(i)
        size += nbytes[i]
        if size >= bucket_bytes:
            buckets.append(open_)
            open_, size = [], 0
    if open_:
        buckets.append(open_)
    ### END SOLUTION
    return buckets


def broadcast_parameters(group, module: nn.Module, src: int = 0) -> None:
    """Every rank starts from rank src's weights (and buffers)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            group.broadcast(t.data, src)


class DDP(nn.Module):
    """Distributed data parallel from scratch: PyTorch's DistributedDataParallel, the parts that matter.

    At construction, rank 0's weights are broadcast. During backward a hook on each parameter notes that its
    gradient is complete; when every parameter of a bucket is complete (and every earlier bucket launched, so
    all ranks launch buckets in the same order), the bucket's gradients are copied into one flat buffer and its
    all-reduce starts (async_op), while backward goes on with earlier layers. At the end of backward the
    all-reduces are awaited and the averaged gradients copied back. Inside `no_sync()` nothing is communicated:
    gradients accumulate locally, and the first backward outside it reduces the accumulated sum.
    """

    def __init__(self, module: nn.Module, group, bucket_bytes: int = 1 << 20):
        super().__init__()
        self.module, self.group = module, group
        broadcast_parameters(group, module)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = assign_buckets([p.numel() * p.element_size() for p in self.params], bucket_bytes)
        self.bucket_of = {i: b for b, idx in enumerate(self.buckets) for i in idx}
        self.require_sync = True
        self._reset()
        for i, p in enumerate(self.params):
            p.register_post_accumulate_grad_hook(lambda p, i=i: self._grad_ready(i))

    def _reset(self) -> None:
        self.pending = [len(b) for b in self.buckets]
        self.launched: list[tuple[torch.Tensor, object]] = []
        self.queued = False

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients on this rank only (gradient accumulation)."""
        self.require_sync = False
        try:
            yield
        finally:
            self.require_sync = True

    def _grad_ready(self, i: int) -> None:
        if not self.require_sync:
            return
        if not self.queued:  # the engine calls _finish once, when this whole backward pass is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self.queued = True
        self.pending[self.bucket_of[i]] -= 1
        self._launch_ready()

    def _launch_ready(self, everything: bool = False) -> None:
        while len(self.launched) < len(self.buckets):
            b = len(self.launched)
            if self.pending[b] and not everything:
                return
            flat = torch.cat([self._grad(i).reshape(-1) for i in self.buckets[b]])
            self.launched.append((flat, self.group.all_reduce(flat, async_op=True)))

    def _grad(self, i: int) -> torch.Tensor:
        p = self.params[i]
        if p.grad is None:  # a parameter this rank's batch did not reach: its gradient is 0
            p.grad = torch.zeros_like(p)
        return p.grad

    def _finish(self) -> None:
        self._launch_ready(everything=True)
        for b, (flat, work) in enumerate(self.launched):
            work.wait()
            flat.div_(self.group.world_size)
            offset = 0
            for i in self.buckets[b]:
                g = self.params[i].grad
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        self._reset()


# ----------------------------------------------------------------------------- ZeRO-1 and ZeRO-2


def shard_range(numel: int, rank: int, world_size: int) -> tuple[int, int]:
    """The slice [start, stop) of a flat tensor of numel elements that rank owns.  (exercise ch10.shard_range)

    The tensor is padded to world_size · chunk with chunk = ceil(numel / world_size); rank owns
    [rank · chunk, (rank + 1) · chunk) of the padded tensor. Returned clipped to the real elements: start and
    stop at most numel (a rank past the end owns an empty slice, start == stop == numel).
    """
    ### BEGIN SOLUTION ch10.shard_range (§10.5, 1 pts): equal chunks of the padded length, clipped to numel
    chunk = -(-numel // world_size)
    start = min(rank * chunk, numel)
    stop = min(start + chunk, numel)
    ### END SOLUTION
    return start, stop


def padded_numel(numel: int, world_size: int) -> int:
    return -(-numel // world_size) * world_size


def zero_step(group, flat_param: torch.Tensor, flat_grad: torch.Tensor, shard: nn.Parameter,
              optimizer: torch.optim.Optimizer) -> None:
    """One ZeRO step on this rank's shard.  (exercise ch10.zero_step)

    flat_param and flat_grad: every parameter (resp. this rank's gradient) in one padded flat tensor of
    world_size · n elements; shard: this rank's n parameters, slice [rank · n, (rank + 1) · n), as the
    Parameter that `optimizer` (AdamW, holding state for the shard only) updates. Reduce-scatter flat_grad so
    that this rank gets the sum of its slice over ranks, divide by world_size (the mean), make it shard.grad,
    take the optimizer step, then all-gather the updated shards into flat_param: every rank has every parameter
    again.
    """
    n = shard.numel()
    ### BEGIN SOLUTION ch10.zero_step (§10.5, 3 pts): reduce-scatter, mean, step my shard, all-gather
    grad = torch.empty(n, dtype=flat_grad.dtype)
    group.reduce_scatter(grad, flat_grad)
    shard.grad = grad.div_(group.world_size)
    optimizer.step()
    group.all_gather(flat_param, shard.detach())
    ### END SOLUTION


def zero_demo(group, flat_param: torch.Tensor, grads: torch.Tensor, lr: float, weight_decay: float) -> dict:
    """len(grads) ZeRO steps of torch.optim.AdamW on this rank's shard of flat_param (grads[k]: this rank's
    gradient at step k, padded like flat_param); the parameters and the shard's AdamW state afterwards."""
    n = flat_param.numel() // group.world_size
    shard = nn.Parameter(flat_param[group.rank * n : (group.rank + 1) * n].clone())
    opt = torch.optim.AdamW([shard], lr=lr, weight_decay=weight_decay, foreach=False)
    for g in grads:
        with torch.no_grad():
            zero_step(group, flat_param, g.clone(), shard, opt)
        opt.zero_grad()
    st = opt.state[shard]
    return {"flat": flat_param, "exp_avg": st["exp_avg"].clone(), "exp_avg_sq": st["exp_avg_sq"].clone()}


def flatten_into(params: Sequence[nn.Parameter], world_size: int) -> torch.Tensor:
    """One zero-padded flat buffer holding params; each parameter's data becomes a view into it."""
    numel = sum(p.numel() for p in params)
    flat = torch.zeros(padded_numel(numel, world_size), dtype=params[0].dtype)
    offset = 0
    for p in params:
        flat[offset : offset + p.numel()] = p.data.reshape(-1)
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


class ZeRO:
    """ZeRO stage 1 or 2 (Rajbhandari et al., 2020) with Chapter 7's AdamW: an optimizer wrapper.

    The model is whole on every rank (its parameters become views of one flat buffer); each rank keeps AdamW's
    moments for its shard only. Stage 1 keeps the full gradient between steps (it is where backward accumulates);
    stage 2 frees it once reduce-scattered, keeping only the shard's. Both reduce-scatter the gradient and
    all-gather the parameters: the same bytes on the wire as DDP's all-reduce (a ring all-reduce *is* the two).
    Usage: loss.backward(); zero.step(); zero.zero_grad().
    """

    def __init__(self, model: nn.Module, group, stage: int = 1, **adamw):
        if stage not in (1, 2):
            raise ValueError(f"ZeRO here has stages 1 and 2 (stage 3 is FSDP), got {stage}")
        self.model, self.group, self.stage = model, group, stage
        broadcast_parameters(group, model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        self.flat = flatten_into(self.params, group.world_size)
        n = self.flat.numel() // group.world_size
        self.shard = nn.Parameter(self.flat[group.rank * n : (group.rank + 1) * n])  # a view: no second copy
        self.optimizer = AdamW([self.shard], **adamw)

    def step(self) -> None:
        flat_grad = torch.zeros_like(self.flat)
        offset = 0
        for p in self.params:
            if p.grad is not None:
                flat_grad[offset : offset + p.numel()] = p.grad.reshape(-1)
            offset += p.numel()
        with torch.no_grad():
            zero_step(self.group, self.flat, flat_grad, self.shard, self.optimizer)
        if self.stage == 1:
            self.shard.grad = None  # my reduced slice was needed for the step only; the full buffers stay
        else:
            for p in self.params:
                p.grad = None  # stage 2 keeps only the reduced slice of the gradient

    def zero_grad(self) -> None:
        for p in self.params:
            if self.stage == 1 and p.grad is not None:
                p.grad.zero_()  # stage 1 keeps its gradient buffers: backward accumulates into them
            else:
                p.grad = None
        self.shard.grad = None

    def state_dict(self) -> dict:
        """This rank's shard of the training state: parameters and AdamW moments (see `reshard`)."""
        st = self.optimizer.state[self.shard]
        return {"numel": self.numel, "step": st.get("step", 0), "param": self.shard.detach().clone(),
                "exp_avg": st["exp_avg"].clone() if st else torch.zeros_like(self.shard),
                "exp_avg_sq": st["exp_avg_sq"].clone() if st else torch.zeros_like(self.shard)}

    def load_state_dict(self, shards: Sequence[dict]) -> None:
        """Resume from the shards saved by any number of ranks (this rank takes its own slice of the whole)."""
        load_shards(self.group, shards, self.shard, self.optimizer, self.flat)


# ----------------------------------------------------------------------------- ZeRO-3 / FSDP


class FSDPUnit:
    """One layer's parameters, sharded: between uses each rank holds 1/N of them (`shard`).

    `full` is the padded flat buffer of the whole layer; the layer's parameters are views into it. Its storage is
    released (`reshard`: resized to 0 bytes) whenever the layer is not running, and reallocated and refilled by
    all-gather (`unshard`) just before forward and again just before backward, which needs the weights too.
    """

    def __init__(self, params: Sequence[nn.Parameter], group):
        self.group, self.params = group, list(params)
        self.numel = sum(p.numel() for p in self.params)
        self.full = flatten_into(self.params, group.world_size)
        n = self.full.numel() // group.world_size
        self.shard = nn.Parameter(self.full[group.rank * n : (group.rank + 1) * n].clone())
        self.pending = 0
        self.reshard()

    def unshard(self) -> None:
        """Reallocate `full` and fill it with every rank's shard.  (exercise ch10.unshard)

        self.full's storage has 0 bytes while the layer is sharded; its views (the parameters) stay valid views.
        Resize the storage back to full's size in bytes (self.full.untyped_storage().resize_(...)), then
        all-gather every rank's shard (self.shard, detached) into self.full. Does nothing when already whole.
        """
        storage = self.full.untyped_storage()
        ### BEGIN SOLUTION ch10.unshard (§10.6, 2 pts): bytes back first, then the all-gather fills them
        if storage.nbytes() > 0:
            return
        storage.resize_(self.full.numel() * self.full.element_size())
        self.group.all_gather(self.full, self.shard.detach())
        ### END SOLUTION

    def reshard(self) -> None:
        """Free the whole layer: only the shard stays."""
        self.full.untyped_storage().resize_(0)

    def reduce_gradients(self) -> None:
        """Reduce-scatter the layer's gradients into the shard's (mean over ranks), then drop the full ones."""
        flat_grad = torch.zeros(self.full.numel(), dtype=self.full.dtype)
        offset = 0
        for p in self.params:
            if p.grad is not None:
                flat_grad[offset : offset + p.numel()] = p.grad.reshape(-1)
            p.grad = None
            offset += p.numel()
        grad = torch.empty_like(self.shard)
        self.group.reduce_scatter(grad, flat_grad)
        grad.div_(self.group.world_size)
        self.shard.grad = grad if self.shard.grad is None else self.shard.grad.add_(grad)


def unshard_demo(group, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> dict:
    """A linear layer as one FSDP unit (each rank's shard cut from its own weight, bias): bytes held while sharded,
    the output and bytes held while whole, and the shard's gradient of y.sum() after the layer is freed and
    gathered again for backward (what FSDP does around every block)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    unit = FSDPUnit(list(layer.parameters()), group)
    sharded_bytes = unit.full.untyped_storage().nbytes()
    unit.unshard()
    whole_bytes = unit.full.untyped_storage().nbytes()
    y = layer(x)
    unit.reshard()
    freed_bytes = unit.full.untyped_storage().nbytes()
    unit.unshard()
    y.sum().backward()
    unit.reduce_gradients()
    unit.reshard()
    return {"y": y.detach(), "sharded_bytes": sharded_bytes, "whole_bytes": whole_bytes, "freed_bytes": freed_bytes,
            "shard": unit.shard.detach().clone(), "shard_grad": unit.shard.grad.clone()}


class FSDP:
    """ZeRO-3 / fully sharded data parallel for the storyteller (storylib.gpt2.GPT), with Chapter 7's AdamW.

    One unit per transformer block; the rest (embeddings, the tied head, the final LayerNorm) is the root unit,
    gathered when the model's forward starts and freed after the step. A block is gathered by a forward pre-hook
    and freed by a forward hook; a backward pre-hook gathers it again; when the last of its gradients arrives,
    they are reduce-scattered and the block freed. Usage: loss.backward(); fsdp.step(); fsdp.zero_grad().
    """

    def __init__(self, model: nn.Module, group, **adamw):
        self.model, self.group = model, group
        broadcast_parameters(group, model)
        blocks = list(model.transformer.h)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        self.root = FSDPUnit([p for p in model.parameters() if id(p) not in in_blocks], group)
        self.units = [FSDPUnit(list(b.parameters()), group) for b in blocks]
        for block, unit in zip(blocks, self.units, strict=True):
            block.register_forward_pre_hook(lambda m, args, u=unit: u.unshard())
            block.register_forward_hook(lambda m, args, out, u=unit: u.reshard())
            block.register_full_backward_pre_hook(lambda m, grad_out, u=unit: u.unshard())
            for p in unit.params:
                p.register_post_accumulate_grad_hook(lambda p, u=unit: self._grad_ready(u))
        model.register_forward_pre_hook(lambda m, args: self.root.unshard())
        self.optimizer = AdamW([u.shard for u in [self.root, *self.units]], **adamw)

    def _grad_ready(self, unit: FSDPUnit) -> None:
        unit.pending += 1
        if unit.pending == len(unit.params):
            unit.pending = 0
            unit.reduce_gradients()
            unit.reshard()

    def step(self) -> None:
        self.root.reduce_gradients()
        self.root.reshard()
        self.optimizer.step()

    def zero_grad(self) -> None:
        for u in [self.root, *self.units]:
            u.shard.grad = None

    @torch.no_grad()
    def full_parameters(self) -> list[torch.Tensor]:
        """Every parameter of the model, whole (a collective: every rank must call it)."""
        out = {}
        for u in [self.root, *self.units]:
            u.unshard()
            out.update({id(p): p.detach().clone() for p in u.params})
            u.reshard()
        return [out[id(p)] for p in self.model.parameters()]


# ----------------------------------------------------------------------------- checkpoints


def reshard(shards: Sequence[torch.Tensor], numel: int, world_size: int) -> list[torch.Tensor]:
    """The shards of N ranks (in rank order) cut again for world_size ranks.  (exercise ch10.reshard)

    Consolidate: concatenate the old shards and drop the padding (keep the first numel elements). Then shard for
    the new world: pad with zeros to world_size · chunk, chunk = ceil(numel / world_size), and cut into
    world_size shards of chunk elements. reshard(reshard(s, numel, M), numel, N) == s.
    """
    ### BEGIN SOLUTION ch10.reshard (§10.7, 2 pts): consolidate (cat, unpad), then pad and split anew
    whole = torch.cat([s.reshape(-1) for s in shards])[:numel]
    chunk = -(-numel // world_size)
    padded = torch.cat([whole, whole.new_zeros(chunk * world_size - numel)])
    new = list(padded.split(chunk))
    ### END SOLUTION
    return new


def load_shards(group, shards: Sequence[dict], shard: nn.Parameter, optimizer: torch.optim.Optimizer,
                flat: torch.Tensor | None = None) -> None:
    """Load this rank's slice of a checkpoint saved by len(shards) ranks into shard and AdamW's state."""
    numel = shards[0]["numel"]
    pieces = {k: reshard([s[k] for s in shards], numel, group.world_size)[group.rank]
              for k in ("param", "exp_avg", "exp_avg_sq")}
    with torch.no_grad():
        shard.copy_(pieces["param"])
        if flat is not None:
            group.all_gather(flat, shard.detach())
    optimizer.state[shard] = {"step": shards[0]["step"], "exp_avg": pieces["exp_avg"],
                              "exp_avg_sq": pieces["exp_avg_sq"]}


# ----------------------------------------------------------------------------- memory per rank


def memory_formula(strategy: str, n_params: int, world_size: int) -> dict[str, int]:
    """Bytes per rank of fp32 parameters, gradients and AdamW state (Ψ = n_params, sharded parts padded)."""
    shard = -(-n_params // world_size)
    full = {"params": 4 * n_params, "grads": 4 * n_params, "optimizer": 8 * n_params}
    sharded = {"params": 4 * shard, "grads": 4 * shard, "optimizer": 8 * shard}
    keep = {"ddp": (), "zero1": ("optimizer",), "zero2": ("grads", "optimizer"),
            "zero3": ("params", "grads", "optimizer")}[strategy]
    return {k: sharded[k] if k in keep else full[k] for k in full}


def _unique_bytes(tensors) -> int:
    """Bytes of distinct tensors (a tied weight counts once); a freed layer (0-byte storage) counts 0."""
    seen = {id(t): t.numel() * t.element_size() for t in tensors
            if t is not None and t.untyped_storage().nbytes() > 0}
    return sum(seen.values())


def memory_measured(model: nn.Module, optimizer: torch.optim.Optimizer, extra_params=(), extra_grads=()) -> dict:
    """Bytes this rank holds between steps: parameters, gradients, optimizer state (storages counted once)."""
    params = [*model.parameters(), *extra_params]
    state = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return {"params": _unique_bytes(params),
            "grads": _unique_bytes([p.grad for p in params] + list(extra_grads)),
            "optimizer": _unique_bytes(state)}


# ----------------------------------------------------------------------------- launching gloo processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, out: str, blob: bytes, timeout: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)  # N processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        args, kwargs = pickle.loads(blob)  # each rank its own copy of the arguments
        result = fn(TorchGroup(), *args, **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _join(ctx) -> bool:
    """True when every rank has finished; a rank that raised or died stops the others and raises, naming it."""
    import torch.multiprocessing as mp

    try:
        return ctx.join(timeout=0.5)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
        raise RuntimeError(f"launch: rank {e.error_index} failed, the other ranks were stopped: {e}") from e


def launch(fn: Callable, world_size: int, *args, timeout: float = TIMEOUT_S, **kwargs) -> list:
    """fn(TorchGroup(), *args, **kwargs) in world_size new processes joined by gloo; their results in rank order.

    fn must be importable (a module-level function). When a rank raises or dies, the others are terminated and
    an exception naming it is raised here; a job that runs past `timeout` seconds is terminated likewise.
    """
    import torch.multiprocessing as mp

    # Plain pickle: torch.multiprocessing would move the tensors of args into shared memory, and the ranks' models
    # would then be one model, updated by every rank.
    blob = pickle.dumps((args, kwargs))
    with tempfile.TemporaryDirectory(prefix="llm101n-dist-") as out:
        ctx = mp.start_processes(_entry, args=(fn, world_size, free_port(), out, blob, timeout),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not _join(ctx):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"launch: {world_size} ranks did not finish within {timeout} s")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


# ----------------------------------------------------------------------------- training side by side


def batch_slice(x: torch.Tensor, group) -> torch.Tensor:
    """This rank's rows of a global batch (equal slices: the batch is a multiple of world_size)."""
    n = x.shape[0] // group.world_size
    return x[group.rank * n : (group.rank + 1) * n]


def train_reference(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], **adamw):
    """One process, whole batches: the losses and the parameters after every step (the yardstick)."""
    opt = AdamW(model.parameters(), **adamw)
    losses, params = [], []
    for x, y in batches:
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return losses, params


def train_distributed(group, strategy: str, model: nn.Module, batches, bucket_bytes: int = 1 << 14,
                      accumulate: int = 1, record_params: bool = True, **adamw) -> dict:
    """Train model with strategy ("ddp", "zero1", "zero2", "zero3") on this rank's slices of batches.

    Returns the global losses (mean over ranks), the full parameters after every step (record_params), the memory
    this rank held after the last step, and the seconds per step: total and in communication (collectives and
    waits). accumulate > 1 (DDP only) splits each rank's slice into micro-batches, all but the last backward under
    no_sync().
    """
    group = TimedGroup(group)
    if strategy == "ddp":
        ddp = DDP(model, group, bucket_bytes)
        opt = AdamW(model.parameters(), **adamw)
    elif strategy in ("zero1", "zero2"):
        zero = ZeRO(model, group, stage=int(strategy[-1]), **adamw)
        opt = zero.optimizer
    elif strategy == "zero3":
        fsdp = FSDP(model, group, **adamw)
        opt = fsdp.optimizer
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    shards = [u.shard for u in [fsdp.root, *fsdp.units]] if strategy == "zero3" else []
    losses, params, step_seconds, comm_seconds = [], [], [], []
    for x, y in batches:
        t0, c0 = time.perf_counter(), group.seconds
        x, y = batch_slice(x, group), batch_slice(y, group)
        if strategy == "ddp":
            loss_value = torch.zeros(1, dtype=torch.float64)
            micro = list(zip(x.chunk(accumulate), y.chunk(accumulate), strict=True))
            for k, (xm, ym) in enumerate(micro):
                with ddp.no_sync() if k < len(micro) - 1 else contextlib.nullcontext():
                    _, loss = ddp(xm, ym)
                    (loss / accumulate).backward()
                loss_value += loss.item() / accumulate
            opt.step()
        else:
            _, loss = model(x, y)
            loss.backward()
            loss_value = loss.detach().reshape(1).double()
            fsdp.step() if strategy == "zero3" else zero.step()
        # what this rank holds after a step, gradients not yet zeroed
        if strategy == "zero3":
            mem = memory_measured(nn.Module(), opt, extra_params=shards, extra_grads=[s.grad for s in shards])
        else:
            mem = memory_measured(model, opt, extra_grads=[zero.shard.grad] if strategy != "ddp" else [])
        if strategy == "ddp":
            opt.zero_grad()
        elif strategy == "zero3":
            fsdp.zero_grad()
        else:
            zero.zero_grad()
        step_seconds.append(time.perf_counter() - t0)
        comm_seconds.append(group.seconds - c0)
        group.all_reduce(loss_value)
        losses.append(loss_value.item() / group.world_size)
        if record_params:
            full = fsdp.full_parameters() if strategy == "zero3" else [p.detach() for p in model.parameters()]
            params.append(torch.cat([p.reshape(-1) for p in full]))
    return {"losses": losses, "params": params, "memory": mem, "step_seconds": step_seconds,
            "comm_seconds": comm_seconds, "rank": group.rank}

