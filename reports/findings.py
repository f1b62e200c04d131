"""docs/findings.md: the claims C1-C6 of Stoehr et al. 2024 checked on one real run (issue #11).

`python -m storage.findings RUN_DIR --out docs/findings.md [--figures docs/figures/findings]`
reads only the run's tables (and RUN_DIR/sweep.yaml and run.json) and writes a markdown page
with one PNG figure per claim. For each claim the page gives the measured evidence with 95%
intervals over prompts where the tables keep them (bootstrap: the predictions table, the curves
table's _lo/_hi per point; none for a difference of two points, C5) and over seeds (Student t
across a unit's selected trial and its replicates), a figure, and a verdict
(supported / not supported / mixed) that the rules below derive from thresholds printed on the
page. Every number on the page is written by `fmt` from a value computed here from the tables,
so the same run always gives the same bytes (tests/test_findings.py regenerates and compares).

Units are shown as everywhere else: by their selected trial (storage/selection.py, chosen on
val) and its replicates (storage/seeds.py); what the cells do comes from storage/curves.py.
Decisions are made on val and reported on test.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from storage.api import open_runs  # noqa: E402
from storage.curves import SLACK, TIED, curve_frame, heldout_templates, reach_summary, strength_frame, transfer_table  # noqa: E402
from storage.errors import StorageError  # noqa: E402
from storage.report import BOOTSTRAP_SAMPLES, bootstrap_ci  # noqa: E402
from storage.schema import Status  # noqa: E402
from storage.seeds import group_of, spearman, t_interval  # noqa: E402
from storage.selection import describe_rule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("Stoehr, Du, Snæbjarnarson, West, Cotterell and Schein (2024), *Activation Scaling for Steering and "
         "Interpreting Language Models*, arXiv 2410.04962")

# The paper's methods as the paper spells them; a run's method is one of them when the names are equal
# ignoring case. The bias-only control of DynScalar (alpha = 1 + b, the activation not read) is this project's.
ACTIVSCALAR, STEERVEC, DYNSCALAR, BIAS_ONLY = "ActivScalar", "SteerVec", "DynScalar", "DynScalar_bias"
ROLES = (ACTIVSCALAR, STEERVEC, DYNSCALAR, BIAS_ONLY)
COLORS = {ACTIVSCALAR: "tab:red", STEERVEC: "tab:blue", DYNSCALAR: "tab:green", BIAS_ONLY: "tab:gray"}

SUPPORTED, NOT_SUPPORTED, MIXED = "supported", "not supported", "mixed"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, MIXED)

# --- verdict thresholds (printed on the page with their rules) ---
MIN_EFFECT = 0.1
C1_FLIP_MARGIN = 0.1
C1_KL_MARGIN = 0.1
C2_MIN_RATIO = 10.0
C3_FRACTION = 0.9
C3_MAX_SHARE = 0.25
C3_MIN_KEPT = 0.5
C3_MAX_RESIDUAL = 0.5
C4_IDENTITY_TOL = 1e-3
C4_MIN_RHO = 0.9
C4_FLIP_TOL = 0.05
C5_LOW = 0.5
C5_HIGH = 0.9
C5_MIN_SEEDS = 2
C5_MIN_UNITS = 0.5
C5_MIN_PAIRS = 5
C6_MIN_RETAINED = 0.5
C6_MIN_GAIN = 0.1

THRESHOLDS: list[tuple[str, float, str]] = [
    ("MIN_EFFECT", MIN_EFFECT, "C1, C3, C5: a pair where neither method reaches this val flip_rate (C1, seed "
     "means), or a unit whose selected trial's full val flip_rate is below it (C3, C5), shows no effect to compare, "
     "localise or trade and is left out (listed)"),
    ("C1_FLIP_MARGIN", C1_FLIP_MARGIN, f"C1: {ACTIVSCALAR}'s test flip_rate (seed mean) at most this below "
     f"{STEERVEC}'s"),
    ("C1_KL_MARGIN", C1_KL_MARGIN, f"C1: {ACTIVSCALAR}'s test kl_other (seed mean) at most this (nats) above "
     f"{STEERVEC}'s"),
    ("C2_MIN_RATIO", C2_MIN_RATIO, f"C2: {STEERVEC}'s n_params / {ACTIVSCALAR}'s n_params at least this"),
    ("C3_FRACTION", C3_FRACTION, "C3: k is the fewest top cells whose val flip_rate reaches this share of the "
     "trial's full val flip_rate"),
    ("C3_MAX_SHARE", C3_MAX_SHARE, f"C3: {ACTIVSCALAR}'s moved share (seed mean) and its selected trial's k / cells "
     "(k decided on val) at most this"),
    ("C3_MIN_KEPT", C3_MIN_KEPT, "C3: only the top k cells keep at least this share of the full test flip_rate "
     "(seed means)"),
    ("C3_MAX_RESIDUAL", C3_MAX_RESIDUAL, "C3: all cells but the top k leave at most this share of the full test "
     "flip_rate (seed means)"),
    ("C4_IDENTITY_TOL", C4_IDENTITY_TOL, "C4: at beta = 0, |LD' - LD| and the flip_rate at most this"),
    ("C4_MIN_RHO", C4_MIN_RHO, "C4: LD' monotone in beta: |Spearman rho(beta, LD')| at least this"),
    ("C4_FLIP_TOL", C4_FLIP_TOL, "C4: over beta >= 0 the flip_rate never falls by more than this from one beta to "
     "the next, and is above 0 at the largest beta"),
    ("C5_LOW", C5_LOW, "C5: each seed's low point is the smallest beta in [0, 1] (strength sweep) or k (top k cells) "
     "whose val flip_rate reaches this share of the seed's own val flip_rate at beta = 1 (all cells)"),
    ("C5_HIGH", C5_HIGH, "C5: each seed's high point: the same with this share; from the low to the high point the "
     "gain is the test flip_rate added, the cost the test kl_other added (strength) or the k / cells added (cells)"),
    ("C5_MIN_SEEDS", C5_MIN_SEEDS, "C5: a unit is judged only with at least this many seeds having both points (a "
     "Student-t interval); a unit shows a trade-off when the seed intervals of its cost and of its gain both lie "
     "above 0"),
    ("C5_MIN_UNITS", C5_MIN_UNITS, "C5: a task trades a term off when at least this share of its units with an effect "
     "show it; two tasks differ in a term when at least this share of their matched units (same model, site, "
     "method, both judged) have disjoint seed intervals of the price (cost per unit of test flip_rate gained)"),
    ("C5_MIN_PAIRS", C5_MIN_PAIRS, "C5, secondary (not in the verdict): a tau over search trials gets a bootstrap "
     "interval only with this many untied pairs"),
    ("C6_MIN_RETAINED", C6_MIN_RETAINED, f"C6: {DYNSCALAR}'s held-out test flip_rate at least this share of its "
     "in-distribution test flip_rate (seed means)"),
    ("C6_MIN_GAIN", C6_MIN_GAIN, f"C6: {DYNSCALAR}'s held-out test flip_rate above its bias-only control's by at "
     "least this (seed means)"),
]

Interval = tuple[float, float, float]  # mean, low, high
NAN_INTERVAL: Interval = (math.nan, math.nan, math.nan)


# --- numbers -------------------------------------------------------------------------------------------------

def fmt(value: Any) -> str:
    """The one way a number is written on the page: integers as they are, other numbers to three
    significant digits (whole numbers from 1000 up), a missing value as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("fmt takes numbers, not booleans")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    x = float(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}"


def ci(interval: Interval) -> str:
    """mean [low, high], or n/a."""
    mean, lo, hi = interval
    if math.isnan(mean):
        return "n/a"
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def prompt_interval(values: np.ndarray) -> Interval:
    """Mean and 95% percentile bootstrap interval over prompts (storage.report.bootstrap_ci, seed 0)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return NAN_INTERVAL
    lo, hi = bootstrap_ci(values)
    return (float(values.mean()), lo, hi)


def seed_interval(values: Sequence[float] | np.ndarray, low: float = -math.inf, high: float = math.inf) -> Interval:
    """Mean and 95% Student-t interval over seeds (storage.seeds.t_interval)."""
    return t_interval(np.asarray(values, dtype=float), low, high)


def both(seeds: Interval, prompts: Interval, n: int, min_split: int) -> str:
    """A cell with the interval over seeds and the selected trial's interval over its n prompts (none on a
    split smaller than the unit's min_split, as in `actscale report`)."""
    if math.isnan(seeds[0]) and math.isnan(prompts[0]):
        return "n/a"
    over_prompts = f"{ci(prompts)} (n={fmt(n)})" if n >= min_split else f"{fmt(prompts[0])} (n={fmt(n)}, too few)"
    return f"seeds {ci(seeds)}; prompts {over_prompts}"


def verdict(passed: Sequence[bool]) -> str:
    """supported: every item passes; not supported: none does (or there is none); mixed otherwise."""
    if passed and all(passed):
        return SUPPORTED
    if not any(passed):
        return NOT_SUPPORTED
    return MIXED


def role_of(method: str) -> str | None:
    """The paper's name of a run's method, or None for another method."""
    return next((r for r in ROLES if r.lower() == str(method).lower()), None)


def _at(frame: pd.DataFrame, column: str, value: float, short: str, prompts: bool = False) -> Interval:
    """(mean, lo, hi) of metric `short` (flip, ld or kl) at one k or beta of a curves.curve_frame or
    strength_frame: over seeds; or, with `prompts`, over prompts, where `frame` must be made of the selected
    trial alone (its mean is then that trial's value, not the seeds' mean)."""
    rows = frame[frame[column] == value] if len(frame) else frame
    if rows.empty:
        return NAN_INTERVAL
    r = rows.iloc[0]
    if prompts and int(r.n_seeds) != 1:
        raise ValueError("an interval over prompts is the selected trial's: pass a frame of that trial alone")
    mean = float(r[{"flip": "flip_rate", "ld": "ld_after", "kl": "kl_other"}[short]])
    suffix = "_prompt" if prompts else ""
    return (mean, float(r[f"{short}{suffix}_lo"]), float(r[f"{short}{suffix}_hi"]))


# --- the run ---------------------------------------------------------------------------------------------------

@dataclass
class Run:
    run_dir: Path
    run_id: str
    revisions: list[str]
    config: dict[str, Any]
    min_flip: float
    units: pd.DataFrame  # one row per unit, with role, heldout and label
    trials: pd.DataFrame
    predictions: pd.DataFrame
    curves: pd.DataFrame
    scalars: pd.DataFrame
    selected: pd.DataFrame  # one row per unit: its selected trial, the unit's columns and the seeds' statistics
    wall_s: float
    wall_source: str


def _wall(run_dir: Path, trials: pd.DataFrame) -> tuple[float, str]:
    """The run's wall time: a `wall_s` value in RUN_DIR (run.json, or a file named wall_s) if there is one,
    else the span of the trials table."""
    try:
        stored = json.loads((run_dir / "run.json").read_text()).get("wall_s")
        if stored is not None:
            return float(stored), "the `wall_s` value in the run directory's run.json"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return float((run_dir / "wall_s").read_text().strip()), "the run directory's file `wall_s`"
    except (OSError, ValueError):
        pass
    timed = trials.dropna(subset=["started_at", "ended_at"])
    if timed.empty:
        return math.nan, "the trials table (no timed trial)"
    span = (timed.ended_at.max() - timed.started_at.min()).total_seconds()
    return float(span), ("the trials table: the last `ended_at` minus the first `started_at` (the model loads "
                         "before the first trial and the analyses after the last are not in it)")


def _order(values: Sequence[str], preferred: Sequence[str]) -> dict[str, int]:
    rank = {v: i for i, v in enumerate(dict.fromkeys(preferred))}
    rest = sorted(set(values) - set(rank))
    return {**rank, **{v: len(rank) + i for i, v in enumerate(rest)}}


def _options_text(task_options: str) -> str:
    """A unit's task options as the page writes them: every number through `fmt`."""
    try:
        options = json.loads(task_options or "{}")
    except ValueError:
        return str(task_options)

    def shown(v: Any) -> str:
        if isinstance(v, list):
            return "+".join(shown(x) for x in v)
        return fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    return ", ".join(f"{k} {shown(v)}" for k, v in sorted(options.items())) or "none"


def load_run(run_dir: Path) -> Run:
    runs = open_runs(run_dir)
    runs_table = runs.runs.sort_values("created_at")
    if runs_table.empty:
        raise StorageError(f"{run_dir} has no runs row: is it a finished run?")
    try:
        run_id = str(json.loads((run_dir / "run.json").read_text())["run_id"])
    except (OSError, ValueError, KeyError):
        run_id = str(runs_table.run_id.iloc[-1])
    try:
        config = yaml.safe_load((run_dir / "sweep.yaml").read_text()) or {}
    except OSError:
        config = yaml.safe_load(str(runs_table.config_yaml.iloc[-1])) or {}
    min_flip = float((config.get("selection") or {}).get("min_flip", 0.9))
    units = runs.units.drop_duplicates("unit_id").copy()
    units["role"] = [role_of(m) for m in units.method]
    units["heldout"] = [", ".join(heldout_templates(o)) for o in units.task_options]
    units["label"] = [f"{t} (held out: {h})" if h else t for t, h in zip(units.task, units.heldout)]
    for task, group in units[units.heldout == ""].groupby("task"):
        if group.task_options.nunique() > 1:  # the same task twice with other options: tell them apart
            units.loc[group.index, "label"] = [f"{task} ({_options_text(o)})" for o in group.task_options]
    tasks = [t if isinstance(t, str) else t.get("name", "") for t in config.get("tasks", [])]
    orders = {"model": _order(units.model, config.get("models", [])), "task": _order(units.task, tasks),
              "site": _order(units.site, config.get("sites", [])), "role": _order(units.role.fillna(""), ROLES)}
    units["order"] = [(orders["model"][m], orders["task"][t], h, orders["site"][s], orders["role"][r or ""], m2)
                      for m, t, h, s, r, m2 in zip(units.model, units.task, units.heldout, units.site, units.role,
                                                   units.method)]
    units = units.sort_values("order").reset_index(drop=True)
    trials, predictions = runs.trials, runs.predictions
    chosen = runs.selected()[["unit_id", "trial_id", "selected_by"]]
    selected = _with_seed_stats(units.merge(chosen, on="unit_id", how="inner"), trials, predictions)
    wall_s, wall_source = _wall(run_dir, trials)
    revisions = list(dict.fromkeys(str(r) for r in runs_table.git_revision))
    return Run(run_dir, run_id, revisions, config, min_flip, units, trials, predictions, runs.table("curves"),
               runs.scalars, selected, wall_s, wall_source)


def _with_seed_stats(selected: pd.DataFrame, trials: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    by_id = trials.set_index("trial_id")
    rows = []
    for row in selected.itertuples(index=False):
        seeds = group_of(row.trial_id, trials)
        g = by_id.loc[seeds]
        p = predictions[predictions.trial_id == row.trial_id].sort_values("index")
        first = by_id.loc[row.trial_id]
        rows.append(dict(
            seeds=seeds, n_seeds=len(seeds), n_params=int(first.n_params), n_prompts=len(p),
            val_flip=seed_interval(g.val_flip_rate, 0, 1), test_flip=seed_interval(g.test_flip_rate, 0, 1),
            test_kl=seed_interval(g.test_kl_other, 0), moved=seed_interval(g.sites_moved / g.sites_total, 0, 1),
            flip_prompts=prompt_interval(p.flipped.to_numpy(dtype=float)),
            kl_prompts=prompt_interval(p.kl_other.to_numpy(dtype=float))))
    return pd.concat([selected.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def _in(run: Run, heldout: bool = False) -> pd.DataFrame:
    """Selected rows of the in-distribution tasks (or of the tasks with held-out templates)."""
    return run.selected[(run.selected.heldout != "") == heldout]


def _pairs(run: Run, first: str, second: str, heldout: bool = False) -> list[tuple[Any, Any]]:
    """(first role's selected row, second role's) for each model, task and site that has both."""
    out = []
    for _, group in _in(run, heldout).groupby(["model", "label", "site"], sort=False):
        a, b = group[group.role == first], group[group.role == second]
        if len(a) and len(b):
            out.append((a.iloc[0], b.iloc[0]))
    return out


def _unpaired(run: Run, first: str, second: str) -> list[str]:
    """A line naming the in-distribution units of either role that `_pairs` leaves out for lack of the other."""
    s = _in(run)
    both_roles = {k for k, g in s.groupby(["model", "label", "site"], sort=False) if {first, second} <= set(g.role)}
    alone = [f"{_where(r, run)} / {r.role}" for r in s.itertuples(index=False)
             if r.role in (first, second) and (r.model, r.label, r.site) not in both_roles]
    return ["", f"Left out, no {first} / {second} pair at the same model, task and site: "
            f"{'; '.join(alone) if alone else 'none'}."]


def _where(row: Any, run: Run) -> str:
    several = run.units.model.nunique() > 1
    return (f"{row.model} / " if several else "") + f"{row.label} / {row.site}"


def _cell(row: Any, metric: str) -> str:
    """A selected row's test flip_rate or kl_other over seeds and over prompts."""
    return both(getattr(row, f"test_{metric}"), getattr(row, f"{metric}_prompts"), row.n_prompts, int(row.min_split))


# --- claims ------------------------------------------------------------------------------------------------------

@dataclass
class Claim:
    key: str
    title: str
    statement: str
    body: list[str] = field(default_factory=list)
    verdict: str = NOT_SUPPORTED
    reason: str = ""
    figure: str = ""  # file name in the figures folder


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["(no rows: the run has no such units)"]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def _count(passed: Sequence[bool], noun: str) -> str:
    return f"{fmt(sum(passed))} of {fmt(len(passed))} {noun} pass"


def claim_c1(run: Run) -> Claim:
    c = Claim("C1", "Effectiveness and faithfulness comparable to steering vectors",
              f"{ACTIVSCALAR} reaches an effectiveness (test flip_rate) and a faithfulness (test kl_other) comparable "
              f"to {STEERVEC}'s on IOI and the country-capital conflict task (ccc).")
    rows, passed, left_out = [], [], 0
    for a, s in _pairs(run, ACTIVSCALAR, STEERVEC):
        cells = [_where(a, run), f"{fmt(a.n_seeds)} / {fmt(s.n_seeds)}", _cell(a, "flip"), _cell(s, "flip"),
                 _cell(a, "kl"), _cell(s, "kl")]
        if not max(a.val_flip[0], s.val_flip[0]) >= MIN_EFFECT:  # decided on val
            left_out += 1
            rows.append(cells + [f"left out: val flip_rate {fmt(a.val_flip[0])} / {fmt(s.val_flip[0])}"])
            continue
        flip_ok = a.test_flip[0] >= s.test_flip[0] - C1_FLIP_MARGIN
        kl_ok = a.test_kl[0] <= s.test_kl[0] + C1_KL_MARGIN
        passed.append(bool(flip_ok and kl_ok))
        rows.append(cells + ["yes" if passed[-1] else "no"])
    c.body += [f"Each unit's test prompts. A pair passes when {ACTIVSCALAR}'s flip_rate is at most C1_FLIP_MARGIN = "
               f"{fmt(C1_FLIP_MARGIN)} below {STEERVEC}'s and its kl_other at most C1_KL_MARGIN = {fmt(C1_KL_MARGIN)} "
               f"above {STEERVEC}'s (seed means; being better passes). The rule is on means, not on whether the "
               "intervals overlap: with few seeds the t intervals are so wide that an overlap rule would call almost "
               f"any pair comparable. A pair where neither reaches a val flip_rate (seed mean) of MIN_EFFECT = "
               f"{fmt(MIN_EFFECT)} is left out (decided on val): both failing is no evidence either way.", ""]
    c.body += _table(["unit", "seeds", f"{ACTIVSCALAR} flip_rate", f"{STEERVEC} flip_rate",
                      f"{ACTIVSCALAR} kl_other", f"{STEERVEC} kl_other", "comparable"], rows)
    c.body += _unpaired(run, ACTIVSCALAR, STEERVEC)
    c.verdict = verdict(passed)
    if passed:
        c.reason = _count(passed, f"{ACTIVSCALAR} / {STEERVEC} pairs") + (
            f"; {fmt(left_out)} left out, neither flips" if left_out else "")
    elif left_out:
        c.reason = f"in no pair did {ACTIVSCALAR} or {STEERVEC} reach a val flip_rate of MIN_EFFECT"
    else:
        c.reason = f"the run has no unit pair of {ACTIVSCALAR} and {STEERVEC}"
    return c


def claim_c2(run: Run) -> Claim:
    c = Claim("C2", "Far fewer parameters", f"{ACTIVSCALAR} needs far fewer parameters than {STEERVEC}.")
    rows, passed = [], []
    for a, s in _pairs(run, ACTIVSCALAR, STEERVEC):
        ratio = s.n_params / a.n_params if a.n_params else math.inf
        passed.append(bool(ratio >= C2_MIN_RATIO))
        indist = _in(run)
        dyn = indist[(indist.model == a.model) & (indist.label == a.label) & (indist.site == a.site)
                     & (indist.role == DYNSCALAR)]
        rows.append([_where(a, run), fmt(a.n_params), fmt(s.n_params), fmt(ratio),
                     fmt(int(dyn.n_params.iloc[0])) if len(dyn) else "n/a", "yes" if passed[-1] else "no"])
    c.body += ["trials.n_params: a count, the same for every trial of a unit, so it has no interval. A unit passes "
               f"when {STEERVEC}'s / {ACTIVSCALAR}'s is at least C2_MIN_RATIO = {fmt(C2_MIN_RATIO)}. {DYNSCALAR}'s "
               "is shown beside them.", ""]
    c.body += _table(["unit", ACTIVSCALAR, STEERVEC, f"{STEERVEC} / {ACTIVSCALAR}", DYNSCALAR, "far fewer"], rows)
    c.body += _unpaired(run, ACTIVSCALAR, STEERVEC)
    c.verdict = verdict(passed)
    c.reason = (_count(passed, "units") if passed else f"the run has no unit pair of {ACTIVSCALAR} and {STEERVEC}")
    return c


@dataclass
class Localised:
    """What a selected trial's top cells do (storage/curves.py): k decided on val, test reported."""
    val_full: float
    k: int | None  # the selected trial's k reaching C3_FRACTION on val
    n_cells: int
    k_share: Interval  # k / n_cells over seeds (the seeds whose k exists)
    full: Interval  # test flip_rate of all cells, over seeds
    kept: Interval  # test flip_rate of only the top k, over seeds
    removed: Interval  # test flip_rate of all but the top k, over seeds
    full_prompts: Interval
    kept_prompts: Interval
    removed_prompts: Interval
    n_prompts: int

    @property
    def share(self) -> float:
        return self.k / self.n_cells if self.k is not None and self.n_cells else math.nan


def _localise(run: Run, row: Any) -> Localised:
    reach = reach_summary(run.curves, list(row.seeds), C3_FRACTION)
    n_cells = int(reach["n_cells"] or 0)
    shares = [k / n_cells for k in reach["k_per_seed"] if k is not None and n_cells]
    k = reach["k"]
    seeds, first = list(row.seeds), [row.seeds[0]]
    kept, kept1 = (curve_frame(run.curves, ids, "sufficiency", "test") for ids in (seeds, first))
    removed, removed1 = (curve_frame(run.curves, ids, "necessity", "test") for ids in (seeds, first))
    key = float(k) if k is not None else math.nan
    n_prompts = int(kept.n_prompts.iloc[0]) if len(kept) else 0
    return Localised(reach["val_full"], k, n_cells, seed_interval(shares, 0, 1), reach["test_full"],
                     _at(kept, "k", key, "flip"), _at(removed, "k", key, "flip"), _at(kept1, "k", n_cells, "flip", True),
                     _at(kept1, "k", key, "flip", True), _at(removed1, "k", key, "flip", True), n_prompts)


def claim_c3(run: Run) -> Claim:
    c = Claim("C3", "A few components matter",
              f"{ACTIVSCALAR}'s scalars pinpoint a few components that matter: few cells move, a few top cells reach "
              "most of the effect and removing them removes it, where steering vectors spread over more.")
    rows, passed, left_out = [], [], 0
    for a, s in _pairs(run, ACTIVSCALAR, STEERVEC):
        la, ls = _localise(run, a), _localise(run, s)
        if not la.val_full >= MIN_EFFECT:
            left_out += 1
            why = "left out: no curves (not analyzed)" if math.isnan(la.val_full) else "left out: no effect"
            rows.append([_where(a, run), ci(a.moved), ci(s.moved), fmt(la.val_full)] + ["n/a"] * 6 + [why])
            continue
        if ls.val_full >= MIN_EFFECT and ls.k is not None:
            spread = la.share <= ls.share
        else:
            spread = a.moved[0] <= s.moved[0]
        ok = (a.moved[0] <= C3_MAX_SHARE and la.share <= C3_MAX_SHARE and la.full[0] > 0
              and la.kept[0] >= C3_MIN_KEPT * la.full[0] and la.removed[0] <= C3_MAX_RESIDUAL * la.full[0] and spread)
        passed.append(bool(ok))
        min_split = int(a.min_split)
        rows.append([_where(a, run), ci(a.moved), ci(s.moved), fmt(la.val_full),
                     f"{fmt(la.k)} of {fmt(la.n_cells)}", ci(la.k_share),
                     ci(ls.k_share) if ls.val_full >= MIN_EFFECT else "n/a (no effect)",
                     both(la.full, la.full_prompts, la.n_prompts, min_split),
                     both(la.kept, la.kept_prompts, la.n_prompts, min_split),
                     both(la.removed, la.removed_prompts, la.n_prompts, min_split), "yes" if ok else "no"])
    c.body += ["Moved share: sites_moved / sites_total over seeds (each method's own moved measure, "
               "units.moved_measure). k: the fewest cells of largest effect whose val flip_rate alone reaches "
               f"C3_FRACTION = {fmt(C3_FRACTION)} of the selected trial's full val flip_rate (curves, kind "
               "sufficiency); k / cells over seeds uses each seed's own k (a seed with no val effect has none and is not "
               "counted). At the selected trial's k, on test: the "
               "flip_rate with all cells, with only the top k (sufficiency) and with all but the top k (necessity). "
               f"A unit passes when {ACTIVSCALAR}'s moved share (seed mean) and its selected trial's k / cells are at "
               f"most C3_MAX_SHARE = "
               f"{fmt(C3_MAX_SHARE)}, only the top k keep at least C3_MIN_KEPT = {fmt(C3_MIN_KEPT)} of the full test "
               f"flip_rate, removing them leaves at most C3_MAX_RESIDUAL = {fmt(C3_MAX_RESIDUAL)} of it, and its "
               f"selected k / cells is not above {STEERVEC}'s (its moved share not above {STEERVEC}'s where "
               f"{STEERVEC} has no effect to localise). A unit whose full val flip_rate is below MIN_EFFECT = "
               f"{fmt(MIN_EFFECT)} has nothing to localise and is left out.", ""]
    c.body += _table(["unit", f"{ACTIVSCALAR} moved share", f"{STEERVEC} moved share", f"{ACTIVSCALAR} full val flip",
                      f"{ACTIVSCALAR} k (selected)", f"{ACTIVSCALAR} k / cells", f"{STEERVEC} k / cells",
                      "test flip, all cells", "test flip, only top k", "test flip, without top k", "passes"], rows)
    c.body += _unpaired(run, ACTIVSCALAR, STEERVEC)
    c.verdict = verdict(passed)
    if passed:
        c.reason = _count(passed, "units") + (f"; {fmt(left_out)} left out, no effect" if left_out else "")
    elif left_out:
        c.reason = f"no selected {ACTIVSCALAR} trial reached a full val flip_rate of MIN_EFFECT: nothing to localise"
    else:
        c.reason = f"the run has no unit pair of {ACTIVSCALAR} and {STEERVEC}"
    return c


@dataclass
class StrengthCheck:
    identity: bool
    rho: float
    grows: bool

    @property
    def passed(self) -> bool:
        return self.identity and abs(self.rho) >= C4_MIN_RHO and self.grows


def strength_check(curves: pd.DataFrame, trial_id: str) -> StrengthCheck:
    """C4's rules on one trial's strength sweep on test."""
    r = strength_frame(curves, [trial_id], "test")
    if r.empty:
        return StrengthCheck(False, math.nan, False)
    zero = r[r.beta == 0]
    identity = bool(len(zero) and abs(float(zero.ld_after.iloc[0]) - float(zero.ld_before.iloc[0])) <= C4_IDENTITY_TOL
                    and float(zero.flip_rate.iloc[0]) <= C4_IDENTITY_TOL)
    rho = spearman(r.beta.to_numpy(dtype=float), r.ld_after.to_numpy(dtype=float)) if len(r) > 2 else math.nan
    up = r[r.beta >= 0].flip_rate.to_numpy(dtype=float)
    grows = bool(len(up) > 1 and (np.diff(up) >= -C4_FLIP_TOL).all() and up[-1] > 0)
    return StrengthCheck(identity, rho, grows)


def claim_c4(run: Run) -> Claim:
    c = Claim("C4", "A continuous strength",
              "Scaling strengthens, weakens or reverses a behaviour by a continuous strength beta (alpha' = 1 + "
              "beta (alpha - 1)): LD' is monotone in beta, beta = 0 is the model, and flips grow with beta.")
    s = _in(run)[_in(run).role == ACTIVSCALAR]
    rows, passed = [], []
    betas: list[float] = []
    for row in s.itertuples(index=False):
        checks = [strength_check(run.curves, tid) for tid in row.seeds]
        passed += [k.passed for k in checks]
        frame = strength_frame(run.curves, list(row.seeds), "test")
        alone = strength_frame(run.curves, [row.seeds[0]], "test")  # the selected trial: its interval over prompts
        if frame.empty:
            rows.append([_where(row, run)] + ["n/a"] * 8 + [f"0 of {fmt(len(checks))}"])
            continue
        betas = sorted(set(betas) | {float(b) for b in frame.beta})
        lo, hi = float(frame.beta.min()), float(frame.beta.max())
        n, min_split = int(frame.n_prompts.iloc[0]), int(row.min_split)

        def cell(beta: float, short: str, frame: pd.DataFrame = frame, alone: pd.DataFrame = alone, n: int = n,
                 min_split: int = min_split) -> str:
            return both(_at(frame, "beta", beta, short), _at(alone, "beta", beta, short, True), n, min_split)

        rows.append([_where(row, run), fmt(float(frame.ld_before.iloc[0])), cell(lo, "ld"), cell(0.0, "ld"),
                     cell(1.0, "ld"), cell(hi, "ld"), cell(1.0, "flip"), cell(hi, "flip"), fmt(checks[0].rho),
                     f"{fmt(sum(k.passed for k in checks))} of {fmt(len(checks))}"])
    c.body += [f"The strength sweep (curves, kind strength, test prompts) of each selected {ACTIVSCALAR} trial and its "
               f"replicates, at betas {', '.join(fmt(b) for b in betas) or 'none'}: mean LD' and flip_rate at the "
               "smallest beta, 0, 1 and the largest beta. Each seed is checked: it passes when beta = 0 is the model "
               f"(|LD' - LD| and flip_rate at most C4_IDENTITY_TOL = {fmt(C4_IDENTITY_TOL)}), LD' is monotone in beta "
               f"(|Spearman rho(beta, LD')| at least C4_MIN_RHO = {fmt(C4_MIN_RHO)}; rho of the selected trial "
               "shown) and flips grow with beta >= 0 (the flip_rate never falls by more than C4_FLIP_TOL = "
               f"{fmt(C4_FLIP_TOL)} and is above 0 at the largest beta). LD is the model's own mean logit difference "
               "(correct minus wrong answer); below 0 the answer is flipped.", ""]
    c.body += _table(["unit", "LD (model)", "LD' smallest beta", "LD' beta 0", "LD' beta 1", "LD' largest beta",
                      "flip_rate beta 1", "flip_rate largest beta", "rho(beta, LD')", "seeds passing"], rows)
    c.verdict = verdict(passed)
    c.reason = (_count(passed, f"{ACTIVSCALAR} seeds (selected trials and replicates)") if passed else
                f"the run has no strength sweep of a selected {ACTIVSCALAR} trial")
    return c


def pair_counts(trials: pd.DataFrame, x: str, y: str) -> dict[str, tuple[int, int]]:
    """unit_id -> (concordant, discordant) pairs of its trials in x and y; ties in either are skipped."""
    out = {}
    for unit_id, g in trials.groupby("unit_id", sort=True):
        a, b = g[x].to_numpy(dtype=float), g[y].to_numpy(dtype=float)
        i, j = np.triu_indices(len(a), 1)
        sign = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
        out[str(unit_id)] = (int((sign > 0).sum()), int((sign < 0).sum()))
    return out


def stratified_tau(counts: dict[str, tuple[int, int]]) -> tuple[Interval, int]:
    """Kendall's tau over pairs of trials of the same unit, pooled over units, with a 95% bootstrap interval
    over units (seed 0); and the number of untied pairs."""
    values = np.array(list(counts.values()), dtype=float).reshape(-1, 2)
    pairs = int(values.sum())

    def tau(v: np.ndarray) -> float:
        total = v.sum()
        return float((v[:, 0].sum() - v[:, 1].sum()) / total) if total else math.nan

    if pairs < C5_MIN_PAIRS:
        return (tau(values) if pairs else math.nan, math.nan, math.nan), pairs
    rng = np.random.default_rng(0)
    draws = np.array([tau(values[i]) for i in rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))])
    draws = draws[~np.isnan(draws)]
    return (tau(values), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))), pairs


TERMS = (("val_kl_other", "kl_other"), ("val_l1", "l1"))


def _search_trials(run: Run) -> pd.DataFrame:
    """Complete search trials of the in-distribution units, with `ld_shift` = val LD - val LD' (how far the
    trial moved the logit difference: effectiveness that does not saturate at 1 as the flip_rate does)."""
    search = run.trials[(run.trials.status == Status.COMPLETE) & run.trials.replicate_of.isna()]
    search = search.merge(_in(run)[["unit_id", "label", "role", "method"]], on="unit_id")
    return search.assign(ld_shift=search.val_ld_before - search.val_ld_after)


# --- C5: the price of effectiveness along a trial's own paths --------------------------------------------------

STRENGTH, CELLS = "strength", "cells"
C5_TERMS = {STRENGTH: "faithfulness", CELLS: "minimality"}
C5_COSTS = {STRENGTH: "the test kl_other added along beta (nats)", CELLS: "the share of cells added along the top k"}


@dataclass
class SeedStep:
    """One seed's step from C5_LOW to C5_HIGH of its own val effect along one path (points decided on val)."""
    val_full: float  # val flip_rate at beta = 1 (all cells)
    n_cells: int
    low: float | None = None  # beta or k
    high: float | None = None
    gain: float = math.nan  # test flip_rate at high minus at low
    cost: float = math.nan  # test kl_other (strength) or k / n_cells (cells) at high minus at low
    unresolved: bool = False  # both points on one grid k: the curves' grid (analysis.k_step) cannot tell the step

    @property
    def price(self) -> float:
        return self.cost / self.gain if self.gain > 0 else math.nan


@dataclass
class Tradeoff:
    """A unit's step over its seeds (the selected trial first)."""
    status: str  # "" when the unit has an effect; otherwise why it is left out
    steps: list[SeedStep]

    @property
    def first(self) -> SeedStep:
        return self.steps[0]

    @property
    def done(self) -> list[SeedStep]:
        return [s for s in self.steps if s.low is not None and not s.unresolved]

    @property
    def unresolved(self) -> bool:
        """Not judged: too few seeds with both points resolved by the grid (not evidence either way)."""
        return not self.status and not self.judged

    def over_seeds(self, what: str) -> Interval:
        return seed_interval([getattr(s, what) for s in self.done])

    @property
    def n_priced(self) -> int:
        return sum(not math.isnan(s.price) for s in self.done)

    @property
    def judged(self) -> bool:
        return not self.status and len(self.done) >= C5_MIN_SEEDS

    @property
    def shown(self) -> bool:
        return self.judged and self.over_seeds("cost")[1] > 0 and self.over_seeds("gain")[1] > 0

    @property
    def priced(self) -> bool:
        return not self.status and self.n_priced >= C5_MIN_SEEDS


def _path_frame(curves: pd.DataFrame, trial_id: str, path: str, split: str) -> tuple[pd.DataFrame, str]:
    """One trial's strength sweep over beta in [0, 1], or its sufficiency curve; and the column of its points."""
    if path == STRENGTH:
        frame = strength_frame(curves, [trial_id], split)
        return (frame[(frame.beta >= 0) & (frame.beta <= 1)] if len(frame) else frame), "beta"
    return curve_frame(curves, [trial_id], "sufficiency", split), "k"


def _value(frame: pd.DataFrame, column: str, key: float | None, metric: str) -> float:
    rows = frame[frame[column] == key] if key is not None and len(frame) else frame.iloc[0:0]
    return float(rows[metric].iloc[0]) if len(rows) else math.nan


def seed_step(curves: pd.DataFrame, trial_id: str, path: str) -> SeedStep:
    """The low and high points of one trial on val (the smallest beta or k reaching C5_LOW and C5_HIGH of its val
    flip_rate at beta = 1 / all cells) and what the step between them gains and costs on test."""
    val, column = _path_frame(curves, trial_id, path, "val")
    if val.empty:
        return SeedStep(math.nan, 0)
    n_cells = int(val.n_cells.iloc[0])
    full = _value(val, column, 1.0 if path == STRENGTH else n_cells, "flip_rate")
    step = SeedStep(full, n_cells)
    if not full > 0:
        return step
    step.low, step.high = (float(val[val.flip_rate >= share * full - SLACK][column].min()) for share in (C5_LOW, C5_HIGH))
    if step.low == step.high:
        step.unresolved = True
        return step
    test, _ = _path_frame(curves, trial_id, path, "test")
    step.gain = _value(test, column, step.high, "flip_rate") - _value(test, column, step.low, "flip_rate")
    if path == STRENGTH:
        step.cost = _value(test, column, step.high, "kl_other") - _value(test, column, step.low, "kl_other")
    else:
        step.cost = (step.high - step.low) / n_cells
    return step


def tradeoff(curves: pd.DataFrame, seeds: Sequence[str], path: str) -> Tradeoff:
    """A unit's step along `path` for each of its seeds; left out (status) when its selected trial has no such
    curve or a val flip_rate at beta = 1 below MIN_EFFECT."""
    steps = [seed_step(curves, tid, path) for tid in seeds]
    full = steps[0].val_full
    status = ("left out: no such curve" if math.isnan(full) else
              f"left out: val flip_rate {fmt(full)} < MIN_EFFECT" if not full >= MIN_EFFECT else "")
    return Tradeoff(status, steps)


def _points(t: Tradeoff, path: str) -> str:
    f = t.first
    if f.low is None:
        return "n/a"
    if path == STRENGTH:
        return f"beta {fmt(f.low)} to {fmt(f.high)}"
    return f"k {fmt(int(f.low))} to {fmt(int(f.high or 0))} of {fmt(f.n_cells)}"


def _mark(t: Tradeoff) -> str:
    if t.status:
        return t.status
    if t.unresolved:
        return (f"not judged: {fmt(len(t.done))} seed(s) with two distinct points, under C5_MIN_SEEDS (a finer grid: "
                "analysis.k_step, or more betas)")
    return "yes" if t.shown else "no"


def _tradeoff_rows(run: Run, steps: dict[tuple[str, str], Tradeoff], path: str) -> list[list[str]]:
    rows = []
    for row in _in(run).itertuples(index=False):
        t = steps[(str(row.unit_id), path)]
        rows.append([f"{_where(row, run)} / {row.role or row.method}", f"{fmt(len(t.done))} of {fmt(len(t.steps))}",
                     fmt(t.first.val_full), _points(t, path), ci(t.over_seeds("gain")), ci(t.over_seeds("cost")),
                     f"{ci(t.over_seeds('price'))} (seeds: {fmt(t.n_priced)})", _mark(t)])
    return rows


def _task_items(run: Run, steps: dict[tuple[str, str], Tradeoff]) -> list[tuple[str, str, bool | None]]:
    """(item, evidence, passes) for each task and term: the share of its units with an effect showing it, among
    those the curves' grid resolves; passes is None (not in the verdict) when the grid resolves none."""
    items: list[tuple[str, str, bool | None]] = []
    for label, g in _in(run).groupby("label", sort=False):
        for path in (STRENGTH, CELLS):
            ts = [steps[(str(u), path)] for u in g.unit_id]
            with_effect = [t for t in ts if not t.status and not t.unresolved]
            unresolved = sum(t.unresolved for t in ts if not t.status)
            shown = sum(t.shown for t in with_effect)
            ok = (bool(with_effect) and shown / len(with_effect) >= C5_MIN_UNITS) if with_effect or not unresolved \
                else None
            items.append((f"{label}: effectiveness costs {C5_TERMS[path]} ({path})",
                          f"{fmt(shown)} of {fmt(len(with_effect))} units with an effect show it "
                          f"({fmt(len(ts) - len(with_effect) - unresolved)} left out, {fmt(unresolved)} not judged)",
                          ok))
    return items


def _differs(a: Tradeoff, b: Tradeoff, names: tuple[str, str]) -> str:
    """Which task's price is higher beyond both seed intervals; "no" when they overlap, "n/a" when unpriced."""
    if not (a.priced and b.priced):
        return "n/a: " + "; ".join(f"{name} {t.status or 'priced on fewer than C5_MIN_SEEDS seeds'}"
                                   for name, t in zip(names, (a, b)) if not t.priced)
    pa, pb = a.over_seeds("price"), b.over_seeds("price")
    return f"{names[0]} higher" if pa[1] > pb[2] else f"{names[1]} higher" if pb[1] > pa[2] else "no (overlap)"


def _task_pairs(run: Run, steps: dict[tuple[str, str], Tradeoff],
                ) -> tuple[list[list[str]], list[tuple[str, str, bool | None]]]:
    """Rows comparing each pair of tasks unit by unit (same model, site, method), and an item per pair and term."""
    s = _in(run)
    labels = list(dict.fromkeys(str(x) for x in s.label))
    rows: list[list[str]] = []
    items: list[tuple[str, str, bool | None]] = []
    for i, first in enumerate(labels):
        for second in labels[i + 1:]:
            units = {lab: {(r.model, r.site, r.method): str(r.unit_id) for r in s[s.label == lab].itertuples()}
                     for lab in (first, second)}
            keys = list(dict.fromkeys(list(units[first]) + list(units[second])))
            for path in (STRENGTH, CELLS):
                marks, unresolved = [], 0
                for key in keys:
                    a, b = (units[lab].get(key) for lab in (first, second))
                    where = (f"{key[0]} / " if run.units.model.nunique() > 1 else "") + f"{key[1]} / " \
                        f"{role_of(key[2]) or key[2]}"
                    if a is None or b is None:
                        rows.append([f"{first} vs {second}", path, where, "n/a", "n/a",
                                     f"n/a: no unit on {second if b is None else first}"])
                        continue
                    ta, tb = steps[(a, path)], steps[(b, path)]
                    unresolved += ta.unresolved or tb.unresolved
                    marks.append(_differs(ta, tb, (first, second)))
                    rows.append([f"{first} vs {second}", path, where, ci(ta.over_seeds("price")),
                                 ci(tb.over_seeds("price")), marks[-1]])
                judged = [m for m in marks if not m.startswith("n/a")]
                differ = sum(m.endswith(" higher") for m in judged)
                items.append((f"{first} vs {second}: the price in {C5_TERMS[path]} ({path}) differs",
                              f"{fmt(differ)} of {fmt(len(judged))} matched units priced on both",
                              bool(judged) and differ / len(judged) >= C5_MIN_UNITS
                              if judged or not unresolved else None))
    if len(labels) < 2:
        items += [(f"tasks differ in {C5_TERMS[path]} ({path})", "the run has one in-distribution task", False)
                  for path in (STRENGTH, CELLS)]
    return rows, items


def _search_lines(run: Run) -> list[str]:
    """The secondary line: Kendall's tau over pairs of a unit's search trials (not in the verdict)."""
    rows = []
    for label, g in _search_trials(run).groupby("label", sort=False):
        by_method = [(str(m), gm) for m, gm in g.groupby("method", sort=False)] + [("all methods", g)]
        for method, gm in by_method:
            cells = [fmt(gm.unit_id.nunique())]
            for column, _ in TERMS:
                interval, pairs = stratified_tau(pair_counts(gm, "ld_shift", column))
                cells.append(f"{ci(interval) if not math.isnan(interval[1]) else fmt(interval[0])} (pairs: {fmt(pairs)})")
            rows.append([str(label), role_of(method) or method] + cells)
    n = (run.config.get("search") or {}).get("n_trials")
    per_unit = fmt(n * (n - 1) // 2) if isinstance(n, int) else "n/a"
    lines = ["", "*Secondary line, not in the verdict: the search trials.* Effectiveness here is the val LD shift, "
             "val LD - val LD' (the flip_rate saturates at 1 and would tie most pairs). Within each unit, a pair of "
             "complete search trials is concordant when the one with the larger LD shift also has the higher val "
             "kl_other (or val l1), discordant when it has the lower; ties are skipped. Kendall's tau = (concordant - "
             "discordant) / untied pairs, pooled over a task's units, with a 95% bootstrap interval over units "
             f"(none under C5_MIN_PAIRS = {fmt(C5_MIN_PAIRS)} pairs). The run draws {fmt(n)} search trials per unit, "
             f"so a unit gives at most {per_unit} pair(s), whose trials differ in all hyper-parameters at once: "
             "read these taus as a sign, not as a measured trade-off.", ""]
    return lines + _table(["task", "method", "units", "tau(LD shift, kl_other)", "tau(LD shift, l1)"], rows)


def c5_steps(run: Run) -> dict[tuple[str, str], Tradeoff]:
    """(unit_id, path) -> its step, for every in-distribution unit."""
    return {(str(r.unit_id), path): tradeoff(run.curves, list(r.seeds), path)
            for r in _in(run).itertuples(index=False) for path in (STRENGTH, CELLS)}


def _c5_method() -> list[str]:
    return [f"Each in-distribution unit's selected trial and replicates (the held-out task is C6's) along two paths of "
            f"the trial itself, from where it reaches C5_LOW = {fmt(C5_LOW)} to where it reaches C5_HIGH = "
            f"{fmt(C5_HIGH)} of its own val flip_rate at beta = 1 (= all cells). The two points are the smallest beta "
            "or k of the grid that reach them, decided per seed on val; what the step gains is read on test (test "
            f"flip_rate). *Strength* (curves, kind strength, beta in [0, 1]): the cost is {C5_COSTS[STRENGTH]}, "
            f"{C5_TERMS[STRENGTH]} given up. *Cells* (kind sufficiency, only the top k cells acting): the cost is "
            f"{C5_COSTS[CELLS]} (a count, the same on every split), {C5_TERMS[CELLS]} given up. The price is cost / "
            "gain per seed (a seed without a test gain has none). Intervals are 95% Student t over the seeds having "
            "both points (column seeds; a seed without a val effect has none); the curves table keeps an interval "
            "over prompts per point, not per difference of two points, so there is none here. The grids are coarse "
            "(the sweep's betas; k grows by analysis.k_step): where both shares are reached at the same point the "
            "grid cannot tell the step, and the seed is unresolved. A unit with fewer than C5_MIN_SEEDS resolved "
            "seeds is not judged (listed, and not in the verdict). A unit shows a trade-off when it has at least "
            f"C5_MIN_SEEDS = {fmt(C5_MIN_SEEDS)} such seeds and the intervals of its cost and of its gain both lie "
            "above 0; a unit whose selected trial's val flip_rate at beta = 1 is below MIN_EFFECT = "
            f"{fmt(MIN_EFFECT)} is left out.", ""]


def claim_c5(run: Run) -> Claim:
    c = Claim("C5", "The three terms trade off, differently per task",
              "Effectiveness, faithfulness and minimality trade off against each other, differently per task.")
    steps = c5_steps(run)
    pair_rows, pair_items = _task_pairs(run, steps)
    items = _task_items(run, steps) + pair_items
    header = ["unit", "seeds", "val flip_rate, full (selected)", "low to high point (selected, on val)",
              "test flip_rate gain", "cost", "price (cost / gain)", "trade-off"]
    c.body += _c5_method()
    for path, name in ((STRENGTH, "Strength"), (CELLS, "Cells")):
        c.body += [f"**{name}**: effectiveness against {C5_TERMS[path]}; the cost is {C5_COSTS[path]}.", ""]
        c.body += _table(header, _tradeoff_rows(run, steps, path)) + [""]
    c.body += ["*Differently per task.* The same model, site and method on two tasks: the prices' seed intervals are "
               "disjoint (one task's price is higher) or overlap. Intervals over few seeds are wide: a strict test.", ""]
    c.body += _table(["tasks", "path", "unit", "price, first task", "price, second task", "differ"], pair_rows)
    c.body += ["", f"*Items of the verdict.* A task trades a term off when at least C5_MIN_UNITS = {fmt(C5_MIN_UNITS)} "
               "of its units with an effect show the trade-off; two tasks differ in a term when at least that share "
               "of their matched units priced on both (on at least C5_MIN_SEEDS seeds each) differ.", ""]
    c.body += _table(["item", "evidence", "passes"],
                     [[i, e, "unresolved (not in the verdict)" if ok is None else "yes" if ok else "no"]
                      for i, e, ok in items])
    c.body += _search_lines(run)
    passed = [ok for _, _, ok in items if ok is not None]
    c.verdict = verdict(passed)
    c.reason = (_count(passed, "items (a task trading a term off; two tasks' prices differing)") if steps else
                "the run has no in-distribution unit")
    return c


def claim_c6(run: Run) -> Claim:
    c = Claim("C6", "DynScalar transfers to prompts of other lengths",
              f"{DYNSCALAR} transfers to prompts of another length (a held-out template), where {ACTIVSCALAR} and "
              f"{STEERVEC} are tied to token positions; its bias-only control ({BIAS_ONLY}) shows what reading the "
              "activation adds.")
    transfer = transfer_table(run.selected, run.units, run.trials, run.predictions, run.scalars)
    site_rank = {site: i for i, site in enumerate(dict.fromkeys(run.units.site))}
    transfer = transfer.assign(_site=transfer.site.map(site_rank),
                               _role=[ROLES.index(r) if r else len(ROLES) for r in map(role_of, transfer.method)])
    transfer = transfer.sort_values(["model", "task", "_site", "_role", "method"], kind="stable")
    stats = run.selected.set_index("trial_id")
    rows, passed = [], []

    def seeds_of(trial_id: Any) -> Any:
        return stats.loc[trial_id] if isinstance(trial_id, str) and trial_id in stats.index else None

    for (model, task, site), group in transfer.groupby(["model", "task", "site"], sort=False):
        bias = next((seeds_of(r.heldout_trial_id) for r in group.itertuples() if role_of(r.method) == BIAS_ONLY), None)
        for r in group.itertuples(index=False):
            held, indist = seeds_of(r.heldout_trial_id), seeds_of(r.indist_trial_id)
            where = (f"{model} / " if run.units.model.nunique() > 1 else "") + f"{task} (held out: " \
                f"{r.heldout_templates}) / {site}"
            name = role_of(r.method) or r.method
            indist_cell = _cell(indist, "flip") if indist is not None else "n/a (not run)"
            if held is None:
                rows.append([where, name, "n/a" if r.heldout != TIED else "tied to positions", indist_cell] + ["n/a"] * 5)
                continue
            if name != DYNSCALAR:
                rows.append([where, name, _cell(held, "flip"), indist_cell, _cell(held, "kl")] + ["n/a"] * 4)
                continue
            base = indist.test_flip[0] if indist is not None else math.nan
            retained = held.test_flip[0] / base if base > 0 else math.nan
            gain = held.test_flip[0] - bias.test_flip[0] if bias is not None else math.nan
            transfers, beats = bool(retained >= C6_MIN_RETAINED), bool(gain >= C6_MIN_GAIN)
            passed += [transfers, beats]
            rows.append([where, name, _cell(held, "flip"), indist_cell, _cell(held, "kl"), fmt(retained), fmt(gain),
                         "yes" if transfers else "no", "yes" if beats else "no"])
    c.body += [f"A task with held-out templates: its units train and are selected on the other templates (val) and "
               "are tested on the held-out template only (held-out test). In-distribution test: the same model, "
               "task, site and method trained without held-out templates, on its own test prompts "
               "(storage.curves.transfer_table pairs them; a method whose cells are token positions cannot run on "
               f"prompts of another length and is marked tied to positions). Two items per site: {DYNSCALAR} "
               f"transfers when it keeps at least C6_MIN_RETAINED = {fmt(C6_MIN_RETAINED)} of its in-distribution "
               f"test flip_rate on the held-out template, and reading the activation helps when it beats {BIAS_ONLY} "
               f"there by at least C6_MIN_GAIN = {fmt(C6_MIN_GAIN)} (seed means).", ""]
    c.body += _table(["unit", "method", "held-out test flip_rate", "in-distribution test flip_rate",
                      "held-out test kl_other (not in the rule)", "retained",
                      f"gain over {BIAS_ONLY}", "transfers", f"beats {BIAS_ONLY}"], rows)
    c.verdict = verdict(passed)
    c.reason = (_count(passed, f"items ({DYNSCALAR} transferring; beating {BIAS_ONLY}, per site)") if passed else
                f"the run has no {DYNSCALAR} unit on a task with held-out templates")
    return c


CLAIMS: list[Callable[[Run], Claim]] = [claim_c1, claim_c2, claim_c3, claim_c4, claim_c5, claim_c6]


# --- figures -----------------------------------------------------------------------------------------------------

def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _errorbar(ax: Any, x: float, interval: Interval, color: str, label: str | None, hollow: bool = False) -> None:
    mean, lo, hi = interval
    if math.isnan(mean):
        return
    ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3, label=label,
                mfc="white" if hollow else color)


def _units_axis(ax: Any, keys: list[tuple[str, str, str]]) -> None:
    ax.set_xticks(range(len(keys)), [f"{k[1]}\n{k[2]}" for k in keys], fontsize=8)


def figure_c1(run: Run, path: Path) -> None:
    roles = (ACTIVSCALAR, STEERVEC, DYNSCALAR)
    s = _in(run)[_in(run).role.isin(roles)]
    keys = list(dict.fromkeys(zip(s.model, s.label, s.site)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "test_flip", "test flip_rate"), (axes[1], "test_kl", "test kl_other (nats)")):
        if not keys:
            _empty(ax, "no units")
            continue
        for i, key in enumerate(keys):
            for j, role in enumerate(roles):
                r = s[(s.model == key[0]) & (s.label == key[1]) & (s.site == key[2]) & (s.role == role)]
                if len(r):
                    _errorbar(ax, i + (j - 1) * 0.2, r.iloc[0][metric], COLORS[role], role if i == 0 else None)
        _units_axis(ax, keys)
        ax.set_title(f"{title}: mean, 95% interval over seeds", fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_c2(run: Run, path: Path) -> None:
    roles = (ACTIVSCALAR, STEERVEC, DYNSCALAR)
    s = _in(run)[_in(run).role.isin(roles)]
    keys = list(dict.fromkeys(zip(s.model, s.label, s.site)))
    fig, ax = plt.subplots(figsize=(8, 4))
    if not keys:
        _empty(ax, "no units")
    for j, role in enumerate(roles):
        xs, ys = [], []
        for i, key in enumerate(keys):
            r = s[(s.model == key[0]) & (s.label == key[1]) & (s.site == key[2]) & (s.role == role)]
            if len(r):
                xs.append(i + (j - 1) * 0.27)
                ys.append(int(r.n_params.iloc[0]))
        if xs:
            ax.bar(xs, ys, width=0.27, color=COLORS[role], label=role)
    if keys:
        ax.set_yscale("log")
        _units_axis(ax, keys)
        ax.set_ylabel("n_params (log scale)")
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_c3(run: Run, path: Path) -> None:
    pairs = _pairs(run, ACTIVSCALAR, STEERVEC)
    n = max(1, len(pairs))
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.8), squeeze=False)
    if not pairs:
        _empty(axes[0][0], "no units")
    for ax, (a, s) in zip(axes[0], pairs):
        for row in (a, s):
            for kind, style in (("sufficiency", "o-"), ("necessity", "x--")):
                f = curve_frame(run.curves, list(row.seeds), kind, "val")
                if f.empty:
                    continue
                k = f.k.to_numpy(dtype=float)
                ax.plot(k, f.flip_rate.to_numpy(dtype=float), style, color=COLORS[row.role], label=f"{row.role} {kind}")
                ax.fill_between(k, f.flip_lo.to_numpy(dtype=float), f.flip_hi.to_numpy(dtype=float),
                                color=COLORS[row.role], alpha=0.1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("k cells of largest effect")
        ax.set_ylabel("val flip_rate (mean, 95% over seeds)")
        ax.set_title(f"{a.label} / {a.site}", fontsize=9)
        ax.legend(fontsize=6)
    _save(fig, path)


def figure_c4(run: Run, path: Path) -> None:
    s = _in(run)[_in(run).role == ACTIVSCALAR]
    n = max(1, len(s))
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 6.4), squeeze=False)
    if s.empty:
        _empty(axes[0][0], "no units")
        _empty(axes[1][0], "")
    for i, row in enumerate(s.itertuples(index=False)):
        f = strength_frame(run.curves, list(row.seeds), "test")
        for ax, metric, short in ((axes[0][i], "ld_after", "ld"), (axes[1][i], "flip_rate", "flip")):
            if f.empty:
                _empty(ax, "no strength sweep")
                continue
            beta = f.beta.to_numpy(dtype=float)
            color = COLORS[ACTIVSCALAR]
            ax.plot(beta, f[metric].to_numpy(dtype=float), "o-", color=color, label="mean over seeds")
            ax.fill_between(beta, f[f"{short}_lo"].to_numpy(dtype=float), f[f"{short}_hi"].to_numpy(dtype=float),
                            color=color, alpha=0.2, label="95% over seeds")
            for end in ("lo", "hi"):
                ax.plot(beta, f[f"{short}_prompt_{end}"].to_numpy(dtype=float), ":", color=color, lw=0.8,
                        label="95% over prompts (selected)" if end == "lo" else None)
            if metric == "ld_after":
                ax.axhline(float(f.ld_before.iloc[0]), color="black", lw=0.8, ls="-.", label="LD (model)")
                ax.axhline(0.0, color="gray", lw=0.8, ls="--", label="flip boundary")
                ax.set_title(f"{row.label} / {row.site}", fontsize=9)
            ax.axvline(1.0, color="gray", lw=0.5)
            ax.set_xlabel("beta")
            ax.set_ylabel("test LD'" if metric == "ld_after" else "test flip_rate")
            ax.legend(fontsize=6)
    _save(fig, path)


def _c5_path_panel(ax: Any, run: Run, path: str) -> None:
    """Seed means on test along beta in [0, 1] (kl_other against flip_rate) or along k (flip_rate / the full
    flip_rate against k / cells), one line per unit, a colour per task and a marker per method."""
    s = _in(run)
    labels, markers, seen = list(dict.fromkeys(s.label)), dict(zip(ROLES, "os^v")), set()
    for row in s.itertuples(index=False):
        seeds = list(row.seeds)
        f = strength_frame(run.curves, seeds, "test") if path == STRENGTH else curve_frame(
            run.curves, seeds, "sufficiency", "test")
        if f.empty:
            continue
        if path == STRENGTH:
            f = f[(f.beta >= 0) & (f.beta <= 1)]
            x, y = f.flip_rate.to_numpy(dtype=float), f.kl_other.to_numpy(dtype=float)
        else:
            full = float(f.flip_rate.iloc[-1])
            x = f.rel_k.to_numpy(dtype=float)
            y = f.flip_rate.to_numpy(dtype=float) / full if full > 0 else np.full(len(f), np.nan)
        key = (row.label, row.role)
        ax.plot(x, y, "-", marker=markers.get(row.role or "", "x"), ms=3, lw=0.8,
                color=f"C{labels.index(row.label)}", label=None if key in seen else f"{row.label}, {row.role}")
        seen.add(key)
    if not seen:
        _empty(ax, "no curves")
        return
    if path == STRENGTH:
        ax.set_xlabel("test flip_rate (beta from 0 to 1)")
        ax.set_ylabel("test kl_other (nats)")
    else:
        for share in (C5_LOW, C5_HIGH):
            ax.axhline(share, color="gray", lw=0.5, ls="--")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(left=0)
        ax.set_xlabel("k / cells (top k cells acting)")
        ax.set_ylabel("test flip_rate / its value with all cells")
    ax.set_title("mean over seeds", fontsize=9)
    ax.legend(fontsize=6)


def _c5_search_panel(ax: Any, run: Run, column: str, name: str) -> None:
    s, t = _in(run), _search_trials(run)
    if t.empty:
        _empty(ax, "no search trials")
        return
    labels, markers = list(dict.fromkeys(s.label)), dict(zip(ROLES, "os^v"))
    for i, label in enumerate(labels):
        for role in ROLES:
            r = t[(t.label == label) & (t.role == role)]
            if r.empty:
                continue
            ax.scatter(r.ld_shift, r[column], s=16, color=f"C{i}", marker=markers[role], label=f"{label}, {role}",
                       alpha=0.8)
            for _, u in r.groupby("unit_id", sort=True):  # a unit's trials joined: the pairs tau counts
                u = u.sort_values("ld_shift")
                ax.plot(u.ld_shift, u[column], color=f"C{i}", lw=0.6, alpha=0.5)
    ax.set_xlabel("val LD shift (val LD - val LD')")
    ax.set_ylabel(f"val {name}")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title("secondary: search trials", fontsize=9)
    ax.legend(fontsize=6)


def figure_c5(run: Run, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _c5_path_panel(axes[0][0], run, STRENGTH)
    _c5_path_panel(axes[0][1], run, CELLS)
    for ax, (column, name) in zip(axes[1], TERMS):
        _c5_search_panel(ax, run, column, name)
    _save(fig, path)


def figure_c6(run: Run, path: Path) -> None:
    held = _in(run, heldout=True)
    keys = list(dict.fromkeys(zip(held.model, held.label, held.site)))
    fig, ax = plt.subplots(figsize=(7, 4))
    if not keys:
        _empty(ax, "no held-out units")
    indist = _in(run)
    for i, (model, label, site) in enumerate(keys):
        for j, role in enumerate((DYNSCALAR, BIAS_ONLY)):
            r = held[(held.model == model) & (held.label == label) & (held.site == site) & (held.role == role)]
            if len(r):
                _errorbar(ax, i + j * 0.25, r.iloc[0].test_flip, COLORS[role],
                          f"{role}, held-out test" if i == 0 else None)
        task = held[(held.model == model) & (held.label == label)].task.iloc[0]
        d = indist[(indist.model == model) & (indist.task == task) & (indist.site == site) & (indist.role == DYNSCALAR)]
        if len(d):
            _errorbar(ax, i - 0.25, d.iloc[0].test_flip, COLORS[DYNSCALAR],
                      f"{DYNSCALAR}, in-distribution test" if i == 0 else None, hollow=True)
    if keys:
        _units_axis(ax, keys)
        ax.set_ylabel("test flip_rate")
        ax.set_title("mean, 95% interval over seeds", fontsize=10)
        ax.legend(fontsize=7)
    _save(fig, path)


FIGURES: dict[str, Callable[[Run, Path], None]] = {
    "C1": figure_c1, "C2": figure_c2, "C3": figure_c3, "C4": figure_c4, "C5": figure_c5, "C6": figure_c6}


# --- the page ----------------------------------------------------------------------------------------------------

def shown_path(path: Path) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(ROOT).as_posix()
    except ValueError:
        return full.as_posix()


def _unselected(run: Run) -> str:
    """The units with no selected trial (no complete search trial): on no table of the page, so named here."""
    missing = run.units[~run.units.unit_id.isin(run.selected.unit_id)]
    named = []
    for r in missing.itertuples(index=False):
        statuses = run.trials[(run.trials.unit_id == r.unit_id) & run.trials.replicate_of.isna()].status
        counts = ", ".join(f"{fmt(int(n))} {st}" for st, n in statuses.value_counts().sort_index().items())
        named.append(f"{_where(r, run)} / {r.role or r.method} (search trials: {counts or 'none'})")
    return (f"- {fmt(len(missing))} of {fmt(len(run.units))} units have no complete search trial, so no selected "
            f"trial, and are on no table below{': ' + '; '.join(named) if named else ''};")


def _rule(min_flip: float) -> str:
    """The selection rule in words, its threshold written by `fmt`."""
    return describe_rule(min_flip).replace(f"{min_flip:g}", fmt(min_flip), 1)


def _setting(run: Run) -> list[str]:
    u, cfg = run.units, run.config
    search, train = cfg.get("search") or {}, cfg.get("train") or {}
    lines = ["## Where this run differs from the paper", "",
             "The paper studies GPT-2 and Pythia models on its own IOI and country-capital conflict prompt sets, with "
             "its own hyper-parameters. This run:", ""]
    for m in u.drop_duplicates("model").itertuples(index=False):
        lines.append(f"- model `{m.model}` ({fmt(int(m.n_layers))} layers, d_model {fmt(int(m.d_model))}, revision "
                     f"`{m.model_revision}`);")
    for (model, label), g in u.groupby(["model", "label"], sort=False):
        first = g.iloc[0]
        lines.append(f"- task {label} on `{model}`: this project's templates (options: "
                     f"{_options_text(first.task_options)}); prompts per split train {fmt(int(g.n_train.min()))}, val "
                     f"{fmt(int(g.n_val.min()))}, test {fmt(int(g.n_test.min()))}, kept by the filter "
                     f"`{train.get('filter', 'n/a')}`; the model ranks the answer first on a share "
                     f"{fmt(float(first.base_accuracy))} of the task's prompts;")
    lines += [f"- sites {', '.join(f'`{s}`' for s in dict.fromkeys(u.site))}; methods "
              f"{', '.join(f'`{m}`' for m in dict.fromkeys(u.method))};",
              f"- training: {fmt(train.get('steps'))} steps of batch {fmt(train.get('batch_size'))}; search: "
              f"`{search.get('sampler', 'n/a')}`, {fmt(search.get('n_trials'))} trials per unit, then the selected "
              f"trial trained again with other seeds, {fmt(search.get('replicates'))} seeds in all;",
              f"- {fmt(int((run.selected.selected_by == 'fallback').sum()))} of {fmt(len(run.selected))} units had no "
              "trial reaching min_flip on val and are shown by their fallback trial;",
              _unselected(run),
              f"- {fmt(int(sum(len(w) > 0 for w in u.warnings)))} of {fmt(len(u))} units carry warnings "
              "(units.warnings: small splits, a model near chance; `actscale report` lists them);",
              f"- wall time {fmt(run.wall_s)} s, from {run.wall_source}.", ""]
    return lines


def render(run_dir: Path, page: Path, figures: Path, write_figures: Path | None = None) -> str:
    """The page for `run_dir` as it will live at `page` with its figures in `figures` (the links are relative);
    the PNGs are written to `write_figures` (default: `figures`)."""
    run = load_run(Path(run_dir))
    out_dir = Path(write_figures or figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    link = Path(os.path.relpath(os.path.abspath(figures), os.path.abspath(Path(page).parent))).as_posix()
    claims = [make(run) for make in CLAIMS]
    for c in claims:
        c.figure = f"{c.key.lower()}.png"
        FIGURES[c.key](run, out_dir / c.figure)
    command = (f"python -m storage.findings {shown_path(run_dir)} --out {shown_path(page)} "
               f"--figures {shown_path(figures)}")
    models = ", ".join(f"`{m}`" for m in dict.fromkeys(run.units.model))
    lines = [f"# Findings: the claims of Stoehr et al. (2024) on {models}", "",
             "<!-- generated by storage/findings.py from a run's tables: do not edit by hand -->", "",
             f"> **Generated; do not edit by hand.** Written by `{command}` from run `{run.run_id}` (git revision "
             f"{', '.join(f'`{r}`' for r in run.revisions)}) in `{shown_path(run_dir)}`. Every number on this page "
             "comes from that run's tables; tests/test_findings.py regenerates the page and compares.", "",
             f"The paper: {PAPER}. For each of its claims C1 to C6 this page gives the evidence measured on this "
             "run, a figure, and a verdict that storage/findings.py derives from the thresholds listed below.", "",
             "## Verdicts", ""]
    lines += _table(["claim", "what", "verdict", "why"], [[c.key, c.title, f"**{c.verdict}**", c.reason] for c in claims])
    lines += ["", "## How the numbers are made", "",
              f"- Each unit (model, task, site, method) is shown by its selected trial: {_rule(run.min_flip)}.",
              "- Over prompts: the selected trial's mean over the split's prompts with a 95% percentile bootstrap "
              f"interval ({fmt(BOOTSTRAP_SAMPLES)} resamples, fixed seed): from the predictions table for test "
              "metrics, from the curves table's _lo/_hi columns for curves and strengths. A split smaller than the "
              "unit's min_split gets no interval (marked too few), as in `actscale report`. The curves table keeps "
              "these per point: a difference between two points of a curve (C5) has an interval over seeds only.",
              "- Over seeds: the mean over the selected trial and its complete replicates (its hyper-parameters, "
              "other trial seeds) with a 95% Student-t interval; one seed gives no width.",
              "- A verdict is *supported* when every item of the claim passes its rule, *not supported* when none "
              "does (or the run has none), *mixed* otherwise. The rules compare seed means (or check each seed) "
              "against the thresholds, except C5's, which ask whether seed intervals lie above 0 or apart; elsewhere "
              "the intervals show how far to trust them.", ""]
    lines += _setting(run)
    lines += ["## Thresholds", ""]
    lines += _table(["constant", "value", "rule"], [[f"`{n}`", fmt(v), text] for n, v, text in THRESHOLDS])
    lines.append("")
    for c in claims:
        lines += [f"## {c.key}: {c.title}", "", f"*Claim.* {c.statement}", ""] + c.body + [
            "", f"![{c.key}: figure]({link}/{c.figure})", "", f"**Verdict {c.key}: {c.verdict}** ({c.reason}).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.findings",
                                     description="Write docs/findings.md (the paper's claims checked) from a run.")
    parser.add_argument("run_dir", type=Path, help="a finished run directory (RUN_DIR/tables)")
    parser.add_argument("--out", type=Path, default=Path("docs/findings.md"), help="the page to write")
    parser.add_argument("--figures", type=Path, default=None,
                        help="the folder of its PNG figures (default: figures/<page name> beside the page)")
    args = parser.parse_args(argv)
    figures = args.figures or args.out.parent / "figures" / args.out.stem
    try:
        page = render(args.run_dir, args.out, figures)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out} and {len(FIGURES)} figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
