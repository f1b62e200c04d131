"""The proximal L1 step (`train.l1: proximal`): after each optimizer step, soft-threshold a trial's values
toward identity instead of putting the L1 subgradient in the loss.

With the subgradient and Adam, a cell the objective does not need is never exactly at identity: Adam
normalises every gradient, so the L1 term's sign(alpha - 1) makes it jitter around identity by about lr,
and "moved" (|alpha - 1| > 0.1) partly measures that jitter. The proximal step of lambda_M |x - identity|
is the soft threshold x <- identity + sign(x - identity) max(|x - identity| - amount, 0), which leaves a
value exactly at identity unless the rest of the objective pushes it out further than `amount`.

The amount is lr * lambda_min per element, in the step size Adam gave that element: Adam moved element
i by lr m_i / (sqrt(v_i) + eps), so its step size is s_i = lr / (sqrt(v_i) + eps) and its proximal
threshold s_i * lambda_min (the proximal step of the preconditioned problem; with plain SGD, s_i = lr and
the amount is lr * lambda_min exactly). So a cell leaves identity only when its (averaged) gradient
exceeds lambda_min, the same condition as for L1 with plain gradient descent; with a uniform amount of
lr * lambda_min, Adam's first step (of size lr whatever the gradient) would move every cell that has any
gradient at all.
"""
from __future__ import annotations

import torch


def step_sizes(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Per element of each parameter, the step size its last optimizer step used: lr / (sqrt(v_hat) + eps)
    for Adam (v_hat: its bias-corrected second moment), lr for an optimizer without a second moment."""
    sizes = []
    for p in params:
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            sizes.append(torch.full_like(p, float(group["lr"])))
            continue
        step = float(state["step"])
        bias_correction2 = 1 - group["betas"][1] ** step
        denom = (state["exp_avg_sq"] / bias_correction2).sqrt() + group["eps"]  # as torch's Adam computes it
        sizes.append(group["lr"] / denom)
    return sizes


def soft_threshold(x: torch.Tensor, identity: float, amount: torch.Tensor | float) -> torch.Tensor:
    """identity + sign(x - identity) max(|x - identity| - amount, 0): exactly `identity` where the distance
    is within amount."""
    distance = x - identity
    kept = (distance.abs() - amount).clamp_min(0)
    return torch.where(kept > 0, identity + distance.sign() * kept, torch.full_like(x, identity))
