"""reports/stats.py: the two-level bootstrap (written once, checked here against plain bootstraps and on data
whose structure is known), what would resolve an interval, and the scipy-based statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from reports.claims.c5 import theil_sen_rows
from reports.stats import (
    BOOTSTRAP_SAMPLES,
    Arm,
    Draws,
    Estimate,
    distinct_resamples,
    exact_spearman_p,
    needed,
    rowwise_spearman,
    seed_of,
    t_interval,
    two_level,
)


def mean_of(metric: str = "x", arm: int = 0):
    return lambda d: d.mean(arm, metric)


def test_one_replicate_and_singleton_clusters_is_a_plain_bootstrap():
    values = np.random.default_rng(0).normal(size=50)
    e = two_level(mean_of(), {"p": np.arange(50)}, [Arm("a", ("p",), {"x": [values]})], "key")
    rng = np.random.default_rng(seed_of("key"))  # the same draws, written out here
    means = values[rng.integers(0, 50, size=(BOOTSTRAP_SAMPLES, 50))].mean(axis=1)
    assert (e.lo, e.hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    assert e.value == pytest.approx(values.mean())
    scipy_ci = scipy.stats.bootstrap((values,), np.mean, method="percentile", n_resamples=BOOTSTRAP_SAMPLES,
                                     rng=np.random.default_rng(1)).confidence_interval
    assert e.lo == pytest.approx(scipy_ci.low, abs=0.03) and e.hi == pytest.approx(scipy_ci.high, abs=0.03)


def test_clustered_data_gets_a_wider_interval_than_the_prompt_bootstrap():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(10), 10)  # 10 clusters of 10 prompts that share most of their value
    values = rng.normal(size=10)[clusters] + 0.1 * rng.normal(size=100)
    arm = Arm("a", ("p",), {"x": [values]})
    by_cluster = two_level(mean_of(), {"p": clusters}, [arm], "k")
    by_prompt = two_level(mean_of(), {"p": np.arange(100)}, [arm], "k")
    assert by_cluster.hi - by_cluster.lo > 2 * (by_prompt.hi - by_prompt.lo)
    assert (by_cluster.n_clusters, by_cluster.n_prompts) == (10, 100)


def test_replicates_that_disagree_widen_the_interval_and_shared_prompts_pair_two_arms():
    rng = np.random.default_rng(2)
    prompt_effect = rng.normal(size=80)
    seeds = [prompt_effect + shift for shift in (-1.0, 0.0, 1.0)]  # seed-to-seed noise of 1
    one = two_level(mean_of(), {"p": np.arange(80)}, [Arm("a", ("p",), {"x": seeds[1:2]})], "k")
    three = two_level(mean_of(), {"p": np.arange(80)}, [Arm("a", ("p",) * 3, {"x": seeds})], "k")
    assert three.hi - three.lo > 3 * (one.hi - one.lo)
    assert three.spread_replicates[0] > three.spread_clusters[0]  # most of the width is the seeds'

    a, b = [prompt_effect + 0.01 * rng.normal(size=80)], [prompt_effect]

    def diff(d: Draws) -> np.ndarray:
        return d.mean(0, "x") - d.mean(1, "x")
    paired = two_level(diff, {"p": np.arange(80)}, [Arm("a", ("p",), {"x": a}), Arm("b", ("p",), {"x": b})], "k")
    apart = two_level(diff, {"p": np.arange(80), "q": np.arange(80)},
                      [Arm("a", ("p",), {"x": a}), Arm("b", ("q",), {"x": b})], "k")
    assert paired.hi - paired.lo < 0.1 * (apart.hi - apart.lo)  # the same prompts: their noise cancels


def test_what_resolves_an_interval_scales_with_one_over_root_n():
    e = Estimate(0.1, -0.1, 0.3, n_prompts=40, n_clusters=20, replicates=(3,),
                 spreads=lambda: ((0.0, 0.0), (0.2, 0.2)))
    n = needed(e, 0.0)  # a half-width of 0.2 over a distance of 0.1: four times the clusters
    assert n.clusters == 80 and n.prompts == 160 and n.replicates is None and not n.on_threshold
    both = Estimate(0.1, -0.1, 0.3, 40, 20, (3,), spreads=lambda: ((0.15, 0.15), (0.15, 0.15)))
    m = needed(both, 0.0)  # each level alone is wider than the distance: both must grow
    assert m.clusters is None and m.replicates is None and m.factor == pytest.approx(4.0)
    assert needed(Estimate(0.0, -0.1, 0.1, 40, 20, (3,)), 0.0).on_threshold


def test_a_resolution_far_beyond_the_design_is_said_as_such_not_as_a_count():
    from reports.engine import FAR, resolve_text

    near = Estimate(0.1, -0.1, 0.3, 40, 20, (3,), spreads=lambda: ((0.0, 0.0), (0.2, 0.2)))
    assert resolve_text(near, 0.0).startswith("about 80 prompt clusters")
    # replicates' spread a hair under the distance: the clusters needed explode (d^2 - h_rep^2 -> 0)
    edge = Estimate(0.1, -0.1, 0.3, 40, 20, (3,), spreads=lambda: ((0.0999999, 0.0999999), (0.2, 0.2)))
    text = resolve_text(edge, 0.0)
    assert needed(edge, 0.0).clusters > FAR * 20
    assert text.startswith(f"more than {FAR} times the prompt clusters (now 20)") and "about" not in text, text


def test_scipy_statistics():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx(scipy.stats.t.interval(0.95, 2, loc=2.0, scale=scipy.stats.sem([1, 2, 3])))
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)
    assert exact_spearman_p(5) == pytest.approx(2 / math.factorial(5))
    assert distinct_resamples(3) == 10
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    assert rowwise_spearman(x, y) == pytest.approx([scipy.stats.spearmanr(a, b).statistic for a, b in zip(x, y)])
    assert theil_sen_rows(x, y) == pytest.approx([scipy.stats.theilslopes(b, a).slope for a, b in zip(x, y)])
