"""What a trial's cells do, from the `curves` table (workers/analysis.py), computed in one place
for the pages (`actscale report`, docs/findings.md) and for anyone quoting the numbers: data only,
drawn elsewhere.

Decisions are made on val and numbers reported on test, as for the selection rule: the k that
reaches a share of the full effect is found on val, and its test flip_rate is what is quoted.
Intervals over seeds are over the selected trial and its replicates (Student t, seeds are few,
storage.seeds); the table's own `_lo`/`_hi` columns are bootstrap intervals over prompts.
Trial ids repeat across runs of the same unit: give these functions one run's rows
(`curves[curves.run_id == run_id]`); they refuse rows of one trial id from several runs.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from reports.text import interval_text, prompt_interval_text
from storage.k90 import K90_FRACTION, k90_of
from storage.seeds import group_of, t_interval

FRACTION = K90_FRACTION  # the share of the full effect that `k_reaching` asks for by default
TIED = "n/a: tied to positions"  # a method whose cells are token positions cannot run on prompts of another length
# summary columns per metric: (name of the mean, prefix of its interval columns, lowest value it can take)
_METRICS = (("flip_rate", "flip", 0.0), ("ld_after", "ld", -math.inf), ("kl_other", "kl", 0.0))


def _one_run(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.groupby("trial_id").run_id.nunique().gt(1).any():
        raise ValueError("curves rows of one trial id from several runs: pass one run's rows "
                         "(curves[curves.run_id == run_id]); trial ids repeat across runs of a unit")
    return rows


def _rows(curves: pd.DataFrame, trial_ids: list[str], kind: str, split: str) -> pd.DataFrame:
    return _one_run(curves[curves.trial_id.isin(trial_ids) & (curves.kind == kind) & (curves.split == split)])


def full_effect(curves: pd.DataFrame, trial_id: str, split: str) -> float:
    """The trial's flip_rate with all its cells acting (sufficiency at k = n_cells): the effect the
    curves are read as shares of. NaN when the table has no such row."""
    rows = _rows(curves, [trial_id], "sufficiency", split)
    rows = rows[rows.k == rows.n_cells]
    return float(rows.flip_rate.iloc[0]) if len(rows) else math.nan


def k_reaching(curves: pd.DataFrame, trial_id: str, fraction: float = FRACTION, split: str = "val") -> int | None:
    """The smallest k the trial scored (its grid and the bisected points around k90) whose sufficiency
    flip_rate reaches `fraction` of the full effect: how few of its cells carry the effect. Decided on val
    (test is only reported); None where the full effect is 0 (or missing), as any k would then "reach" it."""
    rows = _rows(curves, [trial_id], "sufficiency", split)
    return k90_of(dict(zip(rows.k.astype(int), rows.flip_rate.astype(float))), _n_cells(rows), fraction)


def _n_cells(rows: pd.DataFrame) -> int:
    return int(rows.n_cells.iloc[0]) if len(rows) else 0


def _summaries(rows: pd.DataFrame, by: str, first: str) -> pd.DataFrame:
    """Per value of `by`: each metric's mean over seeds with its 95% t interval over seeds, and the
    bootstrap interval over prompts of the trial `first` (the only band there is with one seed)."""
    out = []
    for key, group in rows.groupby(by, sort=True):
        row: dict[str, Any] = {by: key}
        mine = group[group.trial_id == first]
        for metric, short, low in _METRICS:
            mean, lo, hi = t_interval(group[metric].to_numpy(dtype=float), low, 1.0 if short == "flip" else math.inf)
            row.update({metric: mean, f"{short}_lo": lo, f"{short}_hi": hi,
                        f"{short}_prompt_lo": float(mine[f"{metric}_lo"].iloc[0]) if len(mine) else math.nan,
                        f"{short}_prompt_hi": float(mine[f"{metric}_hi"].iloc[0]) if len(mine) else math.nan})
        row.update(n_seeds=int(group.trial_id.nunique()), n_cells=int(group.n_cells.iloc[0]),
                   ld_before=float(group.ld_before.mean()), n_prompts=int(group.n_prompts.iloc[0]))
        out.append(row)
    return pd.DataFrame(out)


def curve_frame(curves: pd.DataFrame, trial_ids: list[str], kind: str, split: str) -> pd.DataFrame:
    """A sufficiency or necessity curve over seeds (`trial_ids`: the selected trial first, then its
    replicates): per k, flip_rate, ld_after and kl_other as means over seeds with 95% t intervals
    over seeds (flip_lo/flip_hi, ld_lo/ld_hi, kl_lo/kl_hi), the first trial's bootstrap interval
    over prompts (*_prompt_lo/hi), n_seeds, n_cells and rel_k = k / n_cells, which lines up
    models with different numbers of cells. Sorted by k. Only the k every seed scored (the grid): each
    seed's bisected k90 lies off it, and a mean over one seed would be drawn as if over all."""
    rows = _rows(curves, trial_ids, kind, split)
    seeds_at_k = rows.groupby("k").trial_id.transform("nunique")
    rows = rows[seeds_at_k == rows.trial_id.nunique()]
    if rows.empty:
        return pd.DataFrame(columns=["k", "rel_k", "flip_rate", "flip_lo", "flip_hi", "kl_other", "ld_after", "n_seeds"])
    frame = _summaries(rows.assign(k=rows.k.astype(int)), "k", trial_ids[0])
    frame.insert(1, "rel_k", frame.k / frame.n_cells)
    return frame


def strength_frame(curves: pd.DataFrame, trial_ids: list[str], split: str) -> pd.DataFrame:
    """The strength sweep over seeds: per beta (alpha' = 1 + beta (alpha - 1); v' = beta v), the same
    summaries as `curve_frame`, and ld_before, the model's own mean LD on the split (what beta = 0
    gives). Sorted by beta."""
    rows = _rows(curves, trial_ids, "strength", split)
    if rows.empty:
        return pd.DataFrame(columns=["beta", "ld_after", "ld_lo", "ld_hi", "flip_rate", "kl_other", "ld_before",
                                     "n_seeds"])
    return _summaries(rows, "beta", trial_ids[0])


def reach_summary(curves: pd.DataFrame, trial_ids: list[str], fraction: float = FRACTION) -> dict[str, Any]:
    """What a curve figure's caption says of one method: k = `k_reaching` of the first (selected)
    trial, decided on val; the k of each seed; the test flip_rate at that k over seeds (mean, low,
    high) and the test full effect over seeds."""
    first = trial_ids[0]
    k = k_reaching(curves, first, fraction, "val")
    test = _rows(curves, trial_ids, "sufficiency", "test")
    at_k = test[test.k == k].flip_rate.to_numpy(dtype=float) if k is not None else np.array([])
    full = test[test.k == test.n_cells].flip_rate.to_numpy(dtype=float)
    n_cells = test.n_cells.iloc[0] if len(test) else math.nan
    return dict(k=k, n_cells=int(n_cells) if n_cells == n_cells else None, fraction=fraction,
                k_per_seed=[k_reaching(curves, t, fraction, "val") for t in trial_ids],
                val_full=full_effect(curves, first, "val"),
                test_at_k=t_interval(at_k, 0.0, 1.0), test_full=t_interval(full, 0.0, 1.0),
                n_seeds=int(test.trial_id.nunique()))


def heldout_templates(task_options: str | None) -> list[str]:
    """The held-out templates a unit's task options name ([] for none)."""
    try:
        options = json.loads(task_options or "{}")
    except ValueError:
        return []
    held = options.get("heldout_templates") if isinstance(options, dict) else None
    return [str(t) for t in held] if held else []


def _other_options(task_options: str | None) -> dict[str, Any]:
    try:
        options = json.loads(task_options or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in options.items() if k != "heldout_templates"} if isinstance(options, dict) else {}


def _test_numbers(row: Any, trials: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, Any]:
    """A selected trial's test flip_rate and kl_other with intervals over prompts and over seeds, as
    the report's method table gives them (the same helpers)."""
    run_trials = trials[trials.run_id == row.run_id]
    p = predictions[(predictions.run_id == row.run_id) & (predictions.trial_id == row.trial_id)].sort_values("index")
    small = len(p) < int(row.min_split)
    ids = group_of(row.trial_id, run_trials)
    seeds = run_trials.set_index("trial_id").loc[ids]
    flip, kl = t_interval(seeds.test_flip_rate.to_numpy(), 0.0, 1.0), t_interval(seeds.test_kl_other.to_numpy(), 0.0)
    me = run_trials[run_trials.trial_id == row.trial_id].iloc[0]
    return dict(trial_id=row.trial_id, n_test=len(p), test_flip_rate=float(me.test_flip_rate),
                flip_ci95=prompt_interval_text(p.flipped.to_numpy(dtype=float), small),
                test_kl_other=float(me.test_kl_other), kl_ci95=prompt_interval_text(p.kl_other.to_numpy(dtype=float), small),
                seeds=len(ids), flip_over_seeds=interval_text(*flip) if len(ids) > 1 else "-",
                kl_over_seeds=interval_text(*kl) if len(ids) > 1 else "-")


def transfer_table(selected: pd.DataFrame, units: pd.DataFrame, trials: pd.DataFrame, predictions: pd.DataFrame,
                   scalars: pd.DataFrame) -> pd.DataFrame:
    """Does a method carry over to prompts of templates it never saw? For every unit whose task
    holds out templates (its test split is those templates), one row per method of that model,
    task and site: the held-out unit's test numbers (`heldout_*`) beside its in-distribution
    counterpart's (`indist_*`: same model, task, site and method, no held-out templates; the same
    other options preferred). Methods whose cells are token positions (their scalars have a
    position) cannot run on prompts of another length: they get their in-distribution numbers and
    `heldout` = "n/a: tied to positions". `selected`: each unit's selected trial (the `selected`
    view, or report.select_trials); the other frames are the tables of the same runs.

    Columns: model, task, site, method, heldout_templates; heldout and heldout_kl, readable cells
    ("0.193 [0.105, 0.281] (n=57)", or the n/a); then for prefixes heldout_ (empty for a method
    tied to positions) and indist_: trial_id, n_test, test_flip_rate, flip_ci95 (over prompts),
    flip_over_seeds, test_kl_other, kl_ci95, kl_over_seeds, seeds."""
    units = units.drop_duplicates("unit_id").drop(columns="run_id")
    shown = selected[["run_id", "unit_id", "trial_id"]].merge(units, on="unit_id")
    shown = shown.assign(held=[heldout_templates(o) for o in shown.task_options],
                         other=[json.dumps(_other_options(o), sort_keys=True) for o in shown.task_options])
    positional = set(scalars[scalars.position.notna()].unit_id)
    rows = []
    held_units = shown[shown.held.str.len() > 0].sort_values(["model", "task", "site", "method", "run_id"])
    for (model, task, site, other), group in held_units.groupby(["model", "task", "site", "other"], sort=True):
        indist = shown[(shown.model == model) & (shown.task == task) & (shown.site == site) & (shown.held.str.len() == 0)]
        for method in sorted(set(group.method) | set(indist.method)):
            candidates = indist[indist.method == method]
            candidates = candidates.assign(same=candidates.other != other).sort_values(["same", "run_id"])
            held = group[group.method == method]
            base = dict(model=model, task=task, site=site, method=method,
                        heldout_templates=", ".join((held if len(held) else group).held.iloc[0]))
            if len(held):
                numbers = _test_numbers(held.iloc[0], trials, predictions)
                cells = (f"{numbers['test_flip_rate']:.3f} {numbers['flip_ci95']} (n={numbers['n_test']})",
                         f"{numbers['test_kl_other']:.3f} {numbers['kl_ci95']}")
            elif len(candidates) and candidates.unit_id.iloc[0] in positional:
                numbers, cells = {}, (TIED, TIED)
            else:
                continue  # neither run on the held-out templates nor tied to positions: nothing to say
            row = dict(base, heldout=cells[0], heldout_kl=cells[1], **{f"heldout_{k}": v for k, v in numbers.items()})
            if len(candidates):
                row.update({f"indist_{k}": v for k, v in _test_numbers(candidates.iloc[0], trials, predictions).items()})
            rows.append(row)
    columns = ["model", "task", "site", "method", "heldout_templates", "heldout", "heldout_kl"] + [
        f"{side}_{k}" for side in ("heldout", "indist") for k in
        ("trial_id", "n_test", "test_flip_rate", "flip_ci95", "flip_over_seeds", "test_kl_other", "kl_ci95",
         "kl_over_seeds", "seeds")]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["full_effect", "k_reaching", "curve_frame", "strength_frame", "reach_summary", "transfer_table",
           "heldout_templates", "FRACTION", "TIED"]
