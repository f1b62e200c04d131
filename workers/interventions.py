"""ActivScalar, SteerVec and DynScalar as torch modules, with a leading trial dimension.

Parameters are stacked over K trials so that K trials of one unit train in one batched
forward (batch K x B); each trial has its own nn.Parameter so that optimizers keep
per-trial state and learning rates. Hooks return new tensors, never mutate outputs in
place, and `installed` always removes them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import UsageError
from workers.sites import SiteRef

METHODS = ("activscalar", "steervec", "dynscalar")
FIXED_LENGTH_METHODS = ("activscalar", "steervec")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


class Intervention(nn.Module):
    """Base: K trials x (sites at several layers). Subclasses define `transform`."""

    method = ""

    def __init__(self, refs: list[SiteRef], n_trials: int):
        super().__init__()
        self.refs = refs
        self.n_trials = n_trials
        self.n_heads = refs[0].n_heads
        self.width = refs[0].width
        self.token_mask: torch.Tensor | None = None  # [K*B, T], 1 for real tokens (set by the trainer)

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        """[K*B, T, W] -> [K, B, T, W] or [K, B, T, H, W/H] for the head site."""
        k = self.n_trials
        shape = (k, h.shape[0] // k, h.shape[1])
        shape += (self.n_heads, self.width // self.n_heads) if self.n_heads else (self.width,)
        return h.reshape(shape)

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def minimality(self) -> torch.Tensor:  # [K]
        raise NotImplementedError

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        raise NotImplementedError

    # What a "site" is, the same for every method: one (layer, position[, head]) cell.
    moved_measure = ""  # how a cell's effect is measured (stored in the units table)

    def moved_threshold(self, settings) -> float:
        """A cell is moved when its effect is above this (TrainSettings holds both thresholds)."""
        return settings.active_threshold

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Trial k's (value, effect) per cell, each [L, T(, H)] on the CPU. `norms`: mean |h| per cell."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.trial_parameters(0))


def _stacked(params: nn.ParameterList) -> torch.Tensor:
    return torch.stack(list(params))


class ActivScalar(Intervention):
    """h <- alpha * h, one alpha per (layer, position[, head]), initialised to 1."""

    method = "activscalar"

    def __init__(self, refs: list[SiteRef], n_trials: int, n_positions: int):
        super().__init__(refs, n_trials)
        shape = (len(refs), n_positions) + ((self.n_heads,) if self.n_heads else ())
        self.alphas = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(n_trials)])

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        x = self._split(h)
        alpha = _stacked(self.alphas)[:, index].to(x.dtype)  # [K, T(, H)]
        alpha = alpha[:, None, :, None] if not self.n_heads else alpha[:, None, :, :, None]
        return (x * alpha).reshape(h.shape)

    def minimality(self) -> torch.Tensor:
        return (_stacked(self.alphas) - 1).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.alphas[k]]

    moved_measure = "|alpha-1|"

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alphas[k].detach().cpu()  # [L, T(, H)]
        return alpha, (alpha - 1).abs()


class SteerVec(Intervention):
    """h <- h + v, one vector per (layer, position), initialised to 0."""

    method = "steervec"

    def __init__(self, refs: list[SiteRef], n_trials: int, n_positions: int):
        super().__init__(refs, n_trials)
        shape = (len(refs), n_positions, self.width)
        self.vectors = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(n_trials)])

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        k = self.n_trials
        x = h.reshape(k, h.shape[0] // k, h.shape[1], h.shape[2])
        v = _stacked(self.vectors)[:, index].to(x.dtype)  # [K, T, W]
        return (x + v[:, None]).reshape(h.shape)

    def minimality(self) -> torch.Tensor:
        return _stacked(self.vectors).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.vectors[k]]

    moved_measure = "|v|/mean|h|"

    def moved_threshold(self, settings) -> float:
        return settings.steer_threshold

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Value: |v| per cell (per head's slice for the head site); effect: |v| / mean |h| there."""
        v = self.vectors[k].detach().cpu()  # [L, T, W]
        if self.n_heads:
            v = v.reshape(v.shape[0], v.shape[1], self.n_heads, -1)  # [L, T, H, W/H]
        value = v.norm(dim=-1)  # [L, T(, H)]
        assert norms is not None, "SteerVec needs the mean |h| per cell"
        return value, value / norms.clamp_min(1e-6)


class DynScalar(Intervention):
    """h <- alpha_l(h) * h, alpha_l(h) = 1 + w_l . h/|h| + b_l: works for prompts of any length.

    Minimality is the mean over prompts of the sum of |alpha - 1| over layers and real
    tokens, accumulated during the forward (see `minimality`).
    """

    method = "dynscalar"

    def __init__(self, refs: list[SiteRef], n_trials: int):
        super().__init__(refs, n_trials)
        head = (self.n_heads,) if self.n_heads else ()
        w_shape = (len(refs),) + head + ((self.width // self.n_heads,) if self.n_heads else (self.width,))
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(w_shape)) for _ in range(n_trials)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros((len(refs),) + head)) for _ in range(n_trials)])
        self._l1_terms: list[torch.Tensor] = []
        # While set (evaluation on val): layer index -> (sum alpha, sum |alpha-1|) [K, T(, H)] and
        # real-token count [K, T] per position, over prompts padded to `record_len` positions.
        self.record: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self.record_len = 0

    def alpha(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, T(, H), W] -> alpha [K, B, T(, H)]."""
        w = _stacked(self.weights)[:, index].to(x.dtype)
        b = _stacked(self.biases)[:, index].to(x.dtype)
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        if self.n_heads:
            dot = torch.einsum("kbthd,khd->kbth", unit, w)
            return 1 + dot + b[:, None, None, :]
        return 1 + torch.einsum("kbtd,kd->kbt", unit, w) + b[:, None, None]

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        x = self._split(h)
        alpha = self.alpha(index, x)
        k, bsz, t = x.shape[:3]
        mask = self.token_mask.reshape(k, bsz, -1)[:, :, :t].to(x.dtype) if self.token_mask is not None \
            else torch.ones(k, bsz, t, dtype=x.dtype, device=x.device)
        dev = (alpha - 1).abs()
        m = mask[..., None] if self.n_heads else mask  # [K, B, T(, 1)]
        dev_real = dev * m
        self._l1_terms.append(dev_real.flatten(2).sum(2).mean(1))  # [K]: mean over prompts
        if self.record is not None:
            self._record(index, (alpha * m).sum(1).detach().float(), dev_real.sum(1).detach().float(),
                         mask.sum(1).detach().float())
        scale = alpha[..., None]
        return (x * scale).reshape(h.shape)

    def _record(self, index: int, alpha_sum: torch.Tensor, dev_sum: torch.Tensor, count: torch.Tensor) -> None:
        pad = self.record_len - count.shape[1]
        widths = (0, 0, 0, pad) if self.n_heads else (0, pad)
        new = (F.pad(alpha_sum, widths), F.pad(dev_sum, widths), F.pad(count, (0, pad)))
        old = self.record.get(index)
        self.record[index] = new if old is None else tuple(a + b for a, b in zip(old, new))

    moved_measure = "mean |alpha-1| over val tokens"

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha and mean |alpha-1| over the recorded (val) tokens at each (layer, position[, head])."""
        assert self.record, "DynScalar cells need a recorded evaluation"
        values, effects = [], []
        for j in range(len(self.refs)):
            alpha_sum, dev_sum, count = (x[k].cpu() for x in self.record[j])
            c = count.clamp_min(1)[:, None] if self.n_heads else count.clamp_min(1)
            values.append(alpha_sum / c)
            effects.append(dev_sum / c)
        return torch.stack(values), torch.stack(effects)  # [L, T(, H)]

    def minimality(self) -> torch.Tensor:
        """Sum of the terms gathered since the last call (one forward), then reset."""
        if not self._l1_terms:
            return torch.zeros(self.n_trials)
        total = torch.stack(self._l1_terms).sum(0)
        self._l1_terms = []
        return total

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.weights[k], self.biases[k]]


METHOD_CLASSES: dict[str, type[Intervention]] = {"activscalar": ActivScalar, "steervec": SteerVec,
                                                  "dynscalar": DynScalar}


def moved_rule(method: str, settings) -> tuple[str, float]:
    """(how a cell's effect is measured, the threshold above which it counts as moved) for a method."""
    check_method(method)
    cls = METHOD_CLASSES[method]
    return cls.moved_measure, cls.moved_threshold(cls, settings)


def build_intervention(method: str, refs: list[SiteRef], n_trials: int, n_positions: int | None) -> Intervention:
    check_method(method)
    if method == "dynscalar":
        return DynScalar(refs, n_trials)
    if n_positions is None:
        raise UsageError(f"method {method!r} needs prompts of one token length")
    if method == "steervec":
        return SteerVec(refs, n_trials, n_positions)
    return ActivScalar(refs, n_trials, n_positions)


def _output_hook(intervention: Intervention, index: int):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (intervention.transform(index, output[0]),) + tuple(output[1:])
        return intervention.transform(index, output)
    return hook


def _input_hook(intervention: Intervention, index: int):
    def hook(module, args):
        return (intervention.transform(index, args[0]),) + tuple(args[1:])
    return hook


@contextmanager
def installed(intervention: Intervention) -> Iterator[Intervention]:
    """Install the intervention's hooks for the duration of the block; always remove them."""
    handles = []
    try:
        for index, ref in enumerate(intervention.refs):
            if ref.hook_on_input:
                handles.append(ref.module.register_forward_pre_hook(_input_hook(intervention, index)))
            else:
                handles.append(ref.module.register_forward_hook(_output_hook(intervention, index)))
        yield intervention
    finally:
        for handle in handles:
            handle.remove()
