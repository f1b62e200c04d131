"""C3: ActivScalar's scalars pinpoint a few components that matter (per ActivScalar unit)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from reports.claims.common import MIN_REPLICATES, Reach, compare, reach, weighted_spearman
from reports.engine import (
    ClaimResult,
    Condition,
    Outcome,
    Threshold,
    UnitVerdict,
    bracket,
    interval,
    judge,
    not_measured,
    resolve_text,
)
from reports.run import ACTIVSCALAR, FLIP, LD_GAP, Run, measured
from reports.stats import Arm, Estimate, two_level
from reports.text import fmt
from storage.k90 import K90_FRACTION
from storage.selection import select_per_unit

FEW = 0.05  # k90 at most this share of the cells
FRACTION = K90_FRACTION  # the share of the full effect k90 is for (workers/k90.py)
TOP_FLIP = 0.2  # top-k beats random-k by at least this test flip_rate ...
TOP_LOGIT = 1.0  # ... or this many logits of LD shift (LD - LD')
MOVED_AT = (0.05, 0.1, 0.2)  # moved thresholds the selection is redone at
CELL = ["layer", "position", "role", "head"]
TOP_HEADS = 10  # head cells of largest |alpha - 1| whose attention and direct logit attribution are listed
ATTENDS = 0.3  # a head at the final position "attends to" a name with at least this attention weight on it

TITLE = "A few components matter"
STATEMENT = (f"{ACTIVSCALAR}'s scalars pinpoint a few components that matter: a few cells carry most of the effect, "
             "more than as many cells chosen at random, and they are the cells where patching the unintervened network "
             "matters.")
ITEMS = (f"Per {ACTIVSCALAR} unit, its selected trial and replicates: (a) the top k cells (largest |alpha - 1|) "
         "against k random cells, each retrained with only those cells free (masked control trials), at the k of the "
         "controls nearest k90; (b) k90, the fewest top cells whose val flip_rate alone reaches "
         f"{fmt(FRACTION)} of the full val flip_rate (curves table; bracketed as in C2); (c) Spearman's rho between "
         "|alpha - 1| and |patching effect| over the cells (patching table), two-level bootstrap over replicates "
         "and cells; (d) the selection redone with sites_moved counted at moved thresholds "
         f"{', '.join(fmt(t) for t in MOVED_AT)} (scalars.effect): the result must hold for the trial selected at "
         "each.")
RULE = (f"A unit is supported only if (a) top-k beats random-k by >= {fmt(TOP_FLIP)} test flip_rate or >= "
        f"{fmt(TOP_LOGIT)} logit of LD shift with an interval that excludes 0 (not supported: both intervals wholly "
        f"below their sizes), (b) k90's bracket is at most {fmt(FEW)} of the cells, or above it but justified by (a) "
        "at k90, (c) rho's interval lies above 0 (not supported: below 0), and (d) every threshold selects the same "
        "trial, or the other trial passes (b) too. Units near chance or without a trial reaching min_flip are "
        "listed apart.")


def _controls(run: Run, row: Any) -> pd.DataFrame:
    """The masked control trials of a selected trial (trials.mask, mask_cells, control_of)."""
    t = run.trials
    if not (measured(t, "mask") and "control_of" in t.columns):
        return t.iloc[0:0]
    c = t[t.control_of.isin(list(row.seeds)) & t["mask"].notna() & (t.status == "complete")]
    if "mask_cells" not in c.columns or c.mask_cells.isna().all():
        cells = c["mask"].str.extract(r"-(\d+)")[0].astype(float)
        c = c.assign(mask_cells=cells)
    return c


def top_vs_random(run: Run, row: Any, k90: int | None) -> tuple[Condition, int | None]:
    """(a): the top-k control against the random-k controls at the k nearest k90; and that k."""
    name = "top-k against random-k (retrained), test flip_rate / logits of LD shift"
    rule = (f"flip >= {fmt(TOP_FLIP)} or LD shift >= {fmt(TOP_LOGIT)}, interval excluding 0")
    c = _controls(run, row)
    if c.empty:
        return not_measured(name, rule, "retrained top-k and random-k control trials of the selected trial "
                                        "(trials.mask, mask_cells, control_of)"), None
    top, rand = c[c["mask"].str.startswith("top-")], c[c["mask"].str.startswith("random-")]
    ks = sorted(set(top.mask_cells.dropna().astype(int)) & set(rand.mask_cells.dropna().astype(int)))
    if not ks:
        return not_measured(name, rule, "a top-k and a random-k control at the same k"), None
    target = k90 if k90 else max(ks)
    k = min(ks, key=lambda x: (abs(math.log(max(x, 1) / max(target, 1))), x))
    first = sorted(top[top.mask_cells == k].trial_id)
    second = sorted(rand[rand.mask_cells == k].trial_id)
    key = f"{run.where(row)}/C3a/{k}"
    flip, gap = compare(run, f"{key}/flip", first, second, FLIP), compare(run, f"{key}/gap", first, second, LD_GAP)
    shown = f"k = {fmt(k)}: flip {interval(flip)}; LD shift {interval(gap)} ({fmt(len(second))} random draws)"
    return _sized(name, rule, shown, flip, gap, len(second)), k


def _sized(name: str, rule: str, shown: str, flip: Estimate, gap: Estimate, draws: int) -> Condition:
    if draws < MIN_REPLICATES:
        return Condition(name, rule, Outcome.INCONCLUSIVE, flip, shown, f"{fmt(draws)} random draw(s)",
                         f"at least {fmt(MIN_REPLICATES)} random-k controls")
    if not (flip.has_interval and gap.has_interval):
        return Condition(name, rule, Outcome.INCONCLUSIVE, flip, shown, "no interval",
                         "more prompt clusters or controls")
    if (flip.value >= TOP_FLIP and flip.lo > 0) or (gap.value >= TOP_LOGIT and gap.lo > 0):
        return Condition(name, rule, Outcome.SUPPORTED, flip, shown)
    if flip.hi < TOP_FLIP and gap.hi < TOP_LOGIT:
        return Condition(name, rule, Outcome.NOT_SUPPORTED, flip, shown)
    return Condition(name, rule, Outcome.INCONCLUSIVE, flip, shown,
                     "the flip interval reaches below 0 or straddles its size, as does the LD shift's",
                     resolve_text(flip, 0.0 if flip.value >= TOP_FLIP else TOP_FLIP))


def few_cells(r: Reach, justified: Condition | None) -> Condition:
    """(b): k90 at most FEW of the cells, or justified against the random-mask control at k90."""
    name, rule = "k90 / cells (val)", f"bracket <= {fmt(FEW)}, or justified by (a) at k90"
    if r.k is None:
        return not_measured(name, rule, "curves with a val effect (analysis.curves)")
    point = (r.share(r.k), r.share(r.lo), r.share(r.hi))
    shown = f"{fmt(point[0])} [{fmt(point[1])}, {fmt(point[2])}] ({fmt(r.k)} of {fmt(r.n_cells)})"
    judged = bracket(name, rule, point, FEW, False, shown, r.resolve())
    if judged.outcome != Outcome.NOT_SUPPORTED:
        return judged
    judged.outcome = justified.outcome if justified is not None and justified.estimate is not None else \
        Outcome.INCONCLUSIVE
    judged.why = f"above {fmt(FEW)} of the cells" + ("; judged by (a) at k90" if justified is not None else "")
    judged.resolve = justified.resolve if justified is not None and justified.estimate is not None else \
        "the random-mask control at k90 to justify it (trials.mask)"
    return judged


def patching_rho(run: Run, row: Any) -> Condition:
    """(c): Spearman's rho between |alpha - 1| and |patching effect| over cells, replicates then cells."""
    name, rule = "Spearman rho(|alpha - 1|, |patching effect|) over cells", "lower bound > 0"
    p = run.patching
    if p.empty:
        return not_measured(name, rule, "the patching table (per-cell activation patching of the unintervened network)")
    mine = p[p.unit_id == row.unit_id] if "unit_id" in p.columns else p.iloc[0:0]
    if mine.empty:
        mine = p[(p.model == row.model) & (p.task == row.task) & (p.site == row.site)]
    if mine.empty:
        return not_measured(name, rule, f"patching rows for {run.where(row)}")
    if "split" in mine.columns and (mine.split == "val").any():  # the cells' own split (scalars are measured on val)
        mine = mine[mine.split == "val"]
    kind = "activation" if (mine.kind == "activation").any() else str(mine.kind.iloc[0])
    effects = _keyed(mine[mine.kind == kind]).effect.abs().groupby(level=0).first()
    per_seed = [_keyed(run.scalars[run.scalars.trial_id == trial_id]).effect.groupby(level=0).first()
                for trial_id in row.seeds]
    cells = effects.index
    for s in per_seed:  # the cells every seed has (fold replicates may see other prompt shapes) and patching has
        cells = cells.intersection(s.index)
    values = [s.reindex(cells).to_numpy(dtype=float) for s in per_seed]
    if len(cells) < 3:
        return not_measured(name, rule, "at least 3 cells with both a scalar and a patching effect")
    patch = effects.reindex(cells).to_numpy(dtype=float)
    arm = Arm("cells", tuple(["cells"] * len(values)), {"alpha": values, "patch": [patch] * len(values)})
    e = two_level(lambda d: weighted_spearman(arm, "alpha", "patch", d), {"cells": np.arange(len(cells))}, [arm],
                  f"{run.where(row)}/C3c")
    return judge(name, e, 0.0, True, min_replicates=MIN_REPLICATES, strict=True, items="cells", fixed=True)


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    key = frame[CELL].astype(object).where(frame[CELL].notna(), -1).astype(str).agg("|".join, axis=1)
    return frame.set_index(key)


def moved_at(run: Run, row: Any) -> Condition:
    """(d): redo the selection with sites_moved counted at each moved threshold."""
    name, rule = "selected trial at moved thresholds " + ", ".join(fmt(t) for t in MOVED_AT), \
        "the same trial, or the other passes (b)"
    search = run.search_trials(row.unit_id)
    scalars = run.scalars[run.scalars.trial_id.isin(list(search.trial_id))]
    if scalars.empty:
        return not_measured(name, rule, "the scalars of the unit's search trials")
    chosen = {}
    for tau in MOVED_AT:
        moved = scalars.assign(hit=scalars.effect > tau).groupby("trial_id").hit.sum()
        rows = search.assign(sites_moved=search.trial_id.map(moved).fillna(0).astype(int))
        rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
        chosen[tau] = str(select_per_unit(rows, run.min_flip)[row.unit_id]["trial_id"])
    others = sorted({t for t in chosen.values() if t != row.trial_id})
    shown = ", ".join(f"{fmt(t)}: {c.rsplit('-', 1)[-1]}" for t, c in chosen.items())
    if not others:
        return Condition(name, rule, Outcome.SUPPORTED, None, shown)
    outcomes = []
    for other in others:
        r = reach(run.curves, run.replicates(other), FRACTION)
        outcomes.append(few_cells(r, None).outcome if r.k is not None else Outcome.INCONCLUSIVE)
    if all(o == Outcome.SUPPORTED for o in outcomes):
        return Condition(name, rule, Outcome.SUPPORTED, None, shown)
    if any(o == Outcome.NOT_SUPPORTED for o in outcomes):
        return Condition(name, rule, Outcome.NOT_SUPPORTED, None, shown, "another threshold selects a trial failing (b)")
    return Condition(name, rule, Outcome.INCONCLUSIVE, None, shown, "another threshold selects another trial",
                     f"the analysis (curves, controls) of {', '.join(o.rsplit('-', 1)[-1] for o in others)} too")


def _map_frame(run: Run, row: Any) -> pd.DataFrame:
    """The selected trial's |alpha - 1| and the unintervened model's activation-patching effect per cell, for the
    maps drawn side by side: unit, kind ('scalars' | 'patching'), layer, column (position, role, and head), value.
    Empty where the unit has no patching rows (the maps are drawn only to be compared)."""
    p = run.patching
    if p.empty:
        return pd.DataFrame()
    mine = p[(p.unit_id == row.unit_id) & (p.kind == "activation")] if "unit_id" in p.columns else p.iloc[0:0]
    if mine.empty:
        mine = p[(p.model == row.model) & (p.task == row.task) & (p.site == row.site) & (p.kind == "activation")]
    if "split" in mine.columns and (mine.split == "val").any():
        mine = mine[mine.split == "val"]
    s = run.scalars[run.scalars.trial_id == row.trial_id]
    if mine.empty or s.empty:
        return pd.DataFrame()
    frames = []
    for kind, f in (("scalars", s), ("patching", mine)):
        column = f.role.where(f.role.notna(), f.position.astype("Int64").astype(str)) if "role" in f.columns \
            else f.position.astype(str)
        if "head" in f.columns and f["head"].notna().any():
            column = column + "/h" + f["head"].astype("Int64").astype(str)
        frames.append(pd.DataFrame({"unit": run.where(row), "kind": kind, "layer": f.layer.astype(int).to_numpy(),
                                    "column": column.astype(str).to_numpy(),
                                    "value": f.effect.astype(float).abs().to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def _control_frame(run: Run, row: Any) -> pd.DataFrame:
    """Every masked control of the unit's selected trial and replicates: unit, mask family (top | random |
    the structured mask's name), k, test flip_rate, test LD shift (LD - LD', logits) where measured."""
    c = _controls(run, row)
    if c.empty:
        return pd.DataFrame()
    family = c["mask"].str.extract(r"^(top|random)-")[0].fillna(c["mask"])
    return pd.DataFrame({"unit": run.where(row), "family": family.to_numpy(), "k": c.mask_cells.astype(float).to_numpy(),
                         "test_flip_rate": c.test_flip_rate.astype(float).to_numpy()})


def evaluate(run: Run) -> ClaimResult:
    units, apart = [], []
    maps, controls = [], []
    for row in run.in_distribution().itertuples(index=False):
        if row.role != ACTIVSCALAR:
            continue
        if row.apart:
            apart.append(f"{run.where(row)}: {row.apart}")
            continue
        r = reach(run.curves, list(row.seeds), FRACTION)
        a, k = top_vs_random(run, row, r.k)
        at_k90 = a if (k is not None and r.k is not None and k == r.k) else None
        conditions = [a, few_cells(r, at_k90), patching_rho(run, row), moved_at(run, row)]
        moved = _moved_shares(run, row)
        notes = [f"moved share (mean over seeds) at thresholds {moved}"]
        heads = head_roles(run, row)
        if heads:
            notes.append(heads)
        units.append(UnitVerdict(row.model, run.where(row), conditions, notes))
        maps.append(_map_frame(run, row))
        controls.append(_control_frame(run, row))
    figure = {name: pd.concat(frames, ignore_index=True) for name, frames in (("maps", maps), ("controls", controls))
              if any(len(f) for f in frames)}
    return ClaimResult("C3", TITLE, STATEMENT, ITEMS, RULE, thresholds(run), units, apart, figure=figure)


def head_roles(run: Run, row: Any) -> str | None:
    """For a head unit with head diagnostics (patching kinds attn_to_io, attn_to_s2, dla): how many of its
    TOP_HEADS head cells of largest |alpha - 1| look like IOI's name movers (at the final position, attention
    to IO >= ATTENDS and above that to S2, dla > 0: they write the IO answer) or S-inhibition heads (at the
    final position, attention to S2 >= ATTENDS and above that to IO), each cell listed. None otherwise."""
    p = run.patching
    if p.empty or "head" not in p.columns:
        return None
    mine = p[(p.unit_id == row.unit_id) & p.kind.isin(["attn_to_io", "attn_to_s2", "dla"]) & p["head"].notna()]
    if "split" in mine.columns and (mine.split == "val").any():
        mine = mine[mine.split == "val"]
    if mine.empty:
        return None
    keyed = _keyed(mine)
    diag = keyed.groupby([keyed.index, "kind"]).effect.first().unstack("kind")  # cell x kind
    where_of = {key: (r.layer, r.position, r.role, r["head"]) for key, r in keyed[CELL].iterrows()}
    s = _keyed(run.scalars[run.scalars.trial_id == row.trial_id])
    s = s[s["head"].notna()].effect.groupby(level=0).first().sort_values(ascending=False)
    top = [cell for cell in s.index if cell in diag.index][:TOP_HEADS]
    if not top:
        return None
    movers = inhibitors = 0
    listed = []
    for cell in top:
        layer, position, role, head = where_of[cell]  # a role can hold "|" (IOI's "S1|IO"): not split from the key
        final = role == "END"
        io, s2, dla = (float(diag.at[cell, k]) if k in diag.columns else math.nan
                       for k in ("attn_to_io", "attn_to_s2", "dla"))
        mover = final and io >= ATTENDS and io > s2 and dla > 0
        inhibitor = final and s2 >= ATTENDS and s2 > io
        movers, inhibitors = movers + mover, inhibitors + inhibitor
        kind = " (name mover?)" if mover else " (S-inhibition?)" if inhibitor else ""
        where = "END" if final else role if isinstance(role, str) else f"pos{int(position)}"
        listed.append(f"L{int(layer)}/h{int(head)}@{where}: IO {fmt(io)}, S2 {fmt(s2)}, "
                      f"dla {fmt(dla)}{kind}")
    return (f"top {len(top)} head cells by |alpha - 1|: {movers} look like name movers, {inhibitors} like S-inhibition "
            f"heads (at the final position, attention >= {fmt(ATTENDS)} to IO and writing it, or to S2): "
            + "; ".join(listed))


def _moved_shares(run: Run, row: Any) -> str:
    s = run.scalars[run.scalars.trial_id.isin(list(row.seeds))]
    if s.empty:
        return "n/a"
    return ", ".join(f"{fmt(t)}: {fmt(float(s.assign(hit=s.effect > t).groupby('trial_id').hit.mean().mean()))}"
                     for t in MOVED_AT)


def thresholds(run: Run) -> list[Threshold]:
    n = sorted({int(x) for x in run.in_distribution().n_test}) or [0]
    # twice the standard error of a difference of two independent rates near 0.5 (scipy.stats.binom)
    two_se = [2 * math.hypot(*[float(scipy.stats.binom.std(k, 0.5)) / k] * 2) for k in n if k]
    ld = run.predictions.ld_before.to_numpy(dtype=float)
    sd = float(np.std(ld, ddof=1)) if len(ld) > 1 else math.nan
    return [
        Threshold("C3_FEW", FEW, "C3: k90 at most this share of the cells (b)",
                  "one cell in twenty; on the run's grids the smallest positive share a k can take is "
                  f"{fmt(_smallest_share(run))}, so the rule is reachable"),
        Threshold("C3_TOP_FLIP", TOP_FLIP, "C3: top-k over random-k by at least this test flip_rate (a)",
                  "twice the standard error of a difference of two independent rates near 0.5 at the run's test n "
                  f"({', '.join(fmt(v) for v in two_se)} at n = {', '.join(fmt(k) for k in n)}): a smaller gap would "
                  "not stand out from prompt noise"),
        Threshold("C3_TOP_LOGIT", TOP_LOGIT, "C3: or by at least this many logits of LD shift (a)",
                  f"the unintervened LD varies over prompts with standard deviation {fmt(sd)} logits here; one logit is a "
                  "shift a reader sees in one prompt's probabilities (e^1 = 2.7 times the odds)"),
        Threshold("C3_MOVED_AT", MOVED_AT[0], f"C3: moved thresholds {', '.join(fmt(t) for t in MOVED_AT)} at which "
                  "the selection is redone (d)",
                  "half and twice the default moved threshold 0.1 (this run's units.moved_threshold: "
                  f"{', '.join(fmt(float(t)) for t in sorted(set(run.units.moved_threshold)))}): the result must not "
                  "hang on where 'moved' begins"),
    ]


def _smallest_share(run: Run) -> float:
    c = run.curves[(run.curves.kind == "sufficiency") & (run.curves.k > 0)]
    return float((c.k / c.n_cells).min()) if len(c) else math.nan

