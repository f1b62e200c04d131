"""C6: DynScalar transfers to prompts of held-out templates, and reading the activation is what helps."""
from __future__ import annotations

from typing import Any

import pandas as pd
import scipy.stats

from reports.claims.common import MIN_REPLICATES, compare, mean_of
from reports.engine import ClaimResult, Condition, Outcome, Threshold, UnitVerdict, interval, judge, not_measured
from reports.run import ACTIVSCALAR, ACTIVSCALAR_ROLE, BIAS_ONLY, DYNSCALAR, FLIP, KL, LD, Run
from reports.text import fmt

MIN_TEMPLATES = 3  # held-out templates a unit is judged on ...
MIN_PROMPTS = 100  # ... each with at least this many test prompts
MIN_RETAINED = 0.5  # held-out flip_rate at least this share of the in-distribution one
FLIP_MARGIN = 0.05  # DynScalar's flip_rate at most this below its bias-only control's

TITLE = "DynScalar transfers to prompts of other lengths"
STATEMENT = (f"{DYNSCALAR} transfers to prompts of another length (held-out templates), where {ACTIVSCALAR} and "
             f"{'SteerVec'} are tied to token positions; its bias-only control ({BIAS_ONLY}) shows that reading the "
             "activation is what helps.")
ITEMS = (f"Per model, task and site with held-out templates: {DYNSCALAR}'s selected trial and replicates, trained and "
         "selected on the other templates, tested on the held-out ones; beside it its in-distribution counterpart "
         f"(the same model, task, site and method without held-out templates), {BIAS_ONLY} (alpha = 1 + b, the "
         f"activation not read), a role-aligned {ACTIVSCALAR} (one scalar per token role, so it runs on any length) "
         "and the no-intervention row (flip_rate 0 and kl_other 0 by construction; the unintervened LD). (i) retained: "
         "held-out over in-distribution test flip_rate; (ii) test flip_rate "
         f"{DYNSCALAR} - {BIAS_ONLY} on the same held-out prompts (paired); (iii) test kl_other {DYNSCALAR} - "
         f"{BIAS_ONLY}, paired.")
RULE = (f"A unit is judged only with at least {fmt(MIN_TEMPLATES)} held-out templates of at least {fmt(MIN_PROMPTS)} "
        f"distinct test prompts each over its replicates (fewer: inconclusive). Supported when (i)'s lower bound is "
        f">= {fmt(MIN_RETAINED)}, (ii)'s lower bound is >= -{fmt(FLIP_MARGIN)} and (iii)'s upper bound is < 0 "
        f"(reading the activation helps: flips within {fmt(FLIP_MARGIN)} of the control at a lower kl_other); not "
        "supported when any interval lies wholly on the wrong side.")


def _role_aligned(group: pd.DataFrame) -> Any:
    """The held-out group's role-aligned ActivScalar unit (method activscalar_role: one scalar per token role), if
    any."""
    aligned = group[group.role == ACTIVSCALAR_ROLE]
    return aligned.iloc[0] if len(aligned) else None


def _indistribution(run: Run, row: Any) -> Any:
    s = run.in_distribution()
    same = s[(s.model == row.model) & (s.task == row.task) & (s.site == row.site) & (s.method == row.method)]
    return same.iloc[0] if len(same) else None


def _templates(run: Run, trial_ids: list[str]) -> pd.Series:
    """Distinct test prompts per held-out template over the trial and its replicates (`Run.pooled_prompts`):
    with fold replicates each tests its own share of the prompts, so the pool is what the unit is judged on."""
    pooled = run.pooled_prompts(trial_ids)
    if pooled.empty:
        return pd.Series(dtype=int)
    return pooled.template.fillna("(unknown)").value_counts().sort_index()


def unit(run: Run, group: pd.DataFrame) -> UnitVerdict:
    dyn = group[group.role == DYNSCALAR].iloc[0]
    where = run.where(dyn)
    key = f"{where}/C6"
    bias = group[group.role == BIAS_ONLY]
    indist = _indistribution(run, dyn)
    retained_name = "held-out / in-distribution test flip_rate"
    if indist is None:
        retained = not_measured(retained_name, f"lower bound >= {fmt(MIN_RETAINED)}",
                                f"the in-distribution {DYNSCALAR} unit of this model, task and site")
    else:
        e = compare(run, f"{key}/retained", list(dyn.seeds), list(indist.seeds), FLIP, ratio=True)
        retained = judge(retained_name, e, MIN_RETAINED, True, min_replicates=MIN_REPLICATES)
    if bias.empty:
        helps = [not_measured(f"test {m} {DYNSCALAR} - {BIAS_ONLY}", r, f"the {BIAS_ONLY} control unit")
                 for m, r in (("flip_rate", f"lower bound >= -{fmt(FLIP_MARGIN)}"), ("kl_other", "upper bound < 0"))]
    else:
        b = list(bias.iloc[0].seeds)
        helps = [judge(f"test flip_rate {DYNSCALAR} - {BIAS_ONLY}", compare(run, f"{key}/flip", list(dyn.seeds), b, FLIP),
                       -FLIP_MARGIN, True, min_replicates=MIN_REPLICATES),
                 judge(f"test kl_other {DYNSCALAR} - {BIAS_ONLY}", compare(run, f"{key}/kl", list(dyn.seeds), b, KL),
                       0.0, False, min_replicates=MIN_REPLICATES, strict=True)]
    conditions = [retained] + helps
    notes = _rows(run, key, dyn, bias, _role_aligned(group))
    templates = _templates(run, list(dyn.seeds))
    enough = int((templates >= MIN_PROMPTS).sum())
    sizes = ", ".join(f"{fmt(int(n))}" for n in templates)
    counted = f"{fmt(len(templates))} held-out template(s) of {sizes} test prompts"
    if enough < MIN_TEMPLATES:
        shown = "; ".join(f"{c.name}: {c.shown} ({c.outcome})" for c in conditions)
        return UnitVerdict(dyn.model, where, [Condition(
            f"at least {fmt(MIN_TEMPLATES)} held-out templates of >= {fmt(MIN_PROMPTS)} prompts",
            f">= {fmt(MIN_TEMPLATES)} templates of >= {fmt(MIN_PROMPTS)}",
            Outcome.INCONCLUSIVE, None, counted, f"only {counted}",
            f"at least {fmt(MIN_TEMPLATES)} held-out templates of at least {fmt(MIN_PROMPTS)} test prompts each "
            "(the task's heldout_templates and n)")], [f"measured on the {counted}, not judged: {shown}"] + notes,
            unjudged=conditions)
    return UnitVerdict(dyn.model, where, conditions, [counted] + notes)


def _rows(run: Run, key: str, dyn: Any, bias: pd.DataFrame, aligned: Any) -> list[str]:
    """The comparison rows of the unit (not in the rule): each method's held-out test flip_rate and kl_other."""
    shown = [(DYNSCALAR, dyn)] + ([(BIAS_ONLY, bias.iloc[0])] if len(bias) else [])
    lines = [f"{name}: test flip_rate {interval(mean_of(run, f'{key}/{name}/flip', list(r.seeds), FLIP))}, test "
             f"kl_other {interval(mean_of(run, f'{key}/{name}/kl', list(r.seeds), KL))}" for name, r in shown]
    if aligned is not None:
        lines.append(f"role-aligned {ACTIVSCALAR} ({ACTIVSCALAR_ROLE}): test flip_rate "
                     f"{interval(mean_of(run, f'{key}/aligned/flip', list(aligned.seeds), FLIP))}, test kl_other "
                     f"{interval(mean_of(run, f'{key}/aligned/kl', list(aligned.seeds), KL))}")
    else:
        lines.append(f"role-aligned {ACTIVSCALAR}: not measured (needs a unit of method activscalar_role, one scalar "
                     "per token role, on the held-out task)")
    ld = float(run.prompts(dyn.trial_id)[LD].mean())
    lines.append(f"no intervention: flip_rate 0, kl_other 0, mean LD {fmt(ld)}")
    return lines


def evaluate(run: Run) -> ClaimResult:
    held = run.in_distribution(heldout=True)
    units = [unit(run, g) for _, g in held.groupby(["model", "label", "site"], sort=False)
             if (g.role == DYNSCALAR).any()]
    return ClaimResult("C6", TITLE, STATEMENT, ITEMS, RULE, [
        Threshold("C6_MIN_TEMPLATES", MIN_TEMPLATES, "C6: held-out templates a unit is judged on",
                  "one template could transfer by the accident of its wording; three is the fewest that can show the "
                  "transfer is not about one template"),
        Threshold("C6_MIN_PROMPTS", MIN_PROMPTS, "C6: distinct test prompts per held-out template over a unit's replicates",
                  f"at {fmt(MIN_PROMPTS)} prompts the standard error of a rate near 0.5 is "
                  f"{fmt(float(scipy.stats.binom.std(MIN_PROMPTS, 0.5)) / MIN_PROMPTS)} (scipy.stats.binom), about "
                  "C6_FLIP_MARGIN: a template's own rate then says something"),
        Threshold("C6_MIN_RETAINED", MIN_RETAINED, f"C6: lower bound of {DYNSCALAR}'s held-out over in-distribution "
                  "test flip_rate at least this",
                  "transfer keeps at least half the effect; a lower share would be indistinguishable from partial "
                  "collapse"),
        Threshold("C6_FLIP_MARGIN", FLIP_MARGIN, f"C6: lower bound of {DYNSCALAR} - {BIAS_ONLY} test flip_rate at "
                  "least minus this", "as C1_FLIP_MARGIN: no visible loss of effect")],
        units)
