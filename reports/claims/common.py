"""What the claims share: the unit pairs they compare, the minimum of replicates behind an interval, the
two-level estimates of the usual statistics, and how far the curves' k grid pins down k90."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reports.run import Run
from reports.stats import Arm, Draws, Estimate, distinct_resamples, rowwise_spearman, spearman, two_level
from reports.text import fmt
from storage.k90 import k90_target

MIN_REPLICATES = 3  # an interval entering a verdict rests on at least this many replicates per arm
FINE_GRID = 1.1  # neighbouring scored k at most 10% apart near k90 (analysis.k90_within: 0.1): a finer grid adds nothing


def min_replicates_justification() -> str:
    return (f"a bootstrap over R replicates can draw only C(2R - 1, R) different sets of them: "
            f"{fmt(distinct_resamples(2))} at R = 2, {fmt(distinct_resamples(MIN_REPLICATES))} at R = "
            f"{fmt(MIN_REPLICATES)} (scipy.special.comb); with fewer the interval carries next to no seed noise")


def pairs(run: Run, first: str, second: str, heldout: bool = False) -> list[tuple[Any, Any]]:
    """(first role's selected row, second role's) for each model, task and site that has both."""
    out = []
    for _, group in run.in_distribution(heldout).groupby(["model", "label", "site"], sort=False):
        a, b = group[group.role == first], group[group.role == second]
        if len(a) and len(b):
            out.append((a.iloc[0], b.iloc[0]))
    return out


def unpaired(run: Run, first: str, second: str) -> list[str]:
    """The in-distribution units of either role that `pairs` leaves out for lack of the other."""
    s = run.in_distribution()
    both = {k for k, g in s.groupby(["model", "label", "site"], sort=False) if {first, second} <= set(g.role)}
    return [f"{run.where(r)} / {r.role}: no {second if r.role == first else first} unit beside it"
            for r in s.itertuples(index=False) if r.role in (first, second) and (r.model, r.label, r.site) not in both]


def compare(run: Run, key: str, first: Sequence[str], second: Sequence[str], metric: str,
            ratio: bool = False) -> Estimate:
    """first - second (or first / second) of the mean of a per-prompt metric, each side a trial and its
    replicates, by the two-level bootstrap; paired where the two sides share test prompts."""
    a, ca = run.arm("first", first, (metric,))
    b, cb = run.arm("second", second, (metric,))

    def statistic(d: Draws) -> np.ndarray:
        x, y = d.mean(0, metric), d.mean(1, metric)
        if ratio:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.asarray(np.where(y > 0, x / y, np.nan))
        return np.asarray(x - y)
    return two_level(statistic, {**ca, **cb}, [a, b], key)


def mean_of(run: Run, key: str, trial_ids: Sequence[str], metric: str) -> Estimate:
    """The mean of a per-prompt metric over a trial and its replicates, by the two-level bootstrap."""
    a, clusters = run.arm("arm", trial_ids, (metric,))
    return two_level(lambda d: d.mean(0, metric), clusters, [a], key)


def weighted_spearman(arm: Arm, x: str, y: str, d: Draws) -> np.ndarray:
    """Per draw: the mean over the drawn replicates of Spearman's rho between two per-item metrics over the drawn
    items (the arm's "prompts" are the items: cells, betas); items drawn twice count twice."""
    counts = {k: d.weights[k].astype(int) for k in set(arm.prompt_sets)}
    if len(counts) == 1:  # one item set: draw b's items as indices [n, N'], then all rhos at once
        (key, w), = counts.items()
        total = w.sum(axis=1)
        if len(w) and (total == total[0]).all():
            idx = np.repeat(np.tile(np.arange(w.shape[1]), d.n), w.ravel()).reshape(d.n, int(total[0]))
            xs, ys = np.stack([np.asarray(v, dtype=float) for v in arm.values[x]]), \
                np.stack([np.asarray(v, dtype=float) for v in arm.values[y]])
            picks = d.picks[0][:, :, None]  # [n, R, 1]
            rho = rowwise_spearman(xs[picks, idx[:, None, :]].reshape(-1, idx.shape[1]),
                                   ys[picks, idx[:, None, :]].reshape(-1, idx.shape[1])).reshape(d.n, -1)
            return np.asarray(rho.mean(axis=1))
    out = np.empty(d.n)
    for b in range(d.n):
        rhos = []
        for r in d.picks[0][b]:
            w = d.weights[arm.prompt_sets[r]][b].astype(int)
            rhos.append(spearman(np.repeat(arm.values[x][r], w), np.repeat(arm.values[y][r], w)))
        out[b] = np.mean(rhos) if not any(math.isnan(v) for v in rhos) else math.nan
    return out


# --- how few cells reach a share of the effect: k on the curves' grid ----------------------------------------------

@dataclass(frozen=True)
class Reach:
    """The smallest k (cells of largest effect acting alone) whose val flip_rate reaches `fraction` of the trial's
    full val flip_rate: `k` for the selected trial; [`lo`, `hi`] what the curves can say of it over the seeds: the
    grid (the true k lies above the grid point before the one reaching it) and each point's band over prompts
    (the table's flip_rate_lo/_hi). None where no seed has an effect on val."""
    k: int | None
    lo: int | None
    hi: int | None
    n_cells: int
    per_seed: tuple[int | None, ...]
    grid_ratio: float  # the largest ratio, over the seeds, of k90 to the scored k just below it

    def share(self, k: int | None) -> float:
        return k / self.n_cells if k is not None and self.n_cells else math.nan

    def resolve(self) -> str:
        """What would narrow the bracket: a finer k grid while the scored k near k90 are coarser than FINE_GRID;
        once they are not, the bracket's width is the curves' bands over the val prompts."""
        if math.isnan(self.grid_ratio) or self.grid_ratio > FINE_GRID + 1e-9:
            return f"a finer k grid near k90 (neighbouring k now up to {fmt(self.grid_ratio)} times apart)"
        return (f"more val prompts: the k grid is already fine (neighbouring k at most {fmt(self.grid_ratio)} times "
                "apart), and the bracket's width is the curves' bands over the val prompts (its top is the first k "
                "whose band's low end reaches 90% of the full flip_rate)")


def reach(curves: pd.DataFrame, trial_ids: Sequence[str], fraction: float) -> Reach:
    """See Reach; decided on val."""
    rows = curves[curves.trial_id.isin(list(trial_ids)) & (curves.kind == "sufficiency") & (curves.split == "val")]
    per_seed: list[int | None] = []
    lows: list[int] = []
    highs: list[int] = []
    n_cells, ratio = 0, math.nan
    for trial_id in trial_ids:
        r = rows[rows.trial_id == trial_id].sort_values("k")
        if r.empty:
            per_seed.append(None)
            continue
        n_cells = int(r.n_cells.iloc[0])
        full = r[r.k == n_cells]
        target = k90_target(float(full.flip_rate.iloc[0]) if len(full) else None, fraction)
        if target is None:
            per_seed.append(None)
            continue

        def first(column: str, r: pd.DataFrame = r, target: float = target, n_cells: int = n_cells) -> int:
            hit = r[r[column] >= target]
            return int(hit.k.iloc[0]) if len(hit) else n_cells
        k = first("flip_rate")
        per_seed.append(k)
        previous = r[(r.k < k) & (r.k > 0)].k
        if len(previous):  # how finely the scored k pin this seed's k90 down (analysis.k90_within narrows it)
            ratio = max(ratio, k / float(previous.iloc[-1])) if not math.isnan(ratio) else k / float(previous.iloc[-1])
        optimistic = first("flip_rate_hi")  # the band's top reaching it: the earliest the true k could be
        before = r[r.k < optimistic].k
        lows.append(int(before.iloc[-1]) + 1 if len(before) else optimistic)
        highs.append(first("flip_rate_lo"))
    if not lows:
        return Reach(None, None, None, n_cells, tuple(per_seed), ratio)
    return Reach(per_seed[0], min(lows), max(highs), n_cells, tuple(per_seed), ratio)
