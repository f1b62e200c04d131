"""The statistics of the pages, in one place: scipy.stats for the tests and quantiles, and the one
two-level bootstrap that every interval entering a verdict comes from.

The two-level bootstrap resamples what varies in a run, in order: the replicates of a trial (its
seeds, folds or resampled training sets: level 1), then the prompt clusters within each (level 2:
the task's grouping key, e.g. the country of a capital prompt or the name pair of an IOI prompt,
so that prompts about the same country count once, not as independent evidence). Replicates
evaluated on the same prompt set (seed replicates of one split; two methods on the same test
prompts) share each draw of clusters: their prompts are the same prompts, so their prompt noise
is shared too (a crossed design), which is also what makes a difference between two methods a
paired one. Replicates on other prompt sets (folds; a held-out template) get draws of their own.
With one replicate and singleton clusters this is a plain percentile bootstrap over prompts.
"""
from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.stats
from scipy.special import comb

from storage.seeds import spearman, t_interval  # scipy.stats.t and spearmanr; seed statistics use them too

CONFIDENCE = 0.95  # every interval on the pages: two-sided, percentile
BOOTSTRAP_SAMPLES = 2000  # draws per interval; the 2.5% quantile then rests on 50 draws
REPLICATES, CLUSTERS = "replicates", "clusters"
BOTH_LEVELS = (REPLICATES, CLUSTERS)
# a statistic undefined in more than this share of the draws (a ratio over zero, a correlation of ties) has no interval
MAX_UNDEFINED = 0.05


# --- tests and ranks (scipy.stats; t_interval and spearman: storage.seeds) --------------------------------------

def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of x [B, n] with the same row of y [B, n] (scipy ranks and Pearson per row);
    NaN for a row where either side is constant."""
    rx = scipy.stats.rankdata(x, axis=1)
    ry = scipy.stats.rankdata(y, axis=1)
    out = np.full(len(rx), np.nan)
    ok = (np.ptp(rx, axis=1) > 0) & (np.ptp(ry, axis=1) > 0)
    if ok.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[ok] = scipy.stats.pearsonr(rx[ok], ry[ok], axis=1).statistic
    return out


def paired_flip_p(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact test of two paired 0/1 outcomes (scipy.stats.binomtest on the discordant prompts)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(scipy.stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Wilcoxon's signed-rank test of paired values (scipy.stats.wilcoxon); 1 where every pair is equal."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(scipy.stats.wilcoxon(a, b).pvalue)


def exact_spearman_p(n: int) -> float:
    """The two-sided exact permutation p-value of n points in perfect order (scipy.stats.permutation_test over
    every pairing): the smallest p that Spearman's test can give with n points."""
    x = np.arange(n, dtype=float)

    def rho(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.asarray(scipy.stats.pearsonr(scipy.stats.rankdata(a, axis=axis), scipy.stats.rankdata(b, axis=axis),
                                               axis=axis).statistic)
    result = scipy.stats.permutation_test((x, x), rho, permutation_type="pairings", n_resamples=math.inf,
                                          vectorized=True)
    return float(result.pvalue)


def distinct_resamples(r: int) -> int:
    """How many different multisets a bootstrap over r replicates can draw: C(2r - 1, r)."""
    return int(comb(2 * r - 1, r, exact=True))


# --- the two-level bootstrap --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a trial and its replicates, each with per-prompt values.

    `prompt_sets[i]` names the prompt set replicate i was evaluated on (a key of the bootstrap's
    `clusters` mapping); `values[metric][i]` holds its values aligned with that set's prompts.
    `constants[metric]` holds one value per replicate with no prompt level (a count of cells)."""
    name: str
    prompt_sets: tuple[Hashable, ...]
    values: Mapping[str, Sequence[np.ndarray]]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_replicates(self) -> int:
        return len(self.prompt_sets)


class Draws:
    """The draws of a two-level bootstrap (or, with no level, the observed data as one draw).

    `clusters` maps a prompt set to its prompts' cluster labels [N]; `levels` says what is
    resampled: REPLICATES (with replacement within each arm), CLUSTERS (with replacement within
    each prompt set, one draw per set shared by every replicate evaluated on it), both, or neither.
    The random stream draws the clusters first, so that one replicate with singleton clusters
    gives exactly a plain bootstrap over prompts with the same seed."""

    def __init__(self, clusters: Mapping[Hashable, np.ndarray], arms: Sequence[Arm], n: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0, levels: Sequence[str] = BOTH_LEVELS):
        self.arms = list(arms)
        self.n = n if levels else 1
        rng = np.random.default_rng(seed)
        self.weights: dict[Hashable, np.ndarray] = {}  # prompt set -> [n, N] how often each prompt is drawn
        for key in sorted(clusters, key=str):
            codes, uniques = pd.factorize(np.asarray(clusters[key]).astype(str))  # numbered in order of appearance
            n_clusters = len(uniques)
            if CLUSTERS in levels and n_clusters:
                drawn = rng.integers(0, n_clusters, size=(self.n, n_clusters))
                counts = np.zeros((self.n, n_clusters))
                np.add.at(counts, (np.repeat(np.arange(self.n), n_clusters), drawn.ravel()), 1.0)
                self.weights[key] = counts[:, codes]
            else:
                self.weights[key] = np.ones((self.n, len(codes)))
        self.picks: list[np.ndarray] = []  # per arm: [n, R] the replicates drawn
        for arm in self.arms:
            r = arm.n_replicates
            self.picks.append(rng.integers(0, r, size=(self.n, r)) if REPLICATES in levels
                              else np.tile(np.arange(r), (self.n, 1)))

    def replicate_means(self, arm: int, metric: str) -> np.ndarray:
        """[n, R]: the mean of `metric` over the drawn prompts, for each drawn replicate of arm `arm`."""
        a = self.arms[arm]
        per_replicate = np.empty((self.n, a.n_replicates))
        for i, (key, values) in enumerate(zip(a.prompt_sets, a.values[metric])):
            w = self.weights[key]
            per_replicate[:, i] = (w * np.asarray(values, dtype=float)).sum(axis=1) / w.sum(axis=1)
        return np.take_along_axis(per_replicate, self.picks[arm], axis=1)

    def mean(self, arm: int, metric: str) -> np.ndarray:
        """[n]: the arm's mean of `metric`: over its drawn replicates of their means over the drawn prompts."""
        return np.asarray(self.replicate_means(arm, metric).mean(axis=1))

    def constants(self, arm: int, metric: str) -> np.ndarray:
        """[n, R]: a per-replicate value (no prompt level) of each drawn replicate."""
        values = np.asarray(self.arms[arm].constants[metric], dtype=float)
        return np.asarray(values[self.picks[arm]])


Statistic = Callable[[Draws], np.ndarray]  # draws -> [n] values of the statistic


@dataclass(frozen=True)
class Estimate:
    """A statistic with its two-level percentile interval, and what the interval rests on.

    `spread_replicates` and `spread_clusters` are the distances from the value to the interval's
    ends (low side, high side) when only replicates, or only clusters, are resampled: how much of
    the width each level contributes (what `needed` scales). They cost a bootstrap each, so they
    are drawn when first asked for (by `spreads`)."""
    value: float
    lo: float
    hi: float
    n_prompts: int  # prompts of the largest prompt set
    n_clusters: int  # clusters of that set
    replicates: tuple[int, ...]  # per arm
    undefined: float = 0.0  # share of draws where the statistic was undefined
    spreads: Callable[[], tuple[tuple[float, float], tuple[float, float]]] | None = field(default=None, repr=False,
                                                                                         compare=False)

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @cached_property
    def _levels(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return self.spreads() if self.spreads is not None else ((math.nan, math.nan), (math.nan, math.nan))

    @property
    def spread_replicates(self) -> tuple[float, float]:
        return self._levels[0]

    @property
    def spread_clusters(self) -> tuple[float, float]:
        return self._levels[1]


def _quantiles(draws: np.ndarray) -> tuple[float, float, float]:
    """(low, high, share undefined) of a statistic's draws; NaN ends when too many draws are undefined."""
    draws = np.asarray(draws, dtype=float)
    ok = draws[~np.isnan(draws)]
    undefined = 1.0 - len(ok) / len(draws) if len(draws) else 1.0
    if not len(ok) or undefined > MAX_UNDEFINED:
        return math.nan, math.nan, undefined
    lo, hi = np.quantile(ok, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi), undefined


def seed_of(key: str) -> int:
    """A fixed random seed per item (its name), so that a page is the same bytes every time."""
    return zlib.crc32(key.encode())


def two_level(statistic: Statistic, clusters: Mapping[Hashable, np.ndarray], arms: Sequence[Arm], key: str,
              n: int = BOOTSTRAP_SAMPLES) -> Estimate:
    """The statistic on the observed data with its two-level percentile interval (replicates, then clusters),
    and each level's own spread (for `resolve`)."""
    seed = seed_of(key)
    value = float(statistic(Draws(clusters, arms, levels=()))[0])
    lo, hi, undefined = _quantiles(statistic(Draws(clusters, arms, n, seed)))

    def spread(level: str) -> tuple[float, float]:
        a, b, _ = _quantiles(statistic(Draws(clusters, arms, n, seed, levels=(level,))))
        return (value - a, b - value)

    largest = max(clusters, key=lambda k: len(clusters[k]), default=None)
    labels = np.asarray(clusters[largest]).astype(str) if largest is not None else np.array([])
    return Estimate(value, lo, hi, len(labels), len(np.unique(labels)), tuple(a.n_replicates for a in arms),
                    undefined, lambda: (spread(REPLICATES), spread(CLUSTERS)))


# --- what would resolve an interval that straddles its threshold ------------------------------------------------

@dataclass(frozen=True)
class Needed:
    """How much more data would bring the interval's half-width below the distance to the threshold, at the
    observed variance (half-widths shrink as 1 / sqrt(n)): clusters at the present replicates, replicates at the
    present clusters, or, where neither alone would do, both scaled by `factor`."""
    on_threshold: bool = False
    clusters: int | None = None
    prompts: int | None = None
    replicates: int | None = None
    factor: float | None = None
    replicate_noise_unknown: bool = False


def needed(estimate: Estimate, threshold: float) -> Needed:
    """What would resolve `estimate` against `threshold` (see Needed)."""
    v = estimate.value
    distance = abs(v - threshold)
    if math.isnan(v) or distance < 1e-12:
        return Needed(on_threshold=True)
    side = 0 if v > threshold else 1  # the interval's end that faces the threshold
    h_rep, h_clu = estimate.spread_replicates[side], estimate.spread_clusters[side]
    h_rep = 0.0 if math.isnan(h_rep) else max(h_rep, 0.0)
    h_clu = 0.0 if math.isnan(h_clu) else max(h_clu, 0.0)
    total = (estimate.lo, estimate.hi)[side]
    h_total = abs(v - total) if not math.isnan(total) else math.hypot(h_rep, h_clu)
    unknown = min(estimate.replicates, default=0) < 2
    d2 = distance ** 2
    clusters = prompts = replicates = None
    factor = None
    if h_rep ** 2 < d2 and h_clu > 0:
        clusters = max(estimate.n_clusters + 1, math.ceil(estimate.n_clusters * h_clu ** 2 / (d2 - h_rep ** 2)))
        per_cluster = estimate.n_prompts / estimate.n_clusters if estimate.n_clusters else 1.0
        prompts = math.ceil(clusters * per_cluster)
    if not unknown and h_clu ** 2 < d2 and h_rep > 0:
        r = min(estimate.replicates)
        replicates = max(r + 1, math.ceil(r * h_rep ** 2 / (d2 - h_clu ** 2)))
    if clusters is None and replicates is None:
        factor = max(1.0, (h_total / distance) ** 2)
    return Needed(False, clusters, prompts, replicates, factor, unknown)


__all__ = ["t_interval", "spearman", "rowwise_spearman", "paired_flip_p", "paired_wilcoxon_p", "exact_spearman_p",
           "distinct_resamples", "Arm", "Draws", "Estimate", "two_level", "needed", "Needed", "CONFIDENCE",
           "BOOTSTRAP_SAMPLES"]
