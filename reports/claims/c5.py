"""C5: effectiveness, faithfulness and minimality trade off across the lambda fronts, differently per task."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from reports.engine import ClaimResult, Condition, Outcome, Threshold, UnitVerdict, interval, judge, resolve_text
from reports.run import FLIP, KL, SHIFT, Run, role_of
from reports.stats import Arm, Draws, Estimate, exact_spearman_p, rowwise_spearman, two_level
from reports.text import fmt

MIN_TRIALS = 5  # complete search trials a unit's front is judged on
MOVED = "moved"

TITLE = "The three terms trade off, differently per task"
STATEMENT = "Effectiveness, faithfulness and minimality trade off against each other, differently per task."
ITEMS = ("Per in-distribution unit, across its complete search trials (the lambda front the search explored; not one "
         "trial's beta path): Spearman's rho between effectiveness (test flip_rate; the normalised LD shift where "
         "the flip_rate is the same in every trial, saturated) and faithfulness given up (test kl_other), and "
         "between effectiveness and minimality given up (sites_moved / sites_total). Intervals: two-level bootstrap "
         "over the trials (the points of the front) and the prompt clusters they share. The slope (Theil-Sen, "
         "effectiveness per nat of kl_other) is shown beside. *Differently per task*: for the same model, site and "
         "method on two tasks that both show the faithfulness trade-off, the difference of the two slopes, by the "
         "same bootstrap (the tasks' prompts are independent).")
RULE = ("A unit shows a trade-off when both rhos' lower bounds are above 0; it does not when either upper bound is "
        f"below 0; inconclusive otherwise, or with fewer than {fmt(MIN_TRIALS)} search trials. Two tasks differ when "
        "the interval of the slope difference excludes 0; a difference cannot be shown absent without an equivalence "
        "margin, which the paper does not give, so it is otherwise inconclusive.")


def theil_sen_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Theil-Sen slope of y on x for each row of [B, n] (the median of the pairwise slopes, as
    scipy.stats.theilslopes computes it); NaN for a row whose x are all equal."""
    i, j = np.triu_indices(x.shape[1], 1)
    dx, dy = x[:, j] - x[:, i], y[:, j] - y[:, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(dx != 0, dy / dx, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(slopes, axis=1)


def _front(run: Run, row: Any) -> tuple[Arm, dict[Any, np.ndarray], str, pd.DataFrame]:
    """The unit's search trials as one arm (replicates = trials), and the effectiveness metric used."""
    trials = run.search_trials(row.unit_id)
    effect = FLIP if trials.test_flip_rate.nunique() > 1 or len(trials) < 2 else SHIFT
    moved = (trials.sites_moved / trials.sites_total).to_numpy(dtype=float)
    arm, clusters = run.arm("front", list(trials.trial_id), (FLIP, SHIFT, KL), {MOVED: moved})
    return arm, clusters, effect, trials


def _rho(effect: str, other: str) -> Any:
    def statistic(d: Draws) -> np.ndarray:
        y = d.constants(0, MOVED) if other == MOVED else d.replicate_means(0, other)
        return rowwise_spearman(d.replicate_means(0, effect), y)
    return statistic


def unit_tradeoff(run: Run, row: Any) -> tuple[UnitVerdict, tuple[Arm, dict[Any, np.ndarray], str] | None]:
    where = f"{run.where(row)} / {row.role or row.method}"
    arm, clusters, effect, trials = _front(run, row)
    names = (f"rho({effect}, kl_other) over the front", f"rho({effect}, moved share) over the front")
    if len(trials) < MIN_TRIALS:
        shown = f"{fmt(len(trials))} search trial(s)"
        conditions = [Condition(n, "lower bound > 0", Outcome.INCONCLUSIVE, None, shown, f"only {shown}",
                                f"at least {fmt(MIN_TRIALS)} complete search trials (search.n_trials; under ASHA "
                                "search.pruner.min_kept)") for n in names]
        return UnitVerdict(row.model, where, conditions), None
    key = f"{where}/C5"
    faith = two_level(_rho(effect, KL), clusters, [arm], f"{key}/kl")
    minimal = two_level(_rho(effect, MOVED), clusters, [arm], f"{key}/moved")
    conditions = [judge(n, e, 0.0, True, strict=True, items="prompt clusters (the replicates here: search trials)")
                  for n, e in zip(names, (faith, minimal))]
    effects = trials.test_flip_rate.to_numpy(dtype=float)
    notes = []
    if effect == FLIP and np.ptp(trials.test_kl_other) > 0:
        slope = scipy.stats.theilslopes(effects, trials.test_kl_other.to_numpy(dtype=float))
        notes.append(f"slope (Theil-Sen, scipy) {fmt(slope.slope)} flip_rate per nat [{fmt(slope.low_slope)}, "
                     f"{fmt(slope.high_slope)}]")
    return UnitVerdict(row.model, where, conditions, notes), (arm, clusters, effect)


def task_difference(name: str, first: tuple[Arm, dict[Any, np.ndarray], str],
                    second: tuple[Arm, dict[Any, np.ndarray], str]) -> Condition:
    (a, ca, ea), (b, cb, eb) = first, second
    rule = "interval excludes 0"
    if ea != eb:
        return Condition(name, rule, Outcome.INCONCLUSIVE, None, "n/a", "the tasks' effectiveness measures differ",
                         "flip_rates that do not saturate on either task")

    def statistic(d: Draws) -> np.ndarray:
        return np.asarray(theil_sen_rows(d.replicate_means(0, KL), d.replicate_means(0, ea))
                          - theil_sen_rows(d.replicate_means(1, KL), d.replicate_means(1, eb)))
    e: Estimate = two_level(statistic, {**ca, **cb}, [a, b], name)
    shown = interval(e)
    if e.has_interval and (e.lo > 0 or e.hi < 0):
        return Condition(name, rule, Outcome.SUPPORTED, e, shown)
    if not e.has_interval:
        return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown, "no interval", "more search trials")
    return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown, "the interval contains 0", resolve_text(e, 0.0))


def evaluate(run: Run) -> ClaimResult:
    units, fronts = [], {}
    for row in run.in_distribution().itertuples(index=False):
        verdict, front = unit_tradeoff(run, row)
        units.append(verdict)
        if front is not None and verdict.conditions[0].outcome == Outcome.SUPPORTED:
            fronts[(row.model, row.label, row.site, row.method)] = front
    units += differences(run, fronts, units)
    n_trials = [len(run.search_trials(u)) for u in run.in_distribution().unit_id]
    return ClaimResult("C5", TITLE, STATEMENT, ITEMS, RULE, [
        Threshold("C5_MIN_TRIALS", MIN_TRIALS, "C5: complete search trials a unit's front is judged on",
                  f"with n trials in perfect order Spearman's exact test gives p = {fmt(exact_spearman_p(MIN_TRIALS))} "
                  f"at n = {fmt(MIN_TRIALS)} and {fmt(exact_spearman_p(MIN_TRIALS - 1))} at n = {fmt(MIN_TRIALS - 1)} "
                  "(scipy.stats.permutation_test): below 5 no front can show a trade-off at all; this run has "
                  f"{fmt(min(n_trials, default=0))} to {fmt(max(n_trials, default=0))} per unit")],
        units, extra=_fronts_lines(run), figure={"fronts": _fronts(run)})


def differences(run: Run, fronts: dict[tuple[str, str, str, str], Any], tradeoffs: list[UnitVerdict]) -> list[UnitVerdict]:
    """'Differently per task', per model: the slope difference of each unit matched across two tasks where both show
    the faithfulness trade-off. Moot (no item) where no unit shows a trade-off and some show clearly none;
    inconclusive where the run has one task, or no matched pair to compare."""
    out = []
    for model in run.models:
        s = run.in_distribution()
        labels = list(dict.fromkeys(s[s.model == model].label))
        mine = [u for u in tradeoffs if u.model == model]
        if mine and not any(u.outcome == Outcome.SUPPORTED for u in mine) and \
                any(u.outcome == Outcome.NOT_SUPPORTED for u in mine):
            continue
        name = "the tasks' slopes differ"
        where = (f"{model} / " if run.several_models else "") + "tasks"
        if len(labels) < 2:
            out.append(UnitVerdict(model, where, [Condition(name, "interval excludes 0", Outcome.INCONCLUSIVE, None,
                                                            "n/a", "the run has one in-distribution task",
                                                            "a second task (tasks:)")]))
            continue
        found = False
        for i, first in enumerate(labels):
            for second in labels[i + 1:]:
                for (m, label, site, method), front in fronts.items():
                    other = fronts.get((m, second, site, method))
                    if m != model or label != first or other is None:
                        continue
                    found = True
                    unit = (f"{model} / " if run.several_models else "") + f"{first} vs {second} / {site} / " \
                        f"{role_of(method) or method}"
                    out.append(UnitVerdict(model, unit, [task_difference(
                        f"slope difference ({first} - {second}), effectiveness per nat", front, other)]))
        if not found:
            out.append(UnitVerdict(model, where, [Condition(
                name, "interval excludes 0", Outcome.INCONCLUSIVE, None, "n/a",
                "no unit shows the trade-off on two tasks at the same site and method",
                "fronts showing the trade-off on two tasks (more search trials)")]))
    return out


def _fronts(run: Run) -> pd.DataFrame:
    """Every in-distribution unit's complete search trials: the points of its front, for the figure."""
    parts = [run.search_trials(row.unit_id)[["test_flip_rate", "test_kl_other", "sites_moved", "sites_total"]].assign(
        unit=run.where(row), task=row.label, method=row.role or row.method)
        for row in run.in_distribution().itertuples(index=False)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _fronts_lines(run: Run) -> list[str]:
    """The fronts as measured (test flip_rate and kl_other of each search trial), whatever their verdict."""
    rows = []
    for row in run.in_distribution().itertuples(index=False):
        t = run.search_trials(row.unit_id)
        points = "; ".join(f"{fmt(float(f))} at {fmt(float(k))} nats, {fmt(int(m))} moved" for f, k, m in
                           zip(t.test_flip_rate, t.test_kl_other, t.sites_moved))
        rows.append(f"- {run.where(row)} / {row.role or row.method}: {points}")
    if not rows:
        return []
    return ["*The fronts as measured* (test flip_rate, test kl_other and sites moved of each complete search "
            "trial):", ""] + rows
