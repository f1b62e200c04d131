"""The difference-in-means direction of a split (method `diffmeans`, `Setup.direction`).

Per cell (layer, position) at the unit's site: v = mean over the split's prompts that have a
counterfactual of h(counterfactual) - h(prompt), both unintervened. The counterfactual prompt has the
prompt's template and token length and its expected answer is b (`Example.counterfactual`), so position
i of one is position i of the other and v points from "answer a" to "answer b" at every cell.

One function, taking the split the trials train on: a unit trained on several folds calls it once
per fold's train split.
"""
from __future__ import annotations

import torch

from workers.errors import UsageError
from workers.forward import last_token_logits
from workers.models import LoadedModel
from workers.prepare import SplitData
from workers.sites import SiteRef, hooked


def _site_activations(loaded: LoadedModel, refs: list[SiteRef], ids: torch.Tensor,
                      lengths: torch.Tensor) -> list[torch.Tensor]:
    """One forward, unintervened: the activation at each site, L x [B, T, W] (fp32)."""
    found: list[torch.Tensor] = [torch.empty(0)] * len(refs)

    def record(index: int, h: torch.Tensor) -> None:
        found[index] = h.detach().float()  # [B, T, W]

    with torch.no_grad(), hooked(refs, record):
        last_token_logits(loaded, ids, lengths)
    return found


def mean_difference(loaded: LoadedModel, refs: list[SiteRef], split: SplitData, chunk: int, task: str,
                    model: str) -> torch.Tensor:
    """[L, T, W] the mean over the split's prompts with a counterfactual of h(counterfactual) - h(prompt) at
    each cell; a clear error when the split has no counterfactual prompt."""
    has = split.has_counterfactual  # [N]
    if not bool(has.any()):
        raise UsageError(f"method 'diffmeans' needs counterfactual prompts, and task {task!r} has none of the "
                         f"prompts' token length for model {model!r} in its train split (the field "
                         "'counterfactual' of each example: the same template, answer b; a JSONL task's line "
                         "gives it as \"counterfactual\")")
    lengths = split.lengths[has]  # [N']
    prompts = split.ids[has]  # [N', T]
    counterfactuals = split.counterfactual_ids(loaded.tokenizer.pad_token_id)[has]  # [N', T]
    sums: list[torch.Tensor] = [torch.zeros(())] * len(refs)
    for i in range(0, len(prompts), chunk):
        part = slice(i, i + chunk)
        h = _site_activations(loaded, refs, prompts[part], lengths[part])
        h_cf = _site_activations(loaded, refs, counterfactuals[part], lengths[part])
        sums = [total + (b - a).sum(0) for total, a, b in zip(sums, h, h_cf)]  # L x [T, W]
    return torch.stack(sums).cpu() / len(prompts)  # [L, T, W]
