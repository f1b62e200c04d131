"""C2: ActivScalar needs far fewer parameters than SteerVec, by design and for the effect it reaches."""
from __future__ import annotations

import math
from typing import Any

from reports.claims.common import Reach, pairs, reach, unpaired
from reports.engine import ClaimResult, Condition, Outcome, Threshold, UnitVerdict, bracket, exact
from reports.run import ACTIVSCALAR, DYNSCALAR, STEERVEC, Run
from reports.text import fmt
from storage.k90 import K90_FRACTION

MIN_RATIO = 10.0  # SteerVec's parameters over ActivScalar's at least this
FRACTION = K90_FRACTION  # the share of the full effect k90 is for (workers/k90.py)

TITLE = "Far fewer parameters"
STATEMENT = f"{ACTIVSCALAR} needs far fewer parameters than {STEERVEC}."
ITEMS = (f"Per model, task and site: the design ratio, {STEERVEC}'s trials.n_params over {ACTIVSCALAR}'s (a count, "
         "no noise); and its empirical counterpart, the parameters each needs for "
         f"{fmt(100 * FRACTION)}% of its own effect: k90 (the fewest cells of largest effect whose val flip_rate "
         f"alone reaches {fmt(FRACTION)} of the trial's full val flip_rate, from the curves table) times the "
         "method's parameters per cell (n_params / cells). The curves table keeps one point per k of a grid and a "
         "band over prompts per point, no per-prompt rows: k90 is bracketed by the grid point before it, the bands "
         "and the seeds (not a bootstrap), and the ratio's bracket follows.")
RULE = (f"A pair is supported when the design ratio is >= {fmt(MIN_RATIO)} AND the empirical ratio's bracket lies at "
        f"or above {fmt(MIN_RATIO)}; not supported when the design ratio is below it or the bracket lies wholly below "
        "it; inconclusive otherwise.")


def _params(row: Any, r: Reach, k: int | None) -> float:
    return k * row.n_params / r.n_cells if k is not None and r.n_cells else math.nan


def empirical(a: Any, s: Any, ra: Reach, rs: Reach) -> Condition:
    """The ratio of parameters for 90% of the effect, with the bracket that the grid, the bands and seeds allow."""
    name = f"{STEERVEC} / {ACTIVSCALAR} parameters for {fmt(100 * FRACTION)}% of the effect"
    rule = f"bracket at or above {fmt(MIN_RATIO)}"
    if ra.k is None or rs.k is None:
        missing = [row.role for row, r in ((a, ra), (s, rs)) if r.k is None]
        return Condition(name, rule, Outcome.INCONCLUSIVE, None, "n/a", "not measured",
                         f"curves with a val effect for {' and '.join(missing)} (analysis.curves; a trial whose full "
                         "val flip_rate is 0 has no k90)")
    value = _params(s, rs, rs.k) / _params(a, ra, ra.k)
    lo = _params(s, rs, max(rs.lo or 1, 1)) / _params(a, ra, ra.hi)
    hi = _params(s, rs, rs.hi) / _params(a, ra, max(ra.lo or 1, 1))
    shown = (f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}] ({ACTIVSCALAR} k90 {fmt(ra.k)} [{fmt(ra.lo)}, {fmt(ra.hi)}] of "
             f"{fmt(ra.n_cells)}, {STEERVEC} {fmt(rs.k)} [{fmt(rs.lo)}, {fmt(rs.hi)}] of {fmt(rs.n_cells)})")
    return bracket(name, rule, (value, lo, hi), MIN_RATIO, True, shown,
                   f"{ACTIVSCALAR}: {ra.resolve()}; {STEERVEC}: {rs.resolve()}")


def evaluate(run: Run) -> ClaimResult:
    units = []
    s_all = run.in_distribution()
    for a, s in pairs(run, ACTIVSCALAR, STEERVEC):
        ratio = s.n_params / a.n_params if a.n_params else math.inf
        design = exact(f"{STEERVEC} / {ACTIVSCALAR} n_params (design)", f">= {fmt(MIN_RATIO)}", ratio >= MIN_RATIO,
                       f"{fmt(ratio)} ({fmt(int(s.n_params))} / {fmt(int(a.n_params))})", value=ratio,
                       threshold=MIN_RATIO)
        ra, rs = reach(run.curves, list(a.seeds), FRACTION), reach(run.curves, list(s.seeds), FRACTION)
        dyn = s_all[(s_all.model == a.model) & (s_all.label == a.label) & (s_all.site == a.site)
                    & (s_all.role == DYNSCALAR)]
        notes = [f"{DYNSCALAR} beside them: {fmt(int(dyn.n_params.iloc[0]))} parameters"] if len(dyn) else []
        units.append(UnitVerdict(a.model, run.where(a), [design, empirical(a, s, ra, rs)], notes))
    return ClaimResult("C2", TITLE, STATEMENT, ITEMS, RULE, [
        Threshold("C2_MIN_RATIO", MIN_RATIO, f"C2: {STEERVEC}'s parameters over {ACTIVSCALAR}'s at least this, by "
                  "design and for 90% of the effect",
                  "an order of magnitude: the design ratio is a count (no noise); the empirical one is only as sharp "
                  "as the curves' k grid, whose neighbouring points are up to "
                  f"{fmt(_grid(run))} times apart in this run, so a bracket spans at least that factor")],
        units, unpaired(run, ACTIVSCALAR, STEERVEC))


def _grid(run: Run) -> float:
    c = run.curves[(run.curves.kind == "sufficiency") & (run.curves.k > 0)]
    ratios = [float((g.k.iloc[1:].to_numpy() / g.k.iloc[:-1].to_numpy()).max())
              for _, g in c.sort_values("k").groupby(["trial_id", "split"]) if len(g) > 1]
    return max(ratios) if ratios else math.nan
