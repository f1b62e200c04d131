"""The search space as Optuna distributions, the sampler, and the objective values.

Default: three objectives with NSGA-II: maximize val flip_rate, minimize val kl_other,
minimize val l1. `objective: scalar` (e.g. with TPE) uses one documented score, with moved
sites counted in the same unit for every method (docs/architecture.md, Definitions):
    score = val_flip_rate - val_kl_other - sites_moved / sites_total      (maximized)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search_spaces.config import Search

PARETO_DIRECTIONS = ["maximize", "minimize", "minimize"]
SCALAR_DIRECTIONS = ["maximize"]


def distributions(search: Search, method: str) -> dict[str, BaseDistribution]:
    space = search.space.model_copy(update={k: v for k, v in search.method_space.get(method, {}).__dict__.items()
                                            if v is not None} if method in search.method_space else {})
    out: dict[str, BaseDistribution] = {
        name: FloatDistribution(r.low, r.high, log=r.log)
        for name, r in (("lambda_faith", space.lambda_faith), ("lambda_min", space.lambda_min), ("lr", space.lr))
    }
    if space.steps is not None:
        out["steps"] = IntDistribution(space.steps.low, space.steps.high, log=space.steps.log)
    if space.batch_size:
        out["batch_size"] = CategoricalDistribution(sorted(set(space.batch_size)))
    return out


def _grid(dists: dict[str, BaseDistribution], points: int) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, FloatDistribution):
            if d.log:
                lo, hi = math.log(d.low), math.log(d.high)
                values = [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]
            else:
                values = [d.low + (d.high - d.low) * i / (points - 1) for i in range(points)]
            # exact ends: exp(log(x)) can land just outside the range, which Optuna warns about
            grid[name] = [d.low] + [min(max(v, d.low), d.high) for v in values[1:-1]] + [d.high]
        elif isinstance(d, IntDistribution):
            grid[name] = sorted({round(d.low + (d.high - d.low) * i / (points - 1)) for i in range(points)})
    return grid


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its `study.stop()` once the grid is used up: that raises
    outside `study.optimize`, and here the coordinator decides how many trials a unit gets
    (enqueued trials, such as replicates, carry no grid id either)."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def make_sampler(search: Search, dists: dict[str, BaseDistribution],
                 seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, seeded with `seed` (a unit's own seed: orchestrator/studies.py), else search.seed."""
    seed = search.seed if seed is None else seed
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, search.batch), seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _GridSampler(_grid(dists, search.grid_points), seed=seed)


def grid_size(search: Search, dists: dict[str, BaseDistribution]) -> int:
    return math.prod(len(v) for v in _grid(dists, search.grid_points).values())


def directions(search: Search) -> list[str]:
    return PARETO_DIRECTIONS if search.objective == "pareto" else SCALAR_DIRECTIONS


def objective_values(search: Search, metrics: dict[str, dict[str, float]], sites_moved: int,
                     sites_total: int) -> list[float]:
    val = metrics["val"]
    if search.objective == "pareto":
        return [val["flip_rate"], val["kl_other"], val["l1"]]
    return [val["flip_rate"] - val["kl_other"] - sites_moved / max(1, sites_total)]


__all__ = ["distributions", "make_sampler", "directions", "objective_values", "grid_size"]
