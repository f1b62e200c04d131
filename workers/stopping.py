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

Decisions use val only; test stays for reporting. A stopped trial leaves the batched forward
(`Intervention.keep_trials`), so its compute is saved.
"""
from __future__ import annotations

import torch

from workers.interventions import Intervention
from workers.models import LoadedModel
from workers.objective import objective_from
from workers.prepare import PreparedUnit
from workers.results import TrialResult
from workers.scoring import score
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
        k = len(live)
        lam_f = torch.tensor([self.hypers[i].lambda_faith for i in live])
        lam_m = torch.tensor([self.hypers[i].lambda_min for i in live])
        (minimality,) = scores.minimality  # one forward
        loss, _ = objective_from(scores.ld_before[None].expand(k, -1), scores.ld_after, scores.kl_other,
                                 minimality.cpu(), lam_f, lam_m)
        return loss.tolist(), scores.metrics["flip_rate"].tolist()
