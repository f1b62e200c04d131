"""Train K trials of one unit in one batched forward and score them on val and test.

Each trial has its own parameters, optimizer, learning rate, regularisation weights,
step count and batch order, so a batched run gives the same results as running the
trials one by one; the forward just sees a batch of K x B prompts.
"""
from __future__ import annotations

import math
import time

import torch

from workers.asha import Rungs
from workers.columns import CellColumn
from workers.convergence import PilotWatch
from workers.directions import mean_difference
from workers.errors import UsageError
from workers.interventions import Acting, CellRecorder, CellStats, Intervention, build_intervention, installed, method_class
from workers.masks import MaskedTraining, hold_outside, keep_grid
from workers.models import LoadedModel
from workers.objective import flipped, objective
from workers.precision import evaluation_model, training_model
from workers.prepare import PreparedUnit, check_slice
from workers.proximal import step_sizes
from workers.results import METRIC_NAMES, TrialResult
from workers.scoring import intervened_logits, score, site_norms
from workers.sites import SiteRef, resolve_site
from workers.stopping import RungJudge, RungSetup, TrialStopper
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


def fold_views(unit: PreparedUnit, hypers: list[Hyper]) -> dict[int, PreparedUnit]:
    """The unit as each trial's fold sees it, by fold (one view per fold; the single split: the unit itself)."""
    return {h.fold or 0: unit.for_fold(h.fold) for h in hypers}


def _by_fold(hypers: list[Hyper]) -> dict[int, list[int]]:
    """The trials (their places in `hypers`) of each fold."""
    out: dict[int, list[int]] = {}
    for j, h in enumerate(hypers):
        out.setdefault(h.fold or 0, []).append(j)
    return out


def _checked(stoppers: dict[int, TrialStopper], intervention: Intervention, hypers: list[Hyper], live: list[int],
             step: int) -> list[int]:
    """The live trials that keep training after a check: each fold's trials checked on its own check slice."""
    kept = []
    for fold, members in _by_fold([hypers[i] for i in live]).items():
        trials = [live[j] for j in members]
        if fold not in stoppers:
            kept += trials
            continue
        intervention.keep_trials(trials)
        kept += stoppers[fold].check(intervention, trials, step)
    return sorted(kept)


def _gathered(parts: list[torch.Tensor], width: int | None = None, pad: float = 0) -> torch.Tensor:
    """Rows gathered per trial, cut (or right-padded with `pad`) to `width` columns, then stacked into one batch."""
    if width is not None:
        parts = [p[:, :width] if p.shape[1] >= width else
                 torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]), value=pad)
                 for p in parts]
    return torch.cat(parts)


def train_group(loaded: LoadedModel, unit: PreparedUnit, hypers: list[Hyper], refs: list[SiteRef],
                outcomes: list[TrialResult], rungs: RungSetup | None = None,
                views: dict[int, PreparedUnit] | None = None, direction: torch.Tensor | None = None,
                norms: torch.Tensor | None = None) -> tuple[Intervention, int]:
    """Train trials that share a batch size together; fills steps/status of `outcomes`.
    Each trial draws its batches from its own fold's train split (`Hyper.fold`, `views`), so trials of
    different folds share one batched forward. A trial that ends (its steps done, a non-finite loss, early
    stopping, pruning, an ASHA rung, a pilot's convergence) leaves the batched forward. Returns the trained
    intervention (all trials back in) and the number of real tokens it processed. `direction`: the method's
    Setup.direction (DiffMeans; the caller groups trials so that all share one fold's); `norms`: the mean |h|
    per cell of fold 0 (a pilot's checks count moved cells with it).

    With `train.l1: proximal` (and a method with `shrink`), the L1 term leaves the loss and each optimizer
    step is followed by its proximal step (workers/proximal.py)."""
    k = len(hypers)
    views = views or fold_views(unit, hypers)
    trains = [views[h.fold or 0].splits["train"] for h in hypers]  # each trial's train split
    pad_id = loaded.tokenizer.pad_token_id
    vocabulary = unit.roles.roles if unit.roles is not None else None  # a method with needs_roles
    intervention = build_intervention(unit.spec.method, refs, k, unit.n_positions, direction, vocabulary
                                      ).to(loaded.device)
    optimizers = [torch.optim.Adam(intervention.trial_parameters(i), lr=h.lr) for i, h in enumerate(hypers)]
    keep = _mask_grid(unit, hypers, refs, intervention)  # [K, L, T(, H)]: masked controls (workers/masks.py)
    steps = [h.steps or unit.spec.settings.steps for h in hypers]
    batch = hypers[0].batch_size or unit.spec.settings.batch_size
    batches = [TrainBatches(len(train), batch, h.seed, h.resample_train) for h, train in zip(hypers, trains)]
    lam_f = torch.tensor([h.lambda_faith for h in hypers], device=loaded.device)
    lam_m = torch.tensor([h.lambda_min for h in hypers], device=loaded.device)
    proximal = unit.spec.settings.l1 == "proximal" and intervention.has_shrink()
    lam_loss = torch.zeros_like(lam_m) if proximal else lam_m  # the L1 weight in the loss
    watch = PilotWatch(unit, hypers, outcomes, loaded, refs, norms) if PilotWatch.wanted(hypers) else None
    # early stopping and pruning per fold, each on its fold's check slice (search trials: all in fold 0);
    # a pilot trains until it converges: no patience or pruning in its batch
    stoppers = {fold: TrialStopper(view, hypers, steps, outcomes, loaded, refs) for fold, view in views.items()
                if TrialStopper.wanted(view)} if watch is None else {}
    judge = RungJudge(rungs, unit, hypers, outcomes, loaded, refs) if rungs is not None else None  # search: fold 0

    live = list(range(k))
    tokens = 0
    for step in range(max(steps)):
        live = [i for i in live if step < steps[i]]
        if stoppers and live and next(iter(stoppers.values())).due(step):
            live = _checked(stoppers, intervention, hypers, live, step)
        if judge is not None and live and judge.due(step):
            intervention.keep_trials(live)
            live = judge.check(intervention, live, step)
        if watch is not None and live and watch.due(step):
            intervention.keep_trials(live)
            live = watch.check(intervention, live, step)
        if not live:
            break
        intervention.keep_trials(live)
        idx = [batches[i].next() for i in live]  # K' x [B], into each trial's train split
        lengths = torch.cat([trains[i].lengths[r] for i, r in zip(live, idx)])
        width = int(lengths.max())
        ids = _gathered([trains[i].ids[r] for i, r in zip(live, idx)], width, pad_id)
        prefix = roles = None
        if trains[0].prefix is not None:
            prefix = _gathered([trains[i].prefix[r] for i, r in zip(live, idx)], width)
        if trains[0].roles is not None:
            roles = _gathered([trains[i].roles[r] for i, r in zip(live, idx)], width)  # [K'*B, T]
        acting: Acting = intervention if keep is None else MaskedTraining(intervention, keep[live])
        with installed(acting, refs) as hooks:
            logits, ctx = intervened_logits(loaded, hooks, ids, lengths, unit.first_layer, prefix, token_roles=roles)
        logits = logits.reshape(len(live), len(idx[0]), -1)  # [K', B, V]
        before = torch.stack([trains[i].reference_logits[r] for i, r in zip(live, idx)]).to(loaded.device)
        a = torch.stack([trains[i].a_ids[r] for i, r in zip(live, idx)]).to(loaded.device)  # [K', B]
        b = torch.stack([trains[i].b_ids[r] for i, r in zip(live, idx)]).to(loaded.device)  # [K', B]
        loss, _ = objective(before, logits, a, b, intervention.minimality(ctx), lam_f[live], lam_loss[live])
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


def _mask_grid(unit: PreparedUnit, hypers: list[Hyper], refs: list[SiteRef],
               intervention: Intervention) -> torch.Tensor | None:
    """The trials' cell masks ([K, L, T(, H)] bool, None: no trial has one), with the gradient outside each held at 0."""
    if all(h.mask_cells is None for h in hypers):
        return None
    if unit.n_positions is None:
        raise UsageError(f"method {unit.spec.method!r} takes prompts of any length: its cells cannot be masked")
    keep = keep_grid(hypers, list(unit.layers), unit.n_positions, refs[0].n_heads)
    assert keep is not None
    hold_outside(intervention, keep)
    return keep.to(next(intervention.parameters()).device)


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


def _evaluate(loaded: LoadedModel, view: PreparedUnit, intervention: Intervention, refs: list[SiteRef],
              norms: torch.Tensor | None, outcomes: list[TrialResult]) -> None:
    """Score the intervention's trials (all of one fold) on their fold's val and test, and read their cells on
    val: fills each outcome's metrics, cells and test predictions."""
    settings = view.spec.settings
    columns, column_ids = view.cell_columns("val")  # the cells' columns, and each val token's column [N, T]
    recorder = CellRecorder(len(columns)) if intervention.records_cells else None  # its cells, on val
    evals = {split: score(loaded, intervention, refs, view.splits[split], first_layer=view.first_layer,
                          batch_rows=settings.eval_batch, token_columns=column_ids if split == "val" else None,
                          recorder=recorder if split == "val" else None)
             for split in ("test", "val")}
    stats = CellStats(norms, recorder)
    cells = [intervention.cells(j, stats) for j in range(len(outcomes))]  # (values, effects) per trial
    threshold = intervention.moved_threshold(settings)
    test = view.splits["test"]
    index, ld_before = view.row_index("test"), test.ld
    clusters = [e.example.cluster for e in test.examples]
    templates = [e.example.template for e in test.examples]
    for j, o in enumerate(outcomes):
        o.metrics = {split: {name: float(evals[split].metrics[name][j]) for name in METRIC_NAMES}
                     for split in ("val", "test")}
        values, effects = cells[j]
        o.sites_moved = int((effects > threshold).sum())
        o.sites_total = effects.numel()
        o.scalars = _cell_rows(view, columns, values, effects, threshold)
        o.fold, o.n_test, o.n_test_clusters = view.fold, len(test), len(set(clusters))
        ld_after, kl = evals["test"].ld_after, evals["test"].kl_other
        flips = flipped(ld_after[j], ld_before)
        o.predictions = [dict(index=index[n], ld_before=float(ld_before[n]), ld_after=float(ld_after[j, n]),
                              kl_other=float(kl[j, n]), flipped=bool(flips[n]), cluster=clusters[n],
                              template=templates[n], fold=view.fold)
                         for n in range(len(test))]


def train_trials(loaded: LoadedModel, unit: PreparedUnit, hypers: list[Hyper],
                 rungs: Rungs | None = None) -> list[TrialResult]:
    """Train and score trials of one unit; trials with equal batch sizes share one batched forward, whatever
    their folds; each is scored on its own fold's val and test. `rungs`: ASHA over the search trials' steps
    (workers/asha.py, all in fold 0), with the unit's history so far."""
    outcomes: list[TrialResult] = [TrialResult(h) for h in hypers]
    # trials with one batch size share a forward; with a direction (DiffMeans), only those of one fold
    by_direction = method_class(unit.spec.method).needs_direction
    groups: dict[tuple[int, int], list[int]] = {}
    for i, h in enumerate(hypers):
        key = (h.batch_size or unit.spec.settings.batch_size, (h.fold or 0) if by_direction else 0)
        groups.setdefault(key, []).append(i)
    loaded = evaluation_model(loaded)  # every reported number is fp32 (on CUDA: autocast off)
    refs = resolve_site(loaded.model, unit.spec.site, unit.layers)
    settings = unit.spec.settings
    method = method_class(unit.spec.method)
    views = fold_views(unit, hypers)
    norms: dict[int, torch.Tensor | None] = {}  # per fold: mean |h| per cell on train, for a relative effect (SteerVec)
    directions: dict[int, torch.Tensor | None] = {}  # per fold: the train split's mean difference per cell (DiffMeans)
    for fold, view in views.items():
        norms[fold] = directions[fold] = None
        if method.needs_norms:
            norms[fold] = site_norms(loaded, refs, view.splits["train"], settings.eval_batch)
        if method.needs_direction:
            directions[fold] = mean_difference(loaded, refs, view.splits["train"], settings.eval_batch,
                                               unit.spec.task.name, unit.spec.model)
    trains_on = training_model(loaded, unit.precision)  # a bf16 copy, autocast, or the model itself
    train_refs = refs if trains_on.model is loaded.model else resolve_site(trains_on.model, unit.spec.site,
                                                                            unit.layers)
    rung_setup = None
    if rungs is not None and any(h.prunable for h in hypers):
        data = check_slice(loaded, unit)
        columns, column_ids = unit.cell_columns("val")  # the cells' columns, and each val token's column [N, T]
        rung_setup = RungSetup(rungs, data, column_ids[:len(data)], len(columns), norms.get(0))
    for members in groups.values():
        start = time.perf_counter()
        group = [outcomes[i] for i in members]
        group_hypers = [hypers[i] for i in members]
        try:
            fold_of_group = group_hypers[0].fold or 0  # with a direction, a group is one fold's
            intervention, tokens = train_group(trains_on, unit, group_hypers, train_refs, group, rung_setup, views,
                                               directions[fold_of_group], norms.get(0))
            by_fold = _by_fold(group_hypers)
            for fold, js in by_fold.items():
                if len(by_fold) > 1:
                    intervention.keep_trials(js)
                _evaluate(loaded, views[fold], intervention, refs, norms[fold], [group[j] for j in js])
            intervention.keep_trials(None)
        except torch.OutOfMemoryError as exc:
            for o in group:
                o.fail(f"out of memory: {str(exc).splitlines()[0]}")
            continue
        wall = time.perf_counter() - start
        for j, o in enumerate(group):
            o.n_params = intervention.n_params
            o.precision = unit.precision
            o.wall_s = wall / len(group)
            o.tokens_per_s = tokens / wall if wall > 0 else 0.0
            o.tensors = intervention.artifact_tensors(j)
            if not all(math.isfinite(v) for m in o.metrics.values() for v in m.values()):
                o.fail("a metric is not finite")
    return outcomes
