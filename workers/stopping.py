"""Early stopping and pruning of the trials trained together in one batched forward.

Every `check_every` steps the live trials are scored (workers.scoring.score) on a fixed val slice
(the first `check_prompts` val prompts, `PreparedUnit.check`, in one forward) on the training model,
against that model's own unintervened logits (under bf16 the fp32 logits would put a floor under the
faithfulness term and count precision noise near LD = 0 as flips):

- patience (`train.patience` > 0): a trial whose slice objective (its own loss: effectiveness +
  lambda_faith * faithfulness + lambda_min * minimality) has not improved by 1% of its best for
  `patience` checks stops; it converged, so it stays `complete` (stop_reason says when).
- pruning (`train.prune`, search trials only, never replicates): successive-halving style, at
  each check a trial is pruned when it is clearly dominated at that rung by a trial of its batch:
  its slice flip_rate is `prune_margin` or more below the batch's best, or, from half its steps
  on, it flips no slice prompt at all while another trial does. Pruned trials are scored where
  they stopped, stored as `pruned`, told to Optuna as pruned and never selected.

- ASHA (`search.pruner`, search trials only): at each rung (workers/asha.py, the rule), `RungJudge`
  scores the live search trials on the same slice (flip_rate, kl_other and the cells moved, as the
  selection rule orders trials), records a 'rung' check for each, and prunes the ones the rule does
  not keep, against the unit's earlier trials at that rung (the history sent with the work) and the
  batch itself.

Decisions use val only; test stays for reporting. A stopped trial leaves the batched forward
(`Intervention.keep_trials`), so its compute is saved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.asha import RungEntry, Rungs
from workers.interventions import CellRecorder, CellStats, Intervention
from workers.models import LoadedModel
from workers.objective import objective_from
from workers.prepare import PreparedUnit, SplitData
from workers.results import TrialResult
from workers.scoring import Scores, score
from workers.sites import SiteRef
from workers.unit import Hyper

IMPROVEMENT = 0.01  # a check improves on the best when it is lower by this share of |best|


class TrialStopper:
    """Tracks each trial's best slice objective and decides, at each check, who leaves the batch."""

    def __init__(self, unit: PreparedUnit, hypers: list[Hyper], steps: list[int], outcomes: list[TrialResult],
                 trains_on: LoadedModel, refs: list[SiteRef]):
        self.unit, self.settings = unit, unit.spec.settings
        self.hypers, self.steps, self.outcomes = hypers, steps, outcomes
        self.trains_on, self.refs = trains_on, refs  # the training model and its sites
        self.best = [float("inf")] * len(hypers)
        self.flat_checks = [0] * len(hypers)
        assert unit.check is not None, "prepare_unit builds the check slice when stopping is wanted"
        self.data = unit.check

    @staticmethod
    def wanted(unit: PreparedUnit) -> bool:
        return unit.check is not None

    def due(self, step: int) -> bool:
        return step > 0 and step % self.settings.check_every == 0

    def check(self, intervention: Intervention, live: list[int], step: int) -> list[int]:
        """The trials of `live` (the intervention's trials now) that keep training after this check (the
        others get a stop_reason)."""
        loss, flips = self.slice_scores(intervention, live)
        stopped: set[int] = set()
        patience = self.settings.patience
        for j, i in enumerate(live):
            first = self.best[i] == float("inf")
            if first or loss[j] < self.best[i] - IMPROVEMENT * abs(self.best[i]):
                self.best[i], self.flat_checks[i] = loss[j], 0
            else:
                self.flat_checks[i] += 1
            if patience and self.flat_checks[i] >= patience:
                self.outcomes[i].stop_reason = (f"patience: val objective not better for {patience} check(s) "
                                                f"at step {step}")
                stopped.add(i)
        if self.settings.prune:
            stopped |= self._prune(live, flips, step)
        return [i for i in live if i not in stopped]

    def _prune(self, live: list[int], flips: list[float], step: int) -> set[int]:
        searched = [(j, i) for j, i in enumerate(live) if self.hypers[i].prunable]
        if len(searched) < 2:
            return set()
        best = max(flips[j] for j, _ in searched)
        pruned = set()
        for j, i in searched:
            far_below = flips[j] <= best - self.settings.prune_margin
            no_effect = flips[j] == 0 and best > 0 and 2 * step >= self.steps[i]
            if far_below or no_effect:
                self.outcomes[i].pruned = True
                self.outcomes[i].stop_reason = (f"pruned at step {step}: val-slice flip_rate {flips[j]:.2f} against "
                                                f"the batch's best {best:.2f} (margin {self.settings.prune_margin})")
                pruned.add(i)
        return pruned

    def slice_scores(self, intervention: Intervention, live: list[int]) -> tuple[list[float], list[float]]:
        """Per live trial: its objective and flip_rate on the val slice."""
        scores = score(self.trains_on, intervention, self.refs, self.data, first_layer=self.unit.first_layer, own=True)
        return slice_loss(scores, [self.hypers[i] for i in live]), scores.metrics["flip_rate"].tolist()


def slice_loss(scores: Scores, hypers: list[Hyper]) -> list[float]:
    """Each trial's own objective on a slice scored in one forward (its hyper-parameters in `hypers`)."""
    lam_f = torch.tensor([h.lambda_faith for h in hypers])
    lam_m = torch.tensor([h.lambda_min for h in hypers])
    (minimality,) = scores.minimality  # one forward
    loss, _ = objective_from(scores.ld_before[None].expand(len(hypers), -1), scores.ld_after, scores.kl_other,
                             minimality.cpu(), lam_f, lam_m)
    return loss.tolist()


@dataclass
class RungSetup:
    """What ASHA's rung checks of a unit need beyond the batch: the rule and the unit's history, the val
    check slice as the training model sees it, each slice token's cell column ([n, T]) and the number of
    columns (for a method whose cells are recorded on val), and the mean |h| per cell on train (for a
    method whose effect is relative to it)."""

    rungs: Rungs
    data: SplitData
    token_columns: torch.Tensor  # [n, T]
    n_columns: int
    norms: torch.Tensor | None = None


class RungJudge:
    """ASHA's rungs for the search trials of one batch: at a rung step, the live search trials are scored
    on the check slice, each gets a 'rung' check (its row in the checks table), and those the rule
    (workers/asha.py) does not keep are pruned there. Replicates (not prunable) are not judged."""

    def __init__(self, setup: RungSetup, unit: PreparedUnit, hypers: list[Hyper], outcomes: list[TrialResult],
                 trains_on: LoadedModel, refs: list[SiteRef]):
        self.setup, self.unit, self.hypers, self.outcomes = setup, unit, hypers, outcomes
        self.trains_on, self.refs = trains_on, refs  # the training model and its sites

    def due(self, step: int) -> bool:
        return step > 0 and self.setup.rungs.is_rung(step)

    def check(self, intervention: Intervention, live: list[int], step: int) -> list[int]:
        """The trials of `live` (the intervention's trials now) that go on past rung `step`."""
        searched = [(j, i) for j, i in enumerate(live) if self.hypers[i].prunable]
        if not searched:
            return live
        entries = self.measure(intervention, live, searched, step)
        rungs = self.setup.rungs
        kept = rungs.kept(step, entries)
        n = len({e.number for e in rungs.history.get(step, ())} | {e.number for e in entries})
        pruned = set()
        for (_, i), entry, keep in zip(searched, entries, kept):
            if not keep:
                self.outcomes[i].pruned = True
                self.outcomes[i].stop_reason = (
                    f"pruned by asha at rung {step}: val-slice flip_rate {entry.flip_rate:.2f}, "
                    f"{entry.sites_moved} sites moved, kl_other {entry.kl_other:.3f} not among the best "
                    f"{max(rungs.min_kept, n // rungs.eta)} of the {n} search trial(s) at this rung in the "
                    f"{rungs.rank!r} order (eta {rungs.eta}, min_kept {rungs.min_kept})")
                pruned.add(i)
        return [i for i in live if i not in pruned]

    def measure(self, intervention: Intervention, live: list[int], searched: list[tuple[int, int]],
                step: int) -> list[RungEntry]:
        """Score the live trials on the slice (one forward); record a rung check for each searched one."""
        setup = self.setup
        recorder = CellRecorder(setup.n_columns) if intervention.records_cells else None
        scores = score(self.trains_on, intervention, self.refs, setup.data, first_layer=self.unit.first_layer,
                       own=True, token_columns=setup.token_columns if recorder is not None else None,
                       recorder=recorder)
        loss = slice_loss(scores, [self.hypers[i] for i in live])
        stats = CellStats(setup.norms, recorder)
        threshold = intervention.moved_threshold(self.unit.spec.settings)
        entries = []
        for j, i in searched:
            moved = int((intervention.cells(j, stats)[1] > threshold).sum())
            metrics = {name: float(scores.metrics[name][j]) for name in ("flip_rate", "kl_other", "l1")}
            self.outcomes[i].checks.append(dict(kind="rung", step=step, loss=loss[j], sites_moved=moved, **metrics))
            number = self.hypers[i].seed  # a search trial's seed is its Optuna number (orchestrator/studies.py)
            entries.append(RungEntry(number, metrics["flip_rate"], metrics["kl_other"], moved))
        return entries
