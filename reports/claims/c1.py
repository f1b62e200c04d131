"""C1: ActivScalar is as effective and as faithful as SteerVec (a pair per model, task and site)."""
from __future__ import annotations

import math
from typing import Any

from reports.claims.common import MIN_REPLICATES, compare, pairs, unpaired
from reports.engine import REPLICATES_OF, ClaimResult, Condition, Threshold, UnitVerdict, interval, judge
from reports.run import ACTIVSCALAR, DIFFMEANS, FLIP, KL, SHIFT, STEERVEC, Run
from reports.stats import Estimate, paired_flip_p, paired_wilcoxon_p
from reports.text import fmt
from storage.matched import matched_trials

FLIP_MARGIN = 0.05  # ActivScalar's flip_rate at matched KL at most this below SteerVec's
KL_RATIO = 1.25  # ActivScalar's kl_other at most this times SteerVec's

TITLE = "As effective and as faithful as steering vectors"
STATEMENT = (f"{ACTIVSCALAR} reaches an effectiveness (test flip_rate) and a faithfulness (test kl_other) comparable to "
             f"{STEERVEC}'s on IOI and the country-capital conflict task (ccc).")
ITEMS = (f"Per model, task and site, {ACTIVSCALAR} against {STEERVEC} on the same test prompts (paired). *As "
         "effective at matched faithfulness*: the budget is the smallest val kl_other both methods' fronts reach (the "
         "larger of the two methods' lowest val kl_other over their complete search trials); each method is "
         "represented by its search trial with the highest val flip_rate within the budget (decided on val), with "
         f"its replicates; the test flip_rate difference {ACTIVSCALAR} - {STEERVEC} is judged, the difference of the "
         "normalised LD shift (LD - LD') / (2 LD) is shown beside it. *As faithful at matched effectiveness*: the two "
         "selected trials (both reach min_flip on val) with their replicates; the ratio of their mean test kl_other "
         f"is judged. A training-free baseline, {DIFFMEANS} (a difference-in-means steering vector per site), stands "
         f"beside {STEERVEC} where the run has it, to show what learning buys (not in the verdict).")
RULE = (f"A pair is supported when the lower bound of the flip_rate difference is >= -{fmt(FLIP_MARGIN)} AND the upper "
        f"bound of the kl_other ratio is <= {fmt(KL_RATIO)}; not supported when either interval lies wholly on the "
        "wrong side; inconclusive otherwise. Units near chance or without a trial reaching min_flip are listed apart.")


def budget_trials(run: Run, first: Any, second: Any) -> tuple[float, str | None, str | None]:
    """The matched val kl_other budget and each method's trial within it (decided on val: storage/matched.py, the
    rule the coordinator replicates them by under search.matched)."""
    return matched_trials(*(run.search_trials(r.unit_id).to_dict("records") for r in (first, second)))


def _matched(run: Run, key: str, first: Any, second: Any) -> tuple[dict[str, Estimate], str, str]:
    """The estimates at the matched budget, where they were taken, and what would give the matched trials their
    replicates (search.replicates replicates each unit's selected trial; the budget's trial may be another, which
    search.matched replicates too)."""
    budget, ta, tb = budget_trials(run, first, second)
    if ta is None or tb is None:
        return {}, "no complete search trials", REPLICATES_OF
    ra, rb = run.replicates(ta), run.replicates(tb)
    flip = compare(run, f"{key}/flip", ra, rb, FLIP)
    shift = compare(run, f"{key}/shift", ra, rb, SHIFT)
    kl = compare(run, f"{key}/kl", list(first.seeds), list(second.seeds), KL, ratio=True)
    where = (f"budget val kl_other {fmt(budget)}: {first.role} {ta.rsplit('-', 1)[-1]} ({fmt(len(ra))} replicate(s)), "
             f"{second.role} {tb.rsplit('-', 1)[-1]} ({fmt(len(rb))})")
    unreplicated = [f"{r.role} {t.rsplit('-', 1)[-1]}" for r, t, reps in ((first, ta, ra), (second, tb, rb))
                    if t != r.trial_id and len(reps) < 2]
    replicates_of = REPLICATES_OF if not unreplicated else (
        f"replicates of the trials within the budget ({', '.join(unreplicated)}), which are not their units' selected "
        "trials: a sweep replicates them too with search.matched (e.g. [[activscalar, steervec]])")
    return {"flip": flip, "shift": shift, "kl": kl}, where, replicates_of


def _paired_tests(run: Run, first: Any, second: Any) -> str:
    a, b = run.prompts(first.trial_id), run.prompts(second.trial_id)
    common = a.index.intersection(b.index)
    if not len(common):
        return ""
    a, b = a.loc[common], b.loc[common]
    return (f"selected trials, prompts taken as independent (for reference, not in the verdict): McNemar p = "
            f"{fmt(paired_flip_p(a[FLIP].to_numpy(), b[FLIP].to_numpy()))} (flip), Wilcoxon p = "
            f"{fmt(paired_wilcoxon_p(a[KL].to_numpy(), b[KL].to_numpy()))} (kl_other)")


def evaluate(run: Run) -> ClaimResult:
    units: list[UnitVerdict] = []
    apart: list[str] = []
    noise: dict[str, list[float]] = {"flip": [], "kl": []}
    for a, s in pairs(run, ACTIVSCALAR, STEERVEC):
        where = run.where(a)
        if a.apart or s.apart:
            apart.append(f"{where}: " + "; ".join(f"{r.role} {r.apart}" for r in (a, s) if r.apart))
            continue
        est, budget, replicates_of = _matched(run, where, a, s)
        conditions: list[Condition] = [
            judge(f"test flip_rate {ACTIVSCALAR} - {STEERVEC} at matched kl_other", est.get("flip"), -FLIP_MARGIN,
                  True, min_replicates=MIN_REPLICATES, replicates_of=replicates_of),
            judge(f"test kl_other {ACTIVSCALAR} / {STEERVEC} (selected trials)", est.get("kl"), KL_RATIO, False,
                  min_replicates=MIN_REPLICATES)]
        for name in ("flip", "kl"):
            e = est.get(name)
            if e is not None and not math.isnan(e.spread_clusters[0]):
                noise[name].append(max(e.spread_clusters))
        notes = [budget, f"normalised LD shift {ACTIVSCALAR} - {STEERVEC} at matched kl_other: "
                         f"{interval(est.get('shift'))}", _paired_tests(run, a, s)]
        notes.append(_baseline(run, a))
        units.append(UnitVerdict(a.model, where, conditions, [n for n in notes if n]))
    apart += unpaired(run, ACTIVSCALAR, STEERVEC)
    return ClaimResult("C1", TITLE, STATEMENT, ITEMS, RULE, thresholds(run, noise), units, apart)


def _baseline(run: Run, first: Any) -> str:
    """What learning buys: ActivScalar against the training-free DiffMeans at the same model, task and site."""
    s = run.in_distribution()
    dm = s[(s.model == first.model) & (s.label == first.label) & (s.site == first.site) & (s.role == DIFFMEANS)]
    if dm.empty:
        return (f"{DIFFMEANS} beside {STEERVEC}: not measured (needs the diffmeans method, a training-free "
                "difference-in-means steering vector per site scaled to the swap)")
    est, _, _ = _matched(run, f"{run.where(first)}/{DIFFMEANS}", first, dm.iloc[0])
    return (f"against {DIFFMEANS} (not in the verdict): flip_rate difference at matched kl_other "
            f"{interval(est.get('flip'))}, kl_other ratio {interval(est.get('kl'))}")


def thresholds(run: Run, noise: dict[str, list[float]]) -> list[Threshold]:
    n = sorted({int(x) for x in run.in_distribution().n_test})

    def spread(values: list[float]) -> str:
        return f"{fmt(min(values))} to {fmt(max(values))}" if values else "n/a (no pair judged)"
    return [
        Threshold("C1_FLIP_MARGIN", FLIP_MARGIN, f"C1: lower bound of {ACTIVSCALAR} - {STEERVEC} test flip_rate at "
                  "matched kl_other at least minus this",
                  f"{fmt(FLIP_MARGIN)} of a flip_rate is {', '.join(fmt(FLIP_MARGIN * k) for k in n)} of the run's "
                  f"{', '.join(fmt(k) for k in n)} test prompts: under the one-prompt resolution of a rate, so it "
                  "asks for no visible loss. The prompt-cluster part alone of the paired difference's interval is "
                  f"+/- {spread(noise['flip'])} here: where it is wider than the margin a pair can be cleared only if "
                  "the two methods flip the same prompts"),
        Threshold("C1_KL_RATIO", KL_RATIO, f"C1: upper bound of {ACTIVSCALAR}'s / {STEERVEC}'s test kl_other at "
                  "most this",
                  "a quarter more off-target change is the most called comparable; the prompt-cluster part alone of "
                  f"the paired ratio's interval is +/- {spread(noise['kl'])} here, so a ratio of 1 clears it"),
    ]
