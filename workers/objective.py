"""The loss terms and metrics (docs/architecture.md, Definitions), on last-position logits.

All functions take tensors with any leading dimensions (e.g. [K, B, V] for K trials)
and reduce over the prompt dimension (the one before the vocabulary), so one call scores
every trial of a batched forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_diff(logits: torch.Tensor, a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    """LD = z_a - z_b; logits [..., N, V], ids [..., N] -> [..., N]."""
    za = logits.gather(-1, a_ids.unsqueeze(-1)).squeeze(-1)
    zb = logits.gather(-1, b_ids.unsqueeze(-1)).squeeze(-1)
    return za - zb


def effectiveness_per_prompt(ld_after: torch.Tensor, ld_before: torch.Tensor) -> torch.Tensor:
    """BCE between sigma(LD') and the swapped target sigma(-LD)."""
    target = torch.sigmoid(-ld_before)
    return F.binary_cross_entropy_with_logits(ld_after, target, reduction="none")


def kl_other_per_prompt(logits_before: torch.Tensor, logits_after: torch.Tensor,
                        a_ids: torch.Tensor, b_ids: torch.Tensor) -> torch.Tensor:
    """KL(p~ || p~') with p~, p~' renormalised over every token except a and b."""
    mask = torch.zeros_like(logits_after, dtype=torch.bool)
    mask.scatter_(-1, a_ids.unsqueeze(-1), True)
    mask.scatter_(-1, b_ids.unsqueeze(-1), True)
    neg = torch.finfo(logits_after.dtype).min
    lp = torch.log_softmax(logits_before.masked_fill(mask, neg), dim=-1)
    lq = torch.log_softmax(logits_after.masked_fill(mask, neg), dim=-1)
    terms = torch.where(mask, torch.zeros_like(lp), lp.exp() * (lp - lq))
    return terms.sum(-1).clamp_min(0.0)


def flipped(ld_after: torch.Tensor, ld_before: torch.Tensor) -> torch.Tensor:
    """True where the intervention changed which answer the model prefers: sign(LD') != sign(LD).

    LD = 0 counts as preferring b, on both sides. Not "LD' < 0": with `filter: none` a prompt
    the model already got "wrong" (LD < 0) would otherwise count as flipped without any change.
    """
    return (ld_after > 0) != (ld_before > 0)


def normalised_shift(ld_after: torch.Tensor, ld_before: torch.Tensor) -> torch.Tensor:
    """(LD - LD') / (2 LD) per prompt: 1 when the intervention swaps the preference exactly (LD' = -LD, the
    objective's target), 0 when it changes nothing; unlike the flip it does not saturate at the sign change.
    A prompt with LD = 0 has no preference to swap: NaN there."""
    return (ld_before - ld_after) / (2 * ld_before)


def mass_shift_per_prompt(logits_before, logits_after, a_ids, b_ids) -> torch.Tensor:
    def mass(logits):
        p = torch.softmax(logits, dim=-1)
        return p.gather(-1, a_ids.unsqueeze(-1)).squeeze(-1) + p.gather(-1, b_ids.unsqueeze(-1)).squeeze(-1)
    return (mass(logits_after) - mass(logits_before)).abs()


def objective(logits_before, logits_after, a_ids, b_ids, minimality: torch.Tensor,
              lambda_faith: torch.Tensor, lambda_min: torch.Tensor, lambda_eff: float | torch.Tensor = 1.0):
    """lambda_E*E + lambda_F*F + lambda_M*M per trial; returns (loss [K], parts dict)."""
    ld_before = logit_diff(logits_before, a_ids, b_ids)
    ld_after = logit_diff(logits_after, a_ids, b_ids)
    kl = kl_other_per_prompt(logits_before, logits_after, a_ids, b_ids)
    return objective_from(ld_before, ld_after, kl, minimality, lambda_faith, lambda_min, lambda_eff)


def objective_from(ld_before: torch.Tensor, ld_after: torch.Tensor, kl_other: torch.Tensor, minimality: torch.Tensor,
                   lambda_faith: torch.Tensor, lambda_min: torch.Tensor, lambda_eff: float | torch.Tensor = 1.0):
    """The objective from what a forward was scored by (workers/scoring.py): LD, LD' and the KL on
    other tokens per prompt ([K, N] each) and the minimality term [K]; returns (loss [K], parts dict)."""
    e = effectiveness_per_prompt(ld_after, ld_before).mean(-1)
    f = kl_other.mean(-1)
    loss = lambda_eff * e + lambda_faith * f + lambda_min * minimality
    return loss, {"E": e.detach(), "F": f.detach(), "M": minimality.detach()}
