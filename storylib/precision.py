"""Chapter 9 — precision: floating-point formats, mixed precision, loss scaling, FP8; the trainer's fast paths.

The chapter's exercises (the second half of this file):

    decode, encode                bit patterns <-> values of a format (exp_bits, man_bits), round to nearest even
    stochastic_round              round down or up at random, unbiased on average
    memory_per_parameter          bytes per parameter of a training recipe (RECIPES: the book's table)
    LossScaler                    dynamic loss scaling for fp16 training (torch.amp.GradScaler's rule)
    fp8_quantize, DelayedScaling  FP8 with a per-tensor scale: current scaling, delayed scaling (amax history)

The trainer's fast paths (the first half), used by Chapter 7's trainer:

    to_float8, scaled_mm          a tensor scaled into an FP8 format; a matmul of two of them
    Float8Linear, float8_linears  nn.Linear with its three training matmuls in FP8; swap a model's Linears for it
    LinearCrossEntropy, linear_cross_entropy   lm_head + cross-entropy fused, the logits made a chunk at a time
    fused_loss                    a GPT's loss through linear_cross_entropy: forward's value and gradients

FP8, the trainer's fastest path on Hopper. An H100 multiplies float8 matrices at twice its bf16 rate. Two 8-bit
formats (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"):

    e4m3  4 exponent bits, 3 mantissa bits, largest 448      more precision: weights and activations
    e5m2  5 exponent bits, 2 mantissa bits, largest 57344    more range: gradients

Eight bits hold only ~2 significant digits over a narrow range, so each tensor is first *scaled*: multiplied by
fmax / amax(|x|) ("tensorwise dynamic scaling") so that its largest element lands on the format's largest value,
cast, and the scale is divided back out of the product. A linear layer y = x Wᵀ then runs three FP8 matmuls:

    forward   y  = x8 · W8ᵀ           (e4m3 × e4m3)
    backward  dx = g8 · W8            (e5m2 × e4m3)
              dW = g8ᵀ · x8           (e5m2 × e4m3, accumulated and returned in fp32)

The products accumulate in fp32 inside the tensor cores; the master weights, AdamW's moments, layer norms,
softmax and the loss stay in higher precision (mixed precision). `float8_linears(model)` swaps a model's
nn.Linear layers for `Float8Linear` (same parameters, same state_dict), used only while training: in eval mode a
Float8Linear is an ordinary nn.Linear.

On a CUDA GPU with FP8 tensor cores the matmuls are `torch._scaled_mm`; elsewhere they are emulated in fp32 on
the FP8-rounded inputs (same numbers up to accumulation order), so the math can be tested on a CPU.

The fused loss. GPT.forward returns the logits, (rows, vocab): at GPT-2 size 16,384 x 50,304, 1.6 GB in bf16,
written once and read back by the cross-entropy and by its backward. `fused_loss(model, idx, targets, n_chunks)`
never holds them: it takes the final hidden states (GPT.hidden) and computes lm_head's matmul, the loss and both
gradients in one pass, `n_chunks` row-chunks at a time (TrainConfig.loss_chunks).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from storylib.gpt2 import GPT

# ----------------------------------------------------------------------------- FP8 matmuls

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def to_float8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x8, inv_scale) with x ≈ x8 · inv_scale: x scaled so that amax(|x|) maps to the format's largest value."""
    fmax = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float().clamp(min=1e-12)
    scale = fmax / amax
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8, scale.reciprocal()


def fp8_supported(device: torch.device | str) -> bool:
    """True on a CUDA GPU with FP8 tensor cores (compute capability 8.9: Ada, 9.0: Hopper, and newer)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def scaled_mm(a8: torch.Tensor, a_inv: torch.Tensor, b8: torch.Tensor, b_inv: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """(a8 · a_inv) @ (b8 · b_inv) in out_dtype. a8: (M, K) row-major; b8: (K, N) column-major (a transposed view)."""
    if a8.is_cuda:
        return torch._scaled_mm(a8, b8, scale_a=a_inv, scale_b=b_inv, out_dtype=out_dtype)
    return ((a8.float() @ b8.float()) * (a_inv * b_inv)).to(out_dtype)


class _Float8Matmul(torch.autograd.Function):
    """x (M, K) @ w (N, K)ᵀ with all three matmuls of forward and backward in FP8."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the scales and casts are ours, not autocast's
            x8, x_inv = to_float8(x, E4M3)
            w8, w_inv = to_float8(w, E4M3)
            ctx.save_for_backward(x8, x_inv, w8, w_inv)
            ctx.x_dtype = x.dtype
            return scaled_mm(x8, x_inv, w8.t(), w_inv, out_dtype)  # w8.t(): (K, N), column-major as required

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x8, x_inv, w8, w_inv = ctx.saved_tensors
        with torch.autocast(g.device.type, enabled=False):
            g8, g_inv = to_float8(g, E5M2)
            dx = scaled_mm(g8, g_inv, w8.t().contiguous().t(), w_inv, g.dtype)  # (M, N) @ (N, K)
            dw = scaled_mm(g8.t().contiguous(), g_inv, x8.t().contiguous().t(), x_inv, torch.float32)  # (N,M)@(M,K)
        return dx.to(ctx.x_dtype), dw, None


class Float8Linear(nn.Linear):
    """nn.Linear whose training matmuls run in FP8 (tensorwise dynamic scaling); an ordinary Linear in eval mode."""

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Float8Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = lin.in_features, lin.out_features
        new.weight, new.bias = lin.weight, lin.bias  # the same Parameters: weight tying survives the swap
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if not self.training or rows % 16 or self.in_features % 16 or self.out_features % 16:
            return F.linear(x, self.weight, self.bias)  # _scaled_mm wants every dimension a multiple of 16
        out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        y = _Float8Matmul.apply(x.reshape(rows, -1), self.weight, out_dtype).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def float8_linears(model: nn.Module, only: str | None = None) -> nn.Module:
    """Swap the nn.Linear layers of `model` for Float8Linears sharing their parameters, in place; returns the model.

    only: the qualified name of the one Linear to swap (e.g. "lm_head"); None: every Linear.
    """
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            fqn = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and only in (None, fqn):
                setattr(parent, name, Float8Linear.from_linear(child))
    return model


# ----------------------------------------------------------------------------- the fused loss


class LinearCrossEntropy(torch.autograd.Function):
    """loss = mean over rows i with targets[i] != ignore_index of  logsumexp(z_i) - z_i[targets[i]],  z = h wᵀ.

    The logits z are (rows, vocab): at GPT-2 size 16,384 x 50,304, 1.6 GB in bf16. Here the forward pass takes
    the rows `n_chunks` chunks at a time and, for each chunk, computes its logits, its loss, and at once the
    gradient of the loss with respect to them, dz = (softmax(z) - onehot(target)) / n; then dh = dz w and
    dw += dzᵀ h. The chunk's logits are dropped right there: nothing of size (rows, vocab) outlives a chunk, and
    the logits are never read back by a backward pass. The backward pass only scales the saved dh, dw.
    """

    @staticmethod
    def forward(ctx, h, w, targets, n_chunks: int, dtype: torch.dtype, ignore_index: int):
        with torch.autocast(h.device.type, enabled=False):  # the casts are ours: matmuls in dtype, softmax in fp32
            wc, acc = w.to(dtype), torch.promote_types(dtype, torch.float32)  # acc: fp32, or fp64 in the tests
            valid = targets != ignore_index
            n = valid.sum().clamp(min=1)  # rows that count (a tensor: no wait for the GPU)
            loss, dh, dw = 0.0, [], None
            for hc, tc, vc in zip(h.to(dtype).chunk(n_chunks), targets.chunk(n_chunks), valid.chunk(n_chunks),
                                  strict=True):
                z = (hc @ wc.t()).to(acc)  # (rows, vocab) logits of this chunk
                lse = z.logsumexp(dim=-1)
                tc = tc.where(vc, 0)  # any id for an ignored row: its weight below is 0
                loss = loss + ((lse - z.gather(1, tc[:, None]).squeeze(1)) * vc).sum()
                target = torch.arange(z.shape[1], device=z.device) == tc[:, None]
                p = (z - lse[:, None]).exp()  # softmax
                dz = (torch.where(target, p - 1, p) * (vc.to(acc) / n)[:, None]).to(dtype)
                dh.append(dz @ wc)
                dw_c = (dz.t() @ hc).to(acc)
                dw = dw_c if dw is None else dw + dw_c
        ctx.save_for_backward(torch.cat(dh).to(h.dtype), dw.to(w.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensors
        return dh * dloss, dw * dloss, None, None, None, None


def linear_cross_entropy(h, w, targets, n_chunks: int = 1, ignore_index: int = -100):
    """F.cross_entropy(h @ wᵀ, targets) (mean, ignore_index as there) without the (rows, vocab) logits tensor.

    h: (..., C) hidden states; w: (vocab, C), lm_head's weight; targets: (...) ids. Under autocast the matmuls run in
    its dtype (bf16) and the softmax in fp32, as F.cross_entropy under autocast would. See LinearCrossEntropy.
    """
    if n_chunks < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    on = torch.is_autocast_enabled(h.device.type)
    dtype = torch.get_autocast_dtype(h.device.type) if on else h.dtype
    return LinearCrossEntropy.apply(h.reshape(-1, h.shape[-1]), w, targets.reshape(-1), n_chunks, dtype, ignore_index)


def fused_loss(model: GPT, idx: torch.Tensor, targets: torch.Tensor, n_chunks: int = 1) -> torch.Tensor:
    """model(idx, targets)'s loss, computed without its logits tensor: the same value and gradients.

    model.hidden(idx) gives the final hidden states; lm_head and the cross-entropy are then fused in
    `linear_cross_entropy`, whose forward pass also computes both gradients, `n_chunks` row-chunks at a time.
    Raises ValueError as GPT.forward does (a sequence longer than block_size) and when n_chunks < 1.
    """
    return linear_cross_entropy(model.hidden(idx), model.lm_head.weight, targets, n_chunks)


# ============================================================================= Chapter 9, the exercises
#
#   decode, encode              a format's bit patterns -> values, values -> the nearest pattern (§9.1)
#   round_to                    a value -> the nearest value of a format: decode(encode(x))
#   stochastic_round            round down or up at random, unbiased on average (§9.2)
#   memory_per_parameter        bytes per parameter of a training recipe, by what holds them (§9.3)
#   LossScaler                  dynamic loss scaling for fp16 training, torch.amp.GradScaler's rule (§9.4)
#   fp8_quantize                FP8 with a per-tensor scale: current scaling (§9.5)
#   DelayedScaling              FP8 with the scale of an amax history: delayed scaling (§9.5)
#
# A format is given by its exponent and mantissa widths (exp_bits, man_bits) and whether it is an "fn" format
# ("finite and NaN": float8_e4m3fn), which spends its top exponent on numbers rather than infinities.

# (exp_bits, man_bits, fn) of the formats of this chapter; the torch dtype that stores each, where there is one
FORMATS: dict[str, tuple[int, int, bool]] = {
    "fp32": (8, 23, False), "tf32": (8, 10, False), "fp16": (5, 10, False), "bf16": (8, 7, False),
    "fp8_e4m3": (4, 3, True), "fp8_e5m2": (5, 2, False),
}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                                  "fp8_e4m3": E4M3, "fp8_e5m2": E5M2}


def format_info(exp_bits: int, man_bits: int, fn: bool = False) -> dict[str, float]:
    """The numbers that describe a format: bias, largest finite value, smallest normal and subnormal values,
    machine epsilon (the gap between 1 and the next value) and the digits of precision it holds."""
    bias = 2 ** (exp_bits - 1) - 1
    top = 2**exp_bits - 1 if fn else 2**exp_bits - 2  # the largest exponent field that holds finite numbers
    top_mantissa = 2**man_bits - 2 if fn else 2**man_bits - 1  # fn: all ones there is NaN
    return {
        "bits": 1 + exp_bits + man_bits, "bias": bias,
        "max": (1 + top_mantissa / 2**man_bits) * 2.0 ** (top - bias),
        "min_normal": 2.0 ** (1 - bias), "min_subnormal": 2.0 ** (1 - bias - man_bits),
        "eps": 2.0**-man_bits, "digits": (man_bits + 1) * math.log10(2),
    }


def decode(bits: torch.Tensor, exp_bits: int, man_bits: int, fn: bool = False) -> torch.Tensor:
    """The values (float64) of the bit patterns `bits` (int64, each in 0 .. 2**(1 + exp_bits + man_bits) - 1).

    The top bit is the sign, then exp_bits of exponent field E, then man_bits of mantissa field M; bias =
    2**(exp_bits - 1) - 1. E = 0: subnormal, ±M / 2**man_bits · 2**(1 - bias) (M = 0: ±0). E all ones: ±inf when
    M = 0, else NaN; but an fn format (fn=True, like float8_e4m3fn) has no infinities: there only E and M both all
    ones is NaN, and every other pattern with E all ones is a normal number. Otherwise a normal number:
    ±(1 + M / 2**man_bits) · 2**(E - bias).
    """
    ### BEGIN SOLUTION ch09.decode (§9.1, 2 pts): split sign, exponent field, mantissa field; subnormals, inf/NaN
    bits = bits.to(torch.int64)
    bias = 2 ** (exp_bits - 1) - 1
    sign = torch.where((bits >> (exp_bits + man_bits)) & 1 == 1, -1.0, 1.0).double()
    E = (bits >> man_bits) & (2**exp_bits - 1)
    M = (bits & (2**man_bits - 1)).double()
    frac = M / 2**man_bits
    normal = (1 + frac) * torch.pow(2.0, (E - bias).double())
    subnormal = frac * 2.0 ** (1 - bias)
    value = sign * torch.where(E == 0, subnormal, normal)
    top = E == 2**exp_bits - 1
    if fn:
        value = torch.where(top & (M == 2**man_bits - 1), torch.nan, value)
    else:
        value = torch.where(top, torch.where(M == 0, sign * torch.inf, torch.nan), value)
    return value
    ### END SOLUTION


def encode(x: torch.Tensor, exp_bits: int, man_bits: int, fn: bool = False) -> torch.Tensor:
    """The bit pattern (int64) of the format's value nearest to each element of x (float64), ties to even.

    Round to nearest, ties to the even mantissa (the last mantissa bit 0), also among subnormals; the sign is
    kept (-0.0 encodes with the sign bit set). Too large after rounding: ±inf, or in an fn format (no infinities)
    the largest finite value ±max, which is also where ±inf go there (as torch's float8_e4m3fn cast does). NaN:
    any NaN pattern. Exact for every float64 input (torch's own casts from float64 round twice, through fp32).
    """
    ### BEGIN SOLUTION ch09.encode (§9.1, 3 pts): exponent k of |x| (not below the subnormals'), spacing 2**(k - m)
    x = x.to(torch.float64)
    bias = 2 ** (exp_bits - 1) - 1
    emin = 1 - bias  # the exponent of the smallest normal numbers, and of every subnormal
    sign = torch.signbit(x).to(torch.int64) << (exp_bits + man_bits)
    a = x.abs()
    finite = a.isfinite()
    a = torch.where(finite, a, 0.0)
    _, e = torch.frexp(a)  # a = f · 2**e, f in [0.5, 1): the exponent of a is e - 1
    k = torch.where(a > 0, e.to(torch.int64) - 1, emin).clamp(min=emin)  # 0 sits with the subnormals
    n = torch.round(torch.ldexp(a, (man_bits - k).double()))  # a in units of the spacing 2**(k - m); ties to even
    # with E = k - emin + 1 and M = n - 2**m this is E · 2**m + M; for subnormals (E = 0) it is M = n, and a
    # mantissa that rounded up to 2**(m + 1) carries into the exponent by itself
    mag = (k - emin).double() * 2**man_bits + n
    if fn:
        largest = (2**exp_bits - 1) * 2**man_bits + 2**man_bits - 2
        mag = torch.where(finite, mag.clamp(max=largest), largest)  # no inf: saturate
    else:
        inf = (2**exp_bits - 1) * 2**man_bits
        mag = torch.where(finite, mag.clamp(max=inf), inf)
    mag = mag.to(torch.int64)
    nan = (2**exp_bits - 1) * 2**man_bits + (2**man_bits - 1 if fn else 2 ** (man_bits - 1))
    return torch.where(x.isnan(), nan, mag) | sign
    ### END SOLUTION


def round_to(x: torch.Tensor, exp_bits: int, man_bits: int, fn: bool = False) -> torch.Tensor:
    """x (float64) rounded to the nearest value of the format: decode(encode(x))."""
    return decode(encode(x, exp_bits, man_bits, fn), exp_bits, man_bits, fn)


def stochastic_round(x: torch.Tensor, exp_bits: int, man_bits: int, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """x (float64, finite, within ± the format's max) rounded at random to one of the two format values around it.

    With lo <= x <= hi the neighbours (equal when x is a value of the format), the result is hi with probability
    (x - lo) / (hi - lo), else lo: its expected value is x. Draws its uniform numbers with torch.rand(...,
    generator=generator, dtype=torch.float64), one per element. Returns float64.
    """
    ### BEGIN SOLUTION ch09.stochastic_round (§9.2, 2 pts): spacing at |x|; floor to it; up with prob. (x - lo)/spacing
    x = x.to(torch.float64)
    emin = 2 - 2 ** (exp_bits - 1)
    _, e = torch.frexp(x.abs())
    spacing = torch.pow(2.0, (torch.clamp(e.to(torch.int64) - 1, min=emin) - man_bits).double())
    q = x / spacing
    lo = torch.floor(q)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (lo + (u < q - lo).double()) * spacing
    ### END SOLUTION


def memory_per_parameter(weight_dtype: torch.dtype, grad_dtype: torch.dtype, state_dtype: torch.dtype,
                         n_states: int = 2, master_dtype: torch.dtype | None = None) -> dict[str, int]:
    """Bytes per parameter that training keeps, by what holds them (activations not counted).

    weight_dtype: the model's weights; grad_dtype: their gradients; n_states tensors of the optimizer's state, each
    in state_dtype (AdamW: 2, its two moments; SGD with momentum: 1; plain SGD: 0); master_dtype: a separate
    master copy of the weights that the optimizer updates (None: the weights are their own master).
    Returns {"weights", "grads", "optimizer", "master", "total"}, ints (bytes per parameter).
    """
    ### BEGIN SOLUTION ch09.memory (§9.3, 2 pts): an element's size of each dtype (element_size / itemsize); add them up
    def size(dtype: torch.dtype | None) -> int:
        return 0 if dtype is None else dtype.itemsize

    out = {"weights": size(weight_dtype), "grads": size(grad_dtype), "optimizer": n_states * size(state_dtype),
           "master": size(master_dtype)}
    out["total"] = sum(out.values())
    return out
    ### END SOLUTION


# recipes of §9.3: the arguments of memory_per_parameter for AdamW training
RECIPES: dict[str, dict] = {
    "fp32": dict(weight_dtype=torch.float32, grad_dtype=torch.float32, state_dtype=torch.float32),
    "bf16 autocast (fp32 weights)": dict(weight_dtype=torch.float32, grad_dtype=torch.float32,
                                         state_dtype=torch.float32),
    "bf16 weights + fp32 master": dict(weight_dtype=torch.bfloat16, grad_dtype=torch.bfloat16,
                                       state_dtype=torch.float32, master_dtype=torch.float32),
    "pure bf16": dict(weight_dtype=torch.bfloat16, grad_dtype=torch.bfloat16, state_dtype=torch.bfloat16),
    "fp16 weights + fp32 master": dict(weight_dtype=torch.float16, grad_dtype=torch.float16,
                                       state_dtype=torch.float32, master_dtype=torch.float32),
    "FP8 matmuls (Float8Linear) + autocast": dict(weight_dtype=torch.float32, grad_dtype=torch.float32,
                                                  state_dtype=torch.float32),
}


class LossScaler:
    """Dynamic loss scaling for fp16 training, the rule of torch.amp.GradScaler.

    Multiply the loss by `scale` before backward (`scale_loss`), so that small gradients do not underflow in fp16;
    then `step(grads)` divides them back and says whether to take the optimizer step. A step whose gradients hold
    an inf or a NaN is skipped and the scale halved (backoff_factor); after growth_interval good steps in a row
    the scale doubles (growth_factor), to find again the largest scale that does not overflow.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0  # good steps in a row since the scale last changed

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """loss · scale, in float32: an fp16 loss times a scale beyond fp16's largest value would be inf."""
        return loss.float() * self.scale

    def step(self, grads: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The gradients of the scaled loss -> the true gradients (float32), or None: skip this step.

        grads: the gradients of scale_loss(loss) (any float dtype). If any element of any of them is inf or NaN,
        return None, multiply the scale by backoff_factor and restart the count of good steps. Otherwise return
        [g.float() / scale for g in grads] (divided by the scale used for this step), count one good step, and
        when the count reaches growth_interval multiply the scale by growth_factor and restart the count.
        """
        ### BEGIN SOLUTION ch09.loss_scaler (§9.4, 3 pts): any non-finite? skip + back off; else unscale, count, grow
        found_inf = any(not bool(torch.isfinite(g).all()) for g in grads)
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return None
        out = [g.float() / self.scale for g in grads]
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return out
        ### END SOLUTION


def fp8_quantize(x: torch.Tensor, dtype: torch.dtype = E4M3, amax: float | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x through an FP8 format with one scale for the whole tensor, and back: (x_fp8 / scale as float32, scale).

    scale = fmax / amax (fmax = torch.finfo(dtype).max), a 0-d float32 tensor; amax: the given one, or by default
    x's own max |x| ("current scaling"), at least 1e-12. The scaled x · scale (in float32) is clamped to
    [-fmax, fmax] (a given amax may be smaller than x's: those elements saturate, they never become inf or NaN),
    cast to dtype, cast back to float32 and divided by the scale.
    """
    ### BEGIN SOLUTION ch09.fp8_scale (§9.5, 2 pts): scale maps amax onto the format's max; scale, clamp, cast, back
    fmax = torch.finfo(dtype).max
    if amax is None:
        amax = x.detach().abs().amax()
    amax = torch.as_tensor(amax, dtype=torch.float32).clamp(min=1e-12)
    scale = fmax / amax
    x8 = (x.float() * scale).clamp(-fmax, fmax).to(dtype)
    return x8.float() / scale, scale
    ### END SOLUTION


class DelayedScaling:
    """FP8 with delayed scaling: the scale of a tensor comes from the amaxes of its last `history_len` steps.

    Current scaling must read the whole tensor (its amax) before it can cast it: one more pass over memory.
    Delayed scaling (Transformer Engine's default recipe) uses the largest amax recorded over the previous steps
    instead, and records this step's amax for the next ones, so the cast needs no extra pass; a sudden spike
    saturates for one step.
    """

    def __init__(self, history_len: int = 16, dtype: torch.dtype = E4M3) -> None:
        self.history_len, self.dtype = history_len, dtype
        self.history: list[float] = []  # the amaxes of the last history_len steps, oldest first

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_dq, scale) of fp8_quantize with amax = the max of the history (on the first call, with an empty
        history, x's own amax); then append x's amax (a float) to the history, keeping only the last
        history_len."""
        ### BEGIN SOLUTION ch09.amax_history (§9.5, 2 pts): amax of the history (empty: x's own); quantize; then record
        current = float(x.detach().abs().amax())
        amax = max(self.history) if self.history else current
        out = fp8_quantize(x, self.dtype, amax)
        self.history = (self.history + [current])[-self.history_len :]
        return out
        ### END SOLUTION
