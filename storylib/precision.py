"""Chapter 9 — the trainer's fast paths: matmuls in 8-bit floating point (FP8), and the loss without its logits.

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
