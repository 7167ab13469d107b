"""storylib.optim.update, the training step Chapter 17's picture models share: against the same step written out
with PyTorch's own clipping, on a model with a frozen part (no gradient) and gradients left over from before."""

import copy

import torch

from storylib.optim import AdamW, param_groups, update


def test_update_is_zero_grad_backward_clip_step_at_the_given_lr():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
    model[0].bias.requires_grad_(False)
    twin = copy.deepcopy(model)
    opt, opt2 = (AdamW(param_groups(m, 0.1), lr=1.0, betas=(0.9, 0.95)) for m in (model, twin))
    x = torch.randn(9, 5, dtype=torch.float32) * 3
    for lr in (3e-2, 1e-2, 5e-3):
        for p in model.parameters():  # stale gradients: update must start from fresh ones
            if p.requires_grad:
                p.grad = torch.full_like(p, 7.0)
        norm = update(opt, model(x).pow(2).mean(), lr, grad_clip=0.5)
        opt2.zero_grad(set_to_none=True)
        twin(x).pow(2).mean().backward()
        want = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        for g in opt2.param_groups:
            g["lr"] = lr
        opt2.step()
        assert all(g["lr"] == lr for g in opt.param_groups)
        torch.testing.assert_close(norm, want)
        assert want > 0.5, "the gradients were large enough to be clipped"
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
