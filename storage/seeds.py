"""How stable a selected trial is across seeds: the selected trial and its replicates.

A unit's replicates (`trials.replicate_of` = the selected trial's id) re-train the selected
hyper-parameters with other trial seeds (`search.matched` replicates a unit's trial at C1's matched
kl_other too, under that trial's id: `group_of` takes the replicates of the trial it is given). From
their moved cells (`scalars.moved`) and effects (`scalars.effect`) this gives: how often each cell
moved, the mean pairwise Jaccard overlap of the moved sets, the mean pairwise Spearman rank correlation of the cells'
effects, and 95% intervals over seeds of the test metrics (Student t, as seeds are few;
quantiles and ranks from scipy.stats). Data only: reports/ draws it, `actscale status` prints it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from storage.schema import Status

CELL = ["layer", "position", "role", "head"]  # a cell; position is NULL for role columns (prompts of several shapes)


def t_interval(values: np.ndarray, low: float = -math.inf, high: float = math.inf) -> tuple[float, float, float]:
    """(mean, low, high): 95% Student-t interval of the mean (scipy.stats.t quantile), clipped to
    [low, high] (a rate's interval stays within 0..1); low = high = mean for one value."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if len(values) == 1:
        return (mean, mean, mean)
    half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * float(scipy.stats.sem(values))
    return (mean, max(low, mean - half), min(high, mean + half))


def jaccard(a: set[Any], b: set[Any]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr); NaN where either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(a, b).statistic)


@dataclass
class SeedStats:
    trial_ids: list[str]  # the selected trial first, then its complete replicates
    jaccard: float  # mean pairwise Jaccard overlap of the moved sets (nan with one seed)
    rank_corr: float  # mean pairwise Spearman correlation of the cells' effects (nan with one seed)
    moved_in_all: int  # cells moved in every seed
    moved_in_any: int  # cells moved in at least one seed
    test_flip: tuple[float, float, float]  # mean, low, high over seeds
    test_kl: tuple[float, float, float]
    cell_frequency: pd.DataFrame  # layer, position, role, head, n_prompts, mean_position, moved_share (0..1)

    @property
    def n_seeds(self) -> int:
        return len(self.trial_ids)

    def summary(self, digits: int = 3) -> dict[str, Any]:
        """The figures without the per-cell frame, rounded for reading."""
        def r(x: float) -> float:
            return round(x, digits)
        return dict(n_seeds=self.n_seeds, jaccard=r(self.jaccard), rank_corr=r(self.rank_corr),
                    moved_in_all=self.moved_in_all, moved_in_any=self.moved_in_any,
                    test_flip=tuple(map(r, self.test_flip)), test_kl=tuple(map(r, self.test_kl)))


def group_of(selected_trial_id: str, trials: pd.DataFrame) -> list[str]:
    """The selected trial and its complete replicates, in trial order."""
    reps = trials[(trials.replicate_of == selected_trial_id) & (trials.status == Status.COMPLETE)]
    return [selected_trial_id] + sorted(reps.trial_id.tolist())


def seed_stats(selected_trial_id: str, trials: pd.DataFrame, scalars: pd.DataFrame) -> SeedStats:
    """Stability of one selected trial over its seeds; `scalars` must hold the group's rows."""
    ids = group_of(selected_trial_id, trials)
    rows = scalars[scalars.trial_id.isin(ids)].copy()
    rows["head"] = rows["head"].fillna(-1).astype(int)
    rows["position"] = rows["position"].fillna(-1).astype(int)
    moved_sets = {tid: set(map(tuple, g.loc[g.moved.astype(bool), CELL].to_numpy().tolist()))
                  for tid, g in rows.groupby("trial_id")}
    moved_sets = {tid: moved_sets.get(tid, set()) for tid in ids}
    effects = rows.pivot_table(index=CELL, columns="trial_id", values="effect", aggfunc="first")
    pairs = list(itertools.combinations(ids, 2))
    jac = [jaccard(moved_sets[a], moved_sets[b]) for a, b in pairs]
    rho = [spearman(effects[a].to_numpy(), effects[b].to_numpy()) for a, b in pairs
           if a in effects.columns and b in effects.columns]
    frequency = rows.groupby(CELL, as_index=False).agg(moved_share=("moved", "mean"), n_prompts=("n_prompts", "first"),
                                                       mean_position=("mean_position", "first"))
    frequency["head"] = frequency["head"].where(frequency["head"] >= 0, None)
    frequency["position"] = frequency["position"].where(frequency["position"] >= 0, None)
    chosen = trials.set_index("trial_id").loc[ids]
    all_sets = list(moved_sets.values())
    return SeedStats(
        trial_ids=ids,
        jaccard=float(np.nanmean(jac)) if jac and not all(math.isnan(j) for j in jac) else math.nan,
        rank_corr=float(np.nanmean(rho)) if rho and not all(math.isnan(r) for r in rho) else math.nan,
        moved_in_all=len(set.intersection(*all_sets)) if all_sets else 0,
        moved_in_any=len(set.union(*all_sets)) if all_sets else 0,
        test_flip=t_interval(chosen.test_flip_rate.to_numpy(), 0.0, 1.0),
        test_kl=t_interval(chosen.test_kl_other.to_numpy(), 0.0),
        cell_frequency=frequency,
    )
