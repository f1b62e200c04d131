"""What an intervention does on a split: the one scoring function (`score`), used by training's
evaluation, the stopping rule's checks, the analysis' curves, tests and benches.

`score` runs K trials (or K curve points) in batched forwards of the split's prompts, and returns
per-trial metrics [K] (docs/architecture.md, Definitions) and per-prompt LD' and kl_other [K, N].
Evaluation scores on the fp32 model against its logits; the stopping rule scores the check slice on
the training model against that model's own logits (`own=True`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.forward import attention_mask, last_token_logits, start_at_layer
from workers.interventions import Acting, CellRecorder, ForwardContext, Installed, installed
from workers.models import LoadedModel
from workers.objective import flipped, kl_other_per_prompt, logit_diff, mass_shift_per_prompt, normalised_shift
from workers.prepare import SplitData
from workers.sites import SiteRef, hooked


def intervened_logits(loaded: LoadedModel, hooks: Installed, ids: torch.Tensor, lengths: torch.Tensor,
                      first_layer: int = 0, prefix: torch.Tensor | None = None,
                      token_columns: torch.Tensor | None = None, recorder: CellRecorder | None = None,
                      token_roles: torch.Tensor | None = None) -> tuple[torch.Tensor, ForwardContext]:
    """Intervened last-position logits [K*B, V] and the forward's context (what `minimality` reads);
    with a prefix cache (`prefix`: the states entering `first_layer`), only the layers from there run.
    token_roles: [K*B, T] each token's role index (`SplitData.roles`), for a method with `needs_roles`."""
    ctx = ForwardContext(attention_mask(ids, lengths).to(loaded.device), token_columns, recorder,
                         token_roles=token_roles.to(loaded.device) if token_roles is not None else None)
    with hooks.forward(ctx):
        if prefix is None:
            return last_token_logits(loaded, ids, lengths), ctx
        with start_at_layer(loaded, first_layer, prefix[:, : ids.shape[1]]):
            return last_token_logits(loaded, ids, lengths), ctx


def is_top1(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Whether `ids` ([...]) is the top-1 token of the whole vocabulary under `logits` ([..., V]): `top1_b` is its
    share over prompts with ids = answer b (a tie counts for the lowest token id, as argmax breaks it)."""
    return logits.argmax(-1) == ids


@dataclass
class Scores:
    """What K trials do on a split of N prompts."""

    metrics: dict[str, torch.Tensor]  # workers.results.METRIC_NAMES -> [K]
    ld_after: torch.Tensor  # [K, N] LD'
    kl_other: torch.Tensor  # [K, N] KL on the other tokens
    ld_before: torch.Tensor  # [N] LD of the reference logits
    minimality: list[torch.Tensor]  # each forward's minimality term [K], in the order the forwards ran


def score(loaded: LoadedModel, acting: Acting, refs: list[SiteRef], split: SplitData, *, first_layer: int = 0,
          batch_rows: int | None = None, own: bool = False, token_columns: torch.Tensor | None = None,
          recorder: CellRecorder | None = None) -> Scores:
    """Score the K trials of `acting`, hooked on `refs` (the sites of `loaded`'s model), on `split`.

    batch_rows: rows (trials x prompts) per forward, None: the whole split in one forward.
    own: compare against the model's own unintervened logits (`SplitData.reference_logits`: the
    training model's, under bf16) instead of the fp32 model's.
    token_columns: each token's cell column ([N, T], like the split's ids), for a method or composition
    that acts per cell; with `recorder`, a method whose cells depend on the activation records them.
    `l1` is the minimality term averaged over the split's prompts (a constant for position-tied methods)."""
    k = acting.n_trials
    chunk = len(split) if batch_rows is None else max(1, batch_rows // k)
    reference = split.reference_logits if own else split.logits  # [N, V]
    ld_before = logit_diff(reference, split.a_ids, split.b_ids)  # [N]
    ld_after, kl, mass, top1_b, terms, l1 = [], [], [], [], [], torch.zeros(k)
    with torch.no_grad(), installed(acting, refs) as hooks:
        for i in range(0, len(split), chunk):
            sl = slice(i, i + chunk)
            n = split.ids[sl].shape[0]
            lengths = split.lengths[sl].repeat(k)
            ids = split.ids[sl].repeat(k, 1)[:, : int(lengths.max())]
            columns = roles = None
            if token_columns is not None:
                columns = token_columns[sl].repeat(k, 1)[:, : ids.shape[1]].to(loaded.device)  # [K*n, T]
            if split.roles is not None:
                roles = split.roles[sl].repeat(k, 1)[:, : ids.shape[1]]  # [K*n, T]
            prefix = split.prefix[sl].repeat(k, 1, 1) if split.prefix is not None else None
            logits, ctx = intervened_logits(loaded, hooks, ids, lengths, first_layer, prefix, columns, recorder, roles)
            after = logits.reshape(k, n, -1).cpu()  # [K, n, V]
            before = reference[sl].expand(k, -1, -1)
            a, b = split.a_ids[sl].expand(k, -1), split.b_ids[sl].expand(k, -1)
            ld_after.append(logit_diff(after, a, b))
            kl.append(kl_other_per_prompt(before, after, a, b))
            mass.append(mass_shift_per_prompt(before, after, a, b))
            top1_b.append(is_top1(after, b))  # [K, n]
            term = acting.minimality(ctx).detach()  # [K]
            terms.append(term)
            l1 += term.cpu() * n / len(split)
    ld_after_t = torch.cat(ld_after, dim=1)  # [K, N]
    kl_t = torch.cat(kl, dim=1)  # [K, N]
    metrics = {
        "flip_rate": flipped(ld_after_t, ld_before[None]).float().mean(1),
        "ld_before": ld_before.mean().expand(k),
        "ld_after": ld_after_t.mean(1),
        "kl_other": kl_t.mean(1),
        "mass_shift": torch.cat(mass, dim=1).mean(1),
        "l1": l1,
        "ld_shift": normalised_shift(ld_after_t, ld_before[None]).nanmean(1),  # a prompt with LD = 0: no shift to take
        "top1_b": torch.cat(top1_b, dim=1).float().mean(1),
    }
    return Scores(metrics, ld_after_t, kl_t, ld_before, terms)


def site_norms(loaded: LoadedModel, refs: list[SiteRef], split: SplitData, chunk: int) -> torch.Tensor:
    """Mean |h| per cell at the site over a split's prompts, unintervened: [L, T], or [L, T, H] per
    head's slice (what SteerVec's effect is relative to)."""
    sums = [0.0] * len(refs)
    n_heads = refs[0].n_heads

    def record(index: int, h: torch.Tensor) -> None:
        h = h.detach().float()  # [B, T, W]
        if n_heads:
            h = h.reshape(h.shape[0], h.shape[1], n_heads, -1)  # [B, T, H, W/H]
        sums[index] = sums[index] + h.norm(dim=-1).sum(0).cpu()

    with torch.no_grad(), hooked(refs, record):
        for i in range(0, len(split), chunk):
            last_token_logits(loaded, split.ids[i:i + chunk], split.lengths[i:i + chunk])
    return torch.stack(sums) / len(split)
