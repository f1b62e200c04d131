"""Train K trials of one unit in one batched forward and score them on val and test.

Each trial has its own parameters, optimizer, learning rate, regularisation weights,
step count and batch order, so a batched run gives the same results as running the
trials one by one; the forward just sees a batch of K x B prompts.
"""
from __future__ import annotations

import math
import time

import torch

from workers.columns import CellColumn
from workers.forward import attention_mask, last_token_logits, start_at_layer
from workers.interventions import Intervention, build_intervention, installed, method_class
from workers.models import LoadedModel
from workers.objective import flipped, kl_other_per_prompt, logit_diff, mass_shift_per_prompt, objective
from workers.precision import evaluation_model, training_model
from workers.prepare import PreparedUnit, SplitData
from workers.results import METRIC_NAMES, TrialResult
from workers.sites import SiteRef, hooked, resolve_site
from workers.stopping import TrialStopper
from workers.unit import Hyper


def site_norms(loaded: LoadedModel, refs: list[SiteRef], split: SplitData, chunk: int) -> torch.Tensor:
    """Mean |h| per cell at the site over a split's prompts: [L, T], or [L, T, H] per head's slice."""
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


class _Batches:
    """Per-trial shuffled epochs over the train split, from the trial's own seed.

    With `resample`, the epochs run over a bootstrap resample of the train split (drawn once
    from the same seed): a replicate that also varies the training data."""

    def __init__(self, n: int, batch: int, seed: int, resample: bool = False):
        self.n, self.batch = n, min(batch, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.pool = torch.randint(n, (n,), generator=self.gen) if resample else torch.arange(n)
        self.order = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.order = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        out = self.pool[self.order[self.pos:self.pos + self.batch]]
        self.pos += self.batch
        return out


def _forward(loaded: LoadedModel, intervention: Intervention, ids: torch.Tensor, lengths: torch.Tensor,
             first_layer: int = 0, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Intervened last-position logits; with a prefix cache, only layers from first_layer run."""
    intervention.token_mask = attention_mask(ids, lengths).to(loaded.device)
    intervention.begin_forward()
    if prefix is None:
        return last_token_logits(loaded, ids, lengths)
    with start_at_layer(loaded, first_layer, prefix[:, : ids.shape[1]]):
        return last_token_logits(loaded, ids, lengths)


def _train_group(loaded: LoadedModel, unit: PreparedUnit, hypers: list[Hyper], refs: list[SiteRef],
                 outcomes: list[TrialResult]) -> tuple[Intervention, int]:
    """Train trials that share a batch size together; fills steps/status of `outcomes`.
    A trial that ends (its steps done, a non-finite loss, early stopping, pruning) leaves the
    batched forward. Returns the trained intervention (all trials back in) and the number of
    real tokens it processed."""
    k = len(hypers)
    train = unit.splits["train"]
    intervention = build_intervention(unit.spec.method, refs, k, unit.n_positions).to(loaded.device)
    optimizers = [torch.optim.Adam(intervention.trial_parameters(i), lr=h.lr) for i, h in enumerate(hypers)]
    steps = [h.steps or unit.spec.settings.steps for h in hypers]
    batch = hypers[0].batch_size or unit.spec.settings.batch_size
    batches = [_Batches(len(train), batch, h.seed, h.resample_train) for h in hypers]
    lam_f = torch.tensor([h.lambda_faith for h in hypers], device=loaded.device)
    lam_m = torch.tensor([h.lambda_min for h in hypers], device=loaded.device)
    stopper = TrialStopper(unit, hypers, steps, outcomes) if TrialStopper.wanted(unit) else None

    def forward(ids: torch.Tensor, lengths: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        return _forward(loaded, intervention, ids, lengths, unit.first_layer, prefix)

    live = list(range(k))
    tokens = 0
    with installed(intervention):
        for step in range(max(steps)):
            live = [i for i in live if step < steps[i]]
            if stopper is not None and live and stopper.due(step):
                intervention.keep_trials(live)
                live = stopper.check(intervention, live, step, forward)
            if not live:
                break
            intervention.keep_trials(live)
            idx = torch.stack([batches[i].next() for i in live])  # [K', B]
            flat = idx.flatten()
            lengths = train.lengths[flat]
            ids = train.ids[flat][:, : int(lengths.max())]
            prefix = train.prefix[flat] if train.prefix is not None else None
            logits = forward(ids, lengths, prefix).reshape(len(live), idx.shape[1], -1)  # [K', B, V]
            before = train.reference_logits[idx].to(loaded.device)
            a, b = train.a_ids[idx].to(loaded.device), train.b_ids[idx].to(loaded.device)
            loss, _ = objective(before, logits, a, b, intervention.minimality(), lam_f[live], lam_m[live])
            finite = [math.isfinite(float(x)) for x in loss.detach()]
            for j, i in enumerate(live):
                if not finite[j]:
                    outcomes[i].fail(f"loss is not finite ({float(loss[j].detach())}) at step {step}")
            for i in live:
                optimizers[i].zero_grad(set_to_none=True)
            mask = torch.tensor(finite, device=loaded.device, dtype=loss.dtype)
            (torch.nan_to_num(loss) * mask).sum().backward()
            for j, i in enumerate(live):
                if finite[j]:
                    optimizers[i].step()
                    outcomes[i].steps = step + 1
            live = [i for j, i in enumerate(live) if finite[j]]
            tokens += int(lengths.sum())
    intervention.keep_trials(None)
    return intervention, tokens


def _evaluate(loaded: LoadedModel, unit: PreparedUnit, intervention: Intervention, refs: list[SiteRef],
              split: SplitData, columns: tuple[list[CellColumn], torch.Tensor] | None = None,
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Per-trial metrics [K], and per-prompt ld_after and kl_other [K, N], on a split, with the
    intervention hooked on `refs` (the fp32 model's sites, whatever the training precision).
    With `columns` (the split's cell columns and each token's column, [N, T]), a method whose cells
    depend on the activation (DynScalar) records them on this split.
    l1 is the minimality term averaged over the split's prompts (a constant for position-tied methods)."""
    k = intervention.n_trials
    chunk = max(1, unit.spec.settings.eval_batch // k)
    ld_after, kl, mass, l1 = [], [], [], torch.zeros(k)
    intervention.record_cells(len(columns[0]) if columns is not None else None)
    with torch.no_grad(), installed(intervention, refs):
        for i in range(0, len(split), chunk):
            sl = slice(i, i + chunk)
            n = split.ids[sl].shape[0]
            lengths = split.lengths[sl].repeat(k)
            ids = split.ids[sl].repeat(k, 1)[:, : int(lengths.max())]
            if columns is not None:
                intervention.token_columns = columns[1][sl].repeat(k, 1)[:, : ids.shape[1]].to(loaded.device)
            prefix = split.prefix[sl].repeat(k, 1, 1) if split.prefix is not None else None
            after = _forward(loaded, intervention, ids, lengths, unit.first_layer, prefix).reshape(k, n, -1).cpu()
            before = split.logits[sl].expand(k, -1, -1)
            a, b = split.a_ids[sl].expand(k, -1), split.b_ids[sl].expand(k, -1)
            ld_after.append(logit_diff(after, a, b))
            kl.append(kl_other_per_prompt(before, after, a, b))
            mass.append(mass_shift_per_prompt(before, after, a, b))
            l1 += intervention.minimality().detach().cpu() * n / len(split)
    ld_after_t = torch.cat(ld_after, dim=1)  # [K, N]
    kl_t = torch.cat(kl, dim=1)  # [K, N]
    metrics = {
        "flip_rate": flipped(ld_after_t, split.ld[None]).float().mean(1),
        "ld_before": split.ld.mean().expand(k),
        "ld_after": ld_after_t.mean(1),
        "kl_other": kl_t.mean(1),
        "mass_shift": torch.cat(mass, dim=1).mean(1),
        "l1": l1,
    }
    return metrics, ld_after_t, kl_t


def _cell_rows(unit: PreparedUnit, columns: list[CellColumn], values: torch.Tensor, effects: torch.Tensor,
               threshold: float) -> list[dict]:
    """The learned values in long form: one row per (layer, column[, head]) cell, columns from val.
    values, effects: [L, C(, H)]."""
    rows = []
    for li, layer in enumerate(unit.layers):
        for c, column in enumerate(columns):
            for h in (range(values.shape[2]) if values.dim() == 3 else [None]):
                at = (li, c) if h is None else (li, c, h)
                effect = float(effects[at])
                rows.append(dict(layer=layer, position=column.position, role=column.role, head=h,
                                 n_prompts=column.n_prompts, mean_position=column.mean_position,
                                 value=float(values[at]), effect=effect, moved=effect > threshold))
    return rows


def train_trials(loaded: LoadedModel, unit: PreparedUnit, hypers: list[Hyper]) -> list[TrialResult]:
    """Train and score trials of one unit; trials with equal batch sizes share one batched forward."""
    outcomes: list[TrialResult] = [TrialResult(h) for h in hypers]
    groups: dict[int, list[int]] = {}
    for i, h in enumerate(hypers):
        groups.setdefault(h.batch_size or unit.spec.settings.batch_size, []).append(i)
    loaded = evaluation_model(loaded)  # every reported number is fp32 (on CUDA: autocast off)
    refs = resolve_site(loaded.model, unit.spec.site, unit.layers)
    norms = None  # mean |h| per cell on train, for a relative effect such as SteerVec's
    if method_class(unit.spec.method).needs_norms:
        norms = site_norms(loaded, refs, unit.splits["train"], unit.spec.settings.eval_batch)
    columns = unit.cell_columns("val")  # the cells' columns, and each val token's column
    trains_on = training_model(loaded, unit.precision)  # a bf16 copy, autocast, or the model itself
    train_refs = refs if trains_on.model is loaded.model else resolve_site(trains_on.model, unit.spec.site,
                                                                            unit.layers)
    for members in groups.values():
        start = time.perf_counter()
        group = [outcomes[i] for i in members]
        try:
            intervention, tokens = _train_group(trains_on, unit, [hypers[i] for i in members], train_refs, group)
            # test first, so that the cells (which DynScalar records while evaluating) come from val
            evals = {split: _evaluate(loaded, unit, intervention, refs, unit.splits[split],
                                      columns if split == "val" else None)
                     for split in ("test", "val")}
            cells = [intervention.cells(j, norms) for j in range(len(members))]  # (values, effects) per trial
        except torch.OutOfMemoryError as exc:
            for o in group:
                o.fail(f"out of memory: {str(exc).splitlines()[0]}")
            continue
        wall = time.perf_counter() - start
        test_split = unit.splits["test"]
        threshold = intervention.moved_threshold(unit.spec.settings)
        for j, o in enumerate(group):
            o.metrics = {split: {name: float(evals[split][0][name][j]) for name in METRIC_NAMES}
                         for split in ("val", "test")}
            o.n_params = intervention.n_params
            o.precision = unit.precision
            values, effects = cells[j]
            o.sites_moved = int((effects > threshold).sum())
            o.sites_total = effects.numel()
            o.wall_s = wall / len(group)
            o.tokens_per_s = tokens / wall if wall > 0 else 0.0
            o.scalars = _cell_rows(unit, columns[0], values, effects, threshold)
            _, ld_after, kl = evals["test"]
            ld_before = test_split.ld
            flips = flipped(ld_after[j], ld_before)
            o.predictions = [dict(index=n, ld_before=float(ld_before[n]), ld_after=float(ld_after[j, n]),
                                  kl_other=float(kl[j, n]), flipped=bool(flips[n]))
                             for n in range(len(test_split))]
            o.tensors = intervention.artifact_tensors(j)
            if not all(math.isfinite(v) for m in o.metrics.values() for v in m.values()):
                o.fail("a metric is not finite")
    return outcomes
