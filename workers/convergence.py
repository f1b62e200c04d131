"""Training length from a convergence pilot (`train.converge`, docs/architecture.md "The convergence pilot").

A unit with `train.converge` first trains one pilot trial (at the middle of its searched ranges) for up
to `max_steps`. Every `every` steps (from step 0: the model itself) the pilot is scored on the val check
slice exactly as the stopping rule scores it (workers/stopping.py: the first `check_prompts` val prompts,
on the training model against its own logits; `workers.scoring.score`), and each check is kept (step,
val-slice objective, flip_rate, kl_other, l1, moved cells: the `checks` table). The pilot stops at the
first check where its val objective changed by less than `tol` (relative) over the last `window` steps,
or at `max_steps` ("not converged"); its steps done become the unit's training length (the search
trials' and replicates' `steps`). Decisions use val only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workers.interventions import CellStats, Intervention
from workers.models import LoadedModel
from workers.objective import objective_from
from workers.prepare import PreparedUnit
from workers.results import TrialResult
from workers.scoring import score
from workers.sites import SiteRef
from workers.unit import Convergence, Hyper


@dataclass
class ConvergenceRule:
    """The rule on one trial's checks: converged when the val objective changed by less than `tol` of its
    value `window` steps before (checks every `every` steps, `window` a multiple of it)."""

    window: int
    tol: float
    objective: dict[int, float] = field(default_factory=dict)  # step -> val-slice objective

    def observe(self, step: int, value: float) -> float | None:
        """Record a check; the relative change over the last `window` steps (None: not that many steps yet)."""
        self.objective[step] = value
        before = self.objective.get(step - self.window)
        if before is None:
            return None
        return abs(value - before) / max(abs(before), 1e-12)

    def converged(self, change: float | None) -> bool:
        return change is not None and change < self.tol


class PilotWatch:
    """Checks the pilot trials of a batch every `every` steps, keeps each check, and stops the converged."""

    def __init__(self, unit: PreparedUnit, hypers: list[Hyper], outcomes: list[TrialResult], trains_on: LoadedModel,
                 refs: list[SiteRef], norms: torch.Tensor | None = None):
        converge = unit.spec.settings.converge
        assert converge is not None and unit.check is not None, "a pilot needs train.converge (and its check slice)"
        self.converge: Convergence = converge
        self.unit, self.hypers, self.outcomes = unit, hypers, outcomes
        self.trains_on, self.refs, self.norms = trains_on, refs, norms
        self.rules = {i: ConvergenceRule(converge.window, converge.tol) for i, h in enumerate(hypers) if h.pilot}
        self.changes: dict[int, float | None] = {}

    @staticmethod
    def wanted(hypers: list[Hyper]) -> bool:
        return any(h.pilot for h in hypers)

    def due(self, step: int) -> bool:
        """Every `every` steps, from step 0 (the model itself: where the curve starts)."""
        return step % self.converge.every == 0

    def check(self, intervention: Intervention, live: list[int], step: int) -> list[int]:
        """The trials of `live` (the intervention's trials now) that keep training after this check."""
        converged = set()
        for i, checked in self._checks(intervention, live, step):
            self.outcomes[i].checks.append(checked)
            change = self.changes[i] = self.rules[i].observe(step, checked["loss"])
            if self.rules[i].converged(change):
                self.outcomes[i].stop_reason = (f"converged at step {step}: val objective changed {change:.2%} over "
                                                f"the last {self.converge.window} steps (tol {self.converge.tol:.2%})")
                converged.add(i)
        return [i for i in live if i not in converged]

    def finish(self, intervention: Intervention, live: list[int], step: int) -> None:
        """The last check, of the pilots that ran to max_steps: converged there, or not converged."""
        pilots = [i for i in live if i in self.rules and self.outcomes[i].ok]
        if not pilots:
            return
        intervention.keep_trials(pilots)
        for i in self.check(intervention, pilots, step):
            change = self.changes.get(i)
            shown = f"{change:.2%}" if change is not None else "unknown"
            self.outcomes[i].stop_reason = (f"not converged by max_steps={step}: val objective changed {shown} over "
                                            f"the last {self.converge.window} steps (tol {self.converge.tol:.2%})")

    def _checks(self, intervention: Intervention, live: list[int], step: int) -> list[tuple[int, dict]]:
        """(trial, its checks row) per live pilot: the val-slice scores of this step."""
        assert self.unit.check is not None
        scores = score(self.trains_on, intervention, self.refs, self.unit.check, first_layer=self.unit.first_layer,
                       own=True)
        k = len(live)
        lam_f = torch.tensor([self.hypers[i].lambda_faith for i in live])
        lam_m = torch.tensor([self.hypers[i].lambda_min for i in live])
        (minimality,) = scores.minimality  # one forward
        loss, _ = objective_from(scores.ld_before[None].expand(k, -1), scores.ld_after, scores.kl_other,
                                 minimality.cpu(), lam_f, lam_m)
        out = []
        for j, i in enumerate(live):
            if i not in self.rules:
                continue
            out.append((i, dict(kind="pilot", step=step, loss=float(loss[j]),
                                   flip_rate=float(scores.metrics["flip_rate"][j]),
                                   kl_other=float(scores.metrics["kl_other"][j]), l1=float(scores.metrics["l1"][j]),
                                   sites_moved=self._moved(intervention, j))))
        return out

    def _moved(self, intervention: Intervention, j: int) -> int | None:
        """Cells moved now (None for a method whose cells need a recorded val evaluation, or norms not given)."""
        if intervention.records_cells or (intervention.needs_norms and self.norms is None):
            return None
        _, effects = intervention.cells(j, CellStats(self.norms))
        return int((effects > intervention.moved_threshold(self.unit.spec.settings)).sum())
