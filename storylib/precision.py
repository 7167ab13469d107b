"""Chapter 9 — precision: training matmuls in 8-bit floating point (FP8), the trainer's fastest path on Hopper.

An H100 multiplies float8 matrices at twice its bf16 rate. Two 8-bit formats (Micikevicius et al. 2022, "FP8
Formats for Deep Learning"):

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
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
