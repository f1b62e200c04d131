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
from workers.convergence import PilotWatch
from workers.directions import mean_difference
from workers.interventions import CellRecorder, CellStats, Intervention, build_intervention, installed, method_class
from workers.models import LoadedModel
from workers.objective import flipped, objective
from workers.precision import evaluation_model, training_model
from workers.prepare import PreparedUnit
from workers.proximal import step_sizes
from workers.results import METRIC_NAMES, TrialResult
from workers.scoring import intervened_logits, score, site_norms
from workers.sites import SiteRef, resolve_site
from workers.stopping import TrialStopper
from workers.unit import Hyper


class TrainBatches:
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


def train_group(loaded: LoadedModel, unit: PreparedUnit, hypers: list[Hyper], refs: list[SiteRef],
                outcomes: list[TrialResult], direction: torch.Tensor | None = None,
                norms: torch.Tensor | None = None) -> tuple[Intervention, int]:
    """Train trials that share a batch size together; fills steps/status of `outcomes`.
    A trial that ends (its steps done, a non-finite loss, early stopping, pruning, a pilot's convergence)
    leaves the batched forward. Returns the trained intervention (all trials back in) and the number of
    real tokens it processed. `direction`: the method's Setup.direction (DiffMeans); `norms`: the mean |h|
    per cell (a pilot's checks count moved cells with it).

    With `train.l1: proximal` (and a method with `shrink`), the L1 term leaves the loss and each optimizer
    step is followed by its proximal step (workers/proximal.py)."""
    k = len(hypers)
    train = unit.splits["train"]
    intervention = build_intervention(unit.spec.method, refs, k, unit.n_positions, direction).to(loaded.device)
    optimizers = [torch.optim.Adam(intervention.trial_parameters(i), lr=h.lr) for i, h in enumerate(hypers)]
    steps = [h.steps or unit.spec.settings.steps for h in hypers]
    batch = hypers[0].batch_size or unit.spec.settings.batch_size
    batches = [TrainBatches(len(train), batch, h.seed, h.resample_train) for h in hypers]
    lam_f = torch.tensor([h.lambda_faith for h in hypers], device=loaded.device)
    lam_m = torch.tensor([h.lambda_min for h in hypers], device=loaded.device)
    proximal = unit.spec.settings.l1 == "proximal" and intervention.has_shrink()
    lam_loss = torch.zeros_like(lam_m) if proximal else lam_m  # the L1 weight in the loss
    watch = PilotWatch(unit, hypers, outcomes, loaded, refs, norms) if PilotWatch.wanted(hypers) else None
    # a pilot trains until it converges: no patience or pruning in its batch
    wanted = TrialStopper.wanted(unit) and watch is None
    stopper = TrialStopper(unit, hypers, steps, outcomes, loaded, refs) if wanted else None

    live = list(range(k))
    tokens = 0
    for step in range(max(steps)):
        live = [i for i in live if step < steps[i]]
        if stopper is not None and live and stopper.due(step):
            intervention.keep_trials(live)
            live = stopper.check(intervention, live, step)
        if watch is not None and live and watch.due(step):
            intervention.keep_trials(live)
            live = watch.check(intervention, live, step)
        if not live:
            break
        intervention.keep_trials(live)
        idx = torch.stack([batches[i].next() for i in live])  # [K', B]
        flat = idx.flatten()
        lengths = train.lengths[flat]
        ids = train.ids[flat][:, : int(lengths.max())]
        prefix = train.prefix[flat] if train.prefix is not None else None
        with installed(intervention, refs) as hooks:
            logits, ctx = intervened_logits(loaded, hooks, ids, lengths, unit.first_layer, prefix)
        logits = logits.reshape(len(live), idx.shape[1], -1)  # [K', B, V]
        before = train.reference_logits[idx].to(loaded.device)
        a, b = train.a_ids[idx].to(loaded.device), train.b_ids[idx].to(loaded.device)
        loss, _ = objective(before, logits, a, b, intervention.minimality(ctx), lam_f[live],
                            lam_loss[live])
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
                if proximal:  # amount: lambda_min times each element's step size
                    params = intervention.trial_parameters(j)
                    intervention.shrink(j, [lam_m[i] * size for size in step_sizes(optimizers[i], params)])
                outcomes[i].steps = step + 1
        live = [i for j, i in enumerate(live) if finite[j]]
        tokens += int(lengths.sum())
    if watch is not None:
        watch.finish(intervention, live, max(steps))
    intervention.keep_trials(None)
    return intervention, tokens


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
    settings = unit.spec.settings
    method = method_class(unit.spec.method)
    norms = None  # mean |h| per cell on train, for a relative effect such as SteerVec's
    if method.needs_norms:
        norms = site_norms(loaded, refs, unit.splits["train"], settings.eval_batch)
    direction = None  # the train split's mean difference per cell (DiffMeans)
    if method.needs_direction:
        direction = mean_difference(loaded, refs, unit.splits["train"], settings.eval_batch, unit.spec.task.name,
                                    unit.spec.model)
    columns, column_ids = unit.cell_columns("val")  # the cells' columns, and each val token's column [N, T]
    trains_on = training_model(loaded, unit.precision)  # a bf16 copy, autocast, or the model itself
    train_refs = refs if trains_on.model is loaded.model else resolve_site(trains_on.model, unit.spec.site,
                                                                            unit.layers)
    for members in groups.values():
        start = time.perf_counter()
        group = [outcomes[i] for i in members]
        try:
            intervention, tokens = train_group(trains_on, unit, [hypers[i] for i in members], train_refs, group,
                                               direction, norms)
            recorder = CellRecorder(len(columns)) if intervention.records_cells else None  # its cells, on val
            evals = {split: score(loaded, intervention, refs, unit.splits[split], first_layer=unit.first_layer,
                                  batch_rows=settings.eval_batch,
                                  token_columns=column_ids if split == "val" else None,
                                  recorder=recorder if split == "val" else None)
                     for split in ("test", "val")}
            stats = CellStats(norms, recorder)
            cells = [intervention.cells(j, stats) for j in range(len(members))]  # (values, effects) per trial
        except torch.OutOfMemoryError as exc:
            for o in group:
                o.fail(f"out of memory: {str(exc).splitlines()[0]}")
            continue
        wall = time.perf_counter() - start
        test_split = unit.splits["test"]
        threshold = intervention.moved_threshold(settings)
        for j, o in enumerate(group):
            o.metrics = {split: {name: float(evals[split].metrics[name][j]) for name in METRIC_NAMES}
                         for split in ("val", "test")}
            o.n_params = intervention.n_params
            o.precision = unit.precision
            values, effects = cells[j]
            o.sites_moved = int((effects > threshold).sum())
            o.sites_total = effects.numel()
            o.wall_s = wall / len(group)
            o.tokens_per_s = tokens / wall if wall > 0 else 0.0
            o.scalars = _cell_rows(unit, columns, values, effects, threshold)
            ld_after, kl = evals["test"].ld_after, evals["test"].kl_other
            ld_before = test_split.ld
            flips = flipped(ld_after[j], ld_before)
            o.predictions = [dict(index=n, ld_before=float(ld_before[n]), ld_after=float(ld_after[j, n]),
                                  kl_other=float(kl[j, n]), flipped=bool(flips[n]))
                             for n in range(len(test_split))]
            o.tensors = intervention.artifact_tensors(j)
            if not all(math.isfinite(v) for m in o.metrics.values() for v in m.values()):
                o.fail("a metric is not finite")
    return outcomes
