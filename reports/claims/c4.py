"""C4: a continuous strength beta strengthens, weakens or reverses the behaviour (per ActivScalar unit)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from reports.claims.common import MIN_REPLICATES, weighted_spearman
from reports.curves import strength_frame
from reports.engine import ClaimResult, Condition, Outcome, Threshold, UnitVerdict, exact, judge
from reports.run import ACTIVSCALAR, Run
from reports.stats import Arm, two_level
from reports.text import fmt

MIN_BETAS = 13  # betas in [-1, 1] a unit is judged on
MAX_RHO = -0.9  # Spearman rho(beta, LD') at most this: LD' falls with beta
IDENTITY_TOL = 1e-3  # at beta = 0, |LD' - LD| and the flip_rate at most this

TITLE = "A continuous strength"
STATEMENT = ("Scaling strengthens, weakens or reverses a behaviour by a continuous strength beta (alpha' = 1 + beta "
             "(alpha - 1)): beta = 0 changes nothing, LD' falls steadily with beta, beta = -1 strengthens the unintervened "
             "preference and beta = 1 reverses it.")
ITEMS = (f"Per {ACTIVSCALAR} unit, the strength sweep of its selected trial and replicates (curves, kind strength, "
         "test prompts), judged on the betas in [-1, 1]; betas above 1 extrapolate beyond what was trained and are "
         "shown apart, not judged. (i) beta = 0 changes nothing in every replicate; (ii) Spearman's rho between "
         "beta and mean LD', two-level bootstrap over replicates and betas; (iii) at beta = -1 the band over prompts "
         "of LD' lies above the unintervened LD and at beta = 1 below 0, in every replicate (the curves table keeps "
         "bands over prompts per point, not per-prompt rows).")
RULE = (f"A unit is judged only with at least {fmt(MIN_BETAS)} betas in [-1, 1] (fewer: inconclusive). Supported when "
        f"(i) holds within {fmt(IDENTITY_TOL)}, (ii) rho's upper bound is <= {fmt(MAX_RHO)} and (iii) holds in every "
        f"replicate; not supported when (i) fails, rho's lower bound is above {fmt(MAX_RHO)}, or (iii) fails the "
        "other way in every replicate; inconclusive otherwise.")


def _sweep(run: Run, trial_id: str) -> pd.DataFrame:
    c = run.curves
    return c[(c.trial_id == trial_id) & (c.kind == "strength") & (c.split == "test")].sort_values("beta")


def identity(frames: list[pd.DataFrame]) -> Condition:
    worst = 0.0
    for f in frames:
        zero = f[f.beta == 0]
        if zero.empty:
            return Condition("beta = 0 changes nothing", f"|LD' - LD| and flip_rate <= {fmt(IDENTITY_TOL)}",
                             Outcome.INCONCLUSIVE, None, "n/a", "not measured", "beta 0 in analysis.betas")
        worst = max(worst, abs(float(zero.ld_after.iloc[0]) - float(zero.ld_before.iloc[0])),
                    float(zero.flip_rate.iloc[0]))
    return exact("beta = 0 changes nothing", f"|LD' - LD| and flip_rate <= {fmt(IDENTITY_TOL)}", worst <= IDENTITY_TOL,
                 f"largest |LD' - LD| or flip_rate {fmt(worst)}")


def monotone(run: Run, row: Any, frames: list[pd.DataFrame]) -> Condition:
    name = "Spearman rho(beta, LD') over beta in [-1, 1]"
    betas = frames[0].beta.to_numpy(dtype=float)
    usable = [f for f in frames if np.array_equal(f.beta.to_numpy(dtype=float), betas)]
    arm = Arm("seeds", tuple(["betas"] * len(usable)), {"beta": [betas] * len(usable),
                                                         "ld": [f.ld_after.to_numpy(dtype=float) for f in usable]})
    e = two_level(lambda d: weighted_spearman(arm, "beta", "ld", d), {"betas": np.arange(len(betas))}, [arm],
                  f"{run.where(row)}/C4")
    return judge(name, e, MAX_RHO, False, min_replicates=MIN_REPLICATES, items="betas in [-1, 1]")


def regimes(frames: list[pd.DataFrame]) -> Condition:
    name, rule = "beta = -1 strengthens, beta = 1 reverses (bands over prompts)", "in every replicate"
    ends = []
    for f in frames:
        low, high = f[f.beta == -1.0], f[f.beta == 1.0]
        if low.empty or high.empty:
            return Condition(name, rule, Outcome.INCONCLUSIVE, None, "n/a", "not measured", "betas -1 and 1")
        ld = float(low.ld_before.iloc[0])
        ends.append((float(low.ld_after_lo.iloc[0]) > ld, float(high.ld_after_hi.iloc[0]) < 0,
                     float(low.ld_after_hi.iloc[0]) < ld, float(high.ld_after_lo.iloc[0]) > 0))
    shown = (f"strengthens in {fmt(sum(e[0] for e in ends))}, reverses in {fmt(sum(e[1] for e in ends))} of "
             f"{fmt(len(ends))} replicates")
    if all(e[0] and e[1] for e in ends):
        return Condition(name, rule, Outcome.SUPPORTED, None, shown)
    if all(e[2] or e[3] for e in ends):
        return Condition(name, rule, Outcome.NOT_SUPPORTED, None, shown)
    return Condition(name, rule, Outcome.INCONCLUSIVE, None, shown, "the bands reach across LD or 0",
                     "more test prompts (narrower bands) or replicates")


def evaluate(run: Run) -> ClaimResult:
    units, extrapolation, curves = [], [], []
    for row in run.in_distribution().itertuples(index=False):
        if row.role != ACTIVSCALAR:
            continue
        frames = [f for f in (_sweep(run, t) for t in row.seeds) if len(f)]
        where = run.where(row)
        summary = strength_frame(run.curves, list(row.seeds), "test")
        if len(summary):
            curves.append(summary[["beta", "ld_after", "ld_lo", "ld_hi", "ld_before"]].assign(unit=where))
        if not frames:
            units.append(UnitVerdict(row.model, where, [Condition(
                "strength sweep", "", Outcome.INCONCLUSIVE, None, "n/a", "not measured",
                "the strength sweep (analysis.betas)")]))
            continue
        judged = [f[(f.beta >= -1) & (f.beta <= 1)] for f in frames]
        n_betas = judged[0].beta.nunique()
        counted = f"{fmt(n_betas)} betas in [-1, 1]"
        conditions = [identity(judged), monotone(run, row, judged), regimes(judged)]
        if n_betas < MIN_BETAS:
            shown = "; ".join(f"{c.name}: {c.shown}" for c in conditions)
            units.append(UnitVerdict(row.model, where, [Condition(
                f"at least {fmt(MIN_BETAS)} betas in [-1, 1]", f">= {fmt(MIN_BETAS)}", Outcome.INCONCLUSIVE, None,
                counted, f"only {counted}", f"at least {fmt(MIN_BETAS)} betas in [-1, 1] (analysis.betas)")],
                [f"measured on the {counted}, not judged: {shown}"], unjudged=conditions))
        else:
            units.append(UnitVerdict(row.model, where, conditions, [counted]))
        beyond = frames[0][frames[0].beta > 1]
        for b in beyond.itertuples(index=False):
            extrapolation.append(f"{where}: beta {fmt(b.beta)}: LD' {fmt(b.ld_after)} [{fmt(b.ld_after_lo)}, "
                                 f"{fmt(b.ld_after_hi)}], flip_rate {fmt(b.flip_rate)} (selected trial, over prompts)")
    extra = (["*Extrapolation, not judged* (beta > 1, beyond the trained strength):", ""]
             + [f"- {line}" for line in extrapolation] if extrapolation else [])
    betas = sorted({float(b) for b in run.curves[run.curves.kind == "strength"].beta.dropna() if -1 <= b <= 1})
    gap = float(np.max(np.diff(betas))) if len(betas) > 1 else math.nan
    return ClaimResult("C4", TITLE, STATEMENT, ITEMS, RULE, [
        Threshold("C4_MIN_BETAS", MIN_BETAS, "C4: betas in [-1, 1] a unit is judged on",
                  f"13 betas spread over [-1, 1] are 1/6 apart, so a flat or reversed stretch a sixth of the range "
                  f"wide moves rho; this run's {fmt(len(betas))} betas leave gaps up to {fmt(gap)}"),
        Threshold("C4_MAX_RHO", MAX_RHO, "C4: upper bound of Spearman rho(beta, LD') at most this",
                  "rho^2 = 0.81: beta orders at least four fifths of the rank variance of LD'"),
        Threshold("C4_IDENTITY_TOL", IDENTITY_TOL, "C4: at beta = 0, |LD' - LD| and the flip_rate at most this",
                  "beta = 0 leaves the network unchanged by construction: anything above float error is a bug, "
                  "not noise")],
        units, extra=extra, figure={"curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()})
