"""Training restricted to a cell mask (retrained mask controls, orchestrator/controls.py).

A trial whose `Hyper.mask_cells` is set trains with only those cells free: the forward applies the
method only at the tokens (and heads) of its kept cells (`interventions.only_cells`, the per-token
`torch.where` the analysis uses), and a gradient hook zeroes the gradient of every parameter element
outside the mask, so those elements never leave their initial value, the identity (Adam moves no
element whose gradient was always 0; the proximal step leaves identity where it is). So outside the
mask the trained intervention is exactly the identity, its minimality counts only masked cells, and
the stored trial, its cells and its scores are those of the masked intervention.

Only methods whose parameters span the cell grid (layer, position[, head]) can be masked
(`workers.names.MASKABLE_METHODS`): a fixed-length method, whose token columns are positions.
"""
from __future__ import annotations

import torch

from workers.errors import UsageError
from workers.interventions import ForwardContext, Intervention, only_cells
from workers.names import MASKABLE_METHODS
from workers.unit import Hyper


def keep_grid(hypers: list[Hyper], layers: list[int], n_positions: int, n_heads: int | None) -> torch.Tensor | None:
    """[K, L, T(, H)] bool: the cells each trial may move (a trial without a mask: all), or None when no trial has
    a mask. A cell is (layer, position, head) with the layer's number and head -1 off the head site."""
    if all(h.mask_cells is None for h in hypers):
        return None
    shape = (len(hypers), len(layers), n_positions) + ((n_heads,) if n_heads else ())
    keep = torch.ones(shape, dtype=torch.bool)
    for k, h in enumerate(hypers):
        if h.mask_cells is None:
            continue
        keep[k] = False
        for layer, position, head in h.mask_cells:
            if layer not in layers or not 0 <= position < n_positions or (n_heads and not 0 <= head < n_heads):
                raise UsageError(f"mask {h.mask!r}: cell (layer {layer}, position {position}, head {head}) is not "
                                 f"in the unit's grid (layers {layers}, {n_positions} positions"
                                 + (f", {n_heads} heads)" if n_heads else ")"))
            at = (k, layers.index(layer), position) + ((head,) if n_heads else ())
            keep[at] = True
    return keep


def hold_outside(intervention: Intervention, keep: torch.Tensor) -> None:
    """Zero the gradient of every parameter element outside trial k's mask (keep: [K, L, T(, H)]), for each k."""
    if intervention.method not in MASKABLE_METHODS:
        raise UsageError(f"method {intervention.method!r} cannot be trained on a cell mask; accepted: "
                         f"{', '.join(MASKABLE_METHODS)}")
    for k in range(keep.shape[0]):
        grid = keep[k]
        for p in intervention.trial_parameters(k):
            if tuple(p.shape[:grid.dim()]) != tuple(grid.shape):
                raise UsageError(f"method {intervention.method!r}: a parameter of shape {tuple(p.shape)} does not "
                                 f"span the cell grid {tuple(grid.shape)}; it cannot be masked")
            factor = grid.reshape(grid.shape + (1,) * (p.dim() - grid.dim())).to(p.device, p.dtype)
            p.register_hook(lambda g, f=factor: g * f)


class MaskedTraining:
    """The intervention acting only at its trials' kept cells (an `interventions.Acting`), for the training
    forward. `keep`: [K', L, T(, H)] for the trials in the forward now, in their order."""

    def __init__(self, intervention: Intervention, keep: torch.Tensor):
        self.inner = intervention
        self.keep = keep
        self.refs = intervention.refs
        self.n_trials = intervention.n_trials
        self.n_heads = intervention.refs[0].n_heads

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        changed = self.inner.transform(index, h, ctx)  # [K*B, T, W]
        k = self.n_trials
        shape = (k, h.shape[0] // k) + h.shape[1:]
        columns = torch.arange(h.shape[1], device=h.device).expand(shape[1], h.shape[1])  # [B, T]: a column is a position
        out = [only_cells(x, c, self.keep[j, index], columns, self.n_heads)
               for j, (x, c) in enumerate(zip(h.reshape(shape).unbind(0), changed.reshape(shape).unbind(0)))]
        return torch.cat(out)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return self.inner.minimality(ctx)  # outside the mask every value is identity: only masked cells count
