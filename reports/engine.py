"""The one engine that turns measurements into verdicts, and the verdicts' data.

A claim (reports/claims.py) is judged unit by unit (or unit pair by unit pair). Each unit has
conditions: a measured statistic with its interval held against a threshold by a rule stated
on the interval's bounds. A condition is *supported* when the interval clears the threshold on
the claim's side, *not supported* when it clears it on the other side, and *inconclusive* when
it straddles the threshold, when the quantity is not measured, or when too few replicates stand
behind it; an inconclusive condition says what would resolve it and never counts as a failure.

A unit is supported when all its conditions are, not supported when any is, inconclusive
otherwise. A claim is judged per model over its units: supported when all are, not supported
when all are, mixed when some are supported and some not, inconclusive otherwise (some units
inconclusive, none contradicting the rest, or none judged at all).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reports.stats import Estimate, Needed, needed
from reports.text import fmt


class Outcome(StrEnum):
    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"
    MIXED = "mixed"  # a claim only: some units supported, some not


@dataclass(frozen=True)
class Threshold:
    """A threshold of a rule, with why its value is not below the noise the run can resolve."""
    name: str
    value: float
    rule: str  # what it decides, in words
    justification: str  # why this value, against noise


@dataclass
class Condition:
    """One measured comparison of a unit against a threshold (or a quantity not measured)."""
    name: str  # what is measured
    rule: str  # the rule on the interval's bounds, with its threshold's value
    outcome: Outcome
    estimate: Estimate | None = None
    shown: str = ""  # the measured value as the page writes it
    why: str = ""  # why the outcome: for an inconclusive one, what is missing or where the interval lies
    resolve: str = ""  # for an inconclusive one: what would resolve it
    threshold: float | None = None  # for the figure: the threshold the interval is held against
    point: tuple[float, float, float] | None = None  # for the figure: value, low, high (a bracket, or an interval)


@dataclass
class UnitVerdict:
    """A unit's (or unit pair's) conditions and their combined outcome."""
    model: str
    unit: str  # as the page names it
    conditions: list[Condition]
    notes: list[str] = field(default_factory=list)  # measured beside the rule, not in it
    unjudged: list[Condition] = field(default_factory=list)  # measured, but the design is too weak to judge them

    @property
    def outcome(self) -> Outcome:
        return all_of([c.outcome for c in self.conditions])


@dataclass
class ClaimResult:
    """A claim judged on a run: its units, its verdict per model, and what the page shows beside them."""
    key: str
    title: str
    statement: str
    items: str  # what is measured per unit or pair
    rule: str  # how a unit's conditions are judged
    thresholds: list[Threshold]
    units: list[UnitVerdict]
    apart: list[str] = field(default_factory=list)  # units listed apart (near chance, fallback) and why
    extra: list[str] = field(default_factory=list)  # further markdown (extrapolation, secondary lines)
    figure: dict[str, Any] = field(default_factory=dict)  # further figure data (DataFrames) beside the conditions

    def models(self) -> list[str]:
        return list(dict.fromkeys(u.model for u in self.units))

    def verdict(self, model: str) -> Outcome:
        return claim_outcome([u.outcome for u in self.units if u.model == model])

    def reason(self, model: str) -> str:
        outcomes = [u.outcome for u in self.units if u.model == model]
        if not outcomes:
            return "no unit could be judged"
        counts = [f"{fmt(sum(o == k for o in outcomes))} {k}" for k in
                  (Outcome.SUPPORTED, Outcome.NOT_SUPPORTED, Outcome.INCONCLUSIVE) if any(o == k for o in outcomes)]
        return f"{', '.join(counts)} of {fmt(len(outcomes))} unit(s)"


def all_of(outcomes: Sequence[Outcome]) -> Outcome:
    """A unit's outcome from its conditions: any not supported -> not supported; all supported -> supported."""
    if any(o == Outcome.NOT_SUPPORTED for o in outcomes):
        return Outcome.NOT_SUPPORTED
    if outcomes and all(o == Outcome.SUPPORTED for o in outcomes):
        return Outcome.SUPPORTED
    return Outcome.INCONCLUSIVE


def claim_outcome(outcomes: Sequence[Outcome]) -> Outcome:
    """A claim's outcome over its units (see the module docstring); inconclusive units never count as failures."""
    has = {o for o in outcomes}
    if Outcome.SUPPORTED in has and Outcome.NOT_SUPPORTED in has:
        return Outcome.MIXED
    if has == {Outcome.SUPPORTED}:
        return Outcome.SUPPORTED
    if has == {Outcome.NOT_SUPPORTED}:
        return Outcome.NOT_SUPPORTED
    return Outcome.INCONCLUSIVE


# --- conditions ---------------------------------------------------------------------------------------------------

def interval(e: Estimate | None) -> str:
    """value [low, high] as the page writes it, or n/a."""
    if e is None or math.isnan(e.value):
        return "n/a"
    if not e.has_interval:
        return f"{fmt(e.value)} (no interval)"
    return f"{fmt(e.value)} [{fmt(e.lo)}, {fmt(e.hi)}]"


PROMPTS = "prompt clusters"  # what the lower level of the bootstrap resamples, by default
FAR = 100  # more than FAR times the present data: said as such, not as a count no study would collect


def resolve_text(e: Estimate, threshold: float, items: str = PROMPTS, fixed: bool = False) -> str:
    """What would bring the interval clear of the threshold, from the observed variance (stats.needed): more
    `items` (the bootstrap's lower level) or more replicates. `fixed`: the items cannot grow (a site's cells)."""
    n: Needed = needed(e, threshold)
    if n.on_threshold:
        return ("the estimate sits on the threshold: more data narrows the interval around it but cannot move it "
                "off")
    options, far = [], []
    if n.clusters is not None and not fixed:
        if n.clusters > FAR * max(e.n_clusters, 1):
            far.append(f"{items} (now {fmt(e.n_clusters)})")
        else:
            prompts = f" (~{fmt(n.prompts)} prompts; now {fmt(e.n_clusters)} clusters, {fmt(e.n_prompts)} prompts)" \
                if items == PROMPTS else f" (now {fmt(e.n_clusters)})"
            options.append(f"about {fmt(n.clusters)} {items}{prompts} at the present replicates")
    if n.replicates is not None:
        if n.replicates > FAR * max(min(e.replicates), 1):
            far.append(f"replicates (now {fmt(min(e.replicates))})")
        else:
            options.append(f"about {fmt(n.replicates)} replicates (now {fmt(min(e.replicates))}) at the present {items}")
    if n.factor is not None and not fixed:
        if n.factor > FAR:
            far.append(f"{items} and replicates together")
        else:
            options.append(f"about {fmt(n.factor)} times the {items} and the replicates together")
    if far and not options:
        return (f"more than {FAR} times the " + ", or the ".join(far) + ": the estimate is too close to its threshold "
                "for more data of this design to move the interval off it, at the observed variance")
    if not options:
        return (f"not more data of this design: the spread over the {items} alone (all there are) is wider than the "
                "distance to the threshold")
    text = " or ".join(options) + ", at the observed variance"
    if n.replicate_noise_unknown:
        text += "; the replicate (seed) noise is unmeasured with one replicate, so more replicates come first"
    return text


REPLICATES_OF = "replicates of each trial compared (search.replicates)"  # what gives an arm its replicates


def judge(name: str, e: Estimate | None, threshold: float, higher_is_claim: bool, *, min_replicates: int = 1,
          strict: bool = False, unit: str = "", items: str = PROMPTS, fixed: bool = False,
          replicates_of: str = REPLICATES_OF) -> Condition:
    """The claim's side of `threshold` is above it (higher_is_claim) or below it: supported when the whole interval
    is on that side (strictly, with `strict`), not supported when it is wholly on the other side, inconclusive
    otherwise. Fewer than `min_replicates` replicates in any arm, or no interval: inconclusive (resolved by at least
    `min_replicates` `replicates_of`)."""
    c = _judge(name, e, threshold, higher_is_claim, min_replicates, strict, unit, replicates_of)
    if c.outcome == Outcome.INCONCLUSIVE and e is not None and e.has_interval and c.why.startswith("the interval"):
        c.resolve = resolve_text(e, threshold, items, fixed)
    c.threshold = threshold
    if e is not None and not math.isnan(e.value):
        c.point = (e.value, e.lo, e.hi)
    return c


def _judge(name: str, e: Estimate | None, threshold: float, higher_is_claim: bool, min_replicates: int, strict: bool,
           unit: str, replicates_of: str) -> Condition:
    side = ">" if strict else ">="
    rule = (f"lower bound {side} {fmt(threshold)}{unit}" if higher_is_claim else
            f"upper bound {'<' if strict else '<='} {fmt(threshold)}{unit}")
    shown = interval(e)
    if e is None or math.isnan(e.value):
        return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown, "not measured")
    if min(e.replicates, default=0) < min_replicates:
        return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown,
                         f"{fmt(min(e.replicates))} replicate(s): the interval holds no seed noise",
                         f"at least {fmt(min_replicates)} {replicates_of}")
    if not e.has_interval:
        return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown,
                         f"undefined in {fmt(100 * e.undefined)}% of the resamples",
                         "more prompt clusters or replicates, so that the statistic is defined in the resamples")
    lo, hi = e.lo, e.hi
    if higher_is_claim:
        clear_for = lo > threshold if strict else lo >= threshold
        clear_against = hi <= threshold if strict else hi < threshold
    else:
        clear_for = hi < threshold if strict else hi <= threshold
        clear_against = lo >= threshold if strict else lo > threshold
    if clear_for:
        return Condition(name, rule, Outcome.SUPPORTED, e, shown)
    if clear_against:
        return Condition(name, rule, Outcome.NOT_SUPPORTED, e, shown)
    return Condition(name, rule, Outcome.INCONCLUSIVE, e, shown, f"the interval straddles {fmt(threshold)}",
                     resolve_text(e, threshold))


def bracket(name: str, rule: str, point: tuple[float, float, float], threshold: float, higher_is_claim: bool,
            shown: str, resolve: str) -> Condition:
    """A condition on a bracket that is not a bootstrap interval (what a coarse grid and per-point bands allow),
    judged on its ends like an interval."""
    _, lo, hi = point
    if higher_is_claim:
        outcome = Outcome.SUPPORTED if lo >= threshold else Outcome.NOT_SUPPORTED if hi < threshold else None
    else:
        outcome = Outcome.SUPPORTED if hi <= threshold else Outcome.NOT_SUPPORTED if lo > threshold else None
    if outcome is not None:
        return Condition(name, rule, outcome, None, shown, threshold=threshold, point=point)
    return Condition(name, rule, Outcome.INCONCLUSIVE, None, shown, f"the bracket straddles {fmt(threshold)}", resolve,
                     threshold=threshold, point=point)


def not_measured(name: str, rule: str, needs: str, shown: str = "n/a") -> Condition:
    """A condition whose quantity today's tables do not carry."""
    return Condition(name, rule, Outcome.INCONCLUSIVE, None, shown, "not measured", needs)


def exact(name: str, rule: str, passed: bool, shown: str, why: str = "", value: float | None = None,
          threshold: float | None = None) -> Condition:
    """A condition on a quantity with no noise (a count, an identity): supported or not."""
    point = (value, value, value) if value is not None else None
    return Condition(name, rule, Outcome.SUPPORTED if passed else Outcome.NOT_SUPPORTED, None, shown, why,
                     threshold=threshold, point=point)


Evaluate = Callable[[Any], ClaimResult]
