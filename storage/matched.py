"""C1's matched-faithfulness rule, defined here once, decided on val only.

Two units at the same model, task and site (ActivScalar and SteerVec, say) are compared *at matched
faithfulness*: the budget is the smallest val kl_other both of their fronts reach, the larger of the two
units' lowest val kl_other over their complete search trials; each unit is represented by its search trial
with the highest val flip_rate within the budget (then the lower val kl_other, then the trial id). Test
metrics never enter it.

Two consumers use it: the findings page (reports/claims/c1.py) to take the pair's test difference, and the
coordinator (`search.matched`, orchestrator/units.py) to replicate those trials like a unit's selected trial,
so that the page's interval at matched faithfulness stands on replicates that vary the data.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

BUDGET_SLACK = 1e-9  # a trial's val kl_other reaching the budget within this is within it


def _finite(value: Any) -> float | None:
    x = float(value) if value is not None else math.nan
    return x if math.isfinite(x) else None


def matched_trials(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]]
                   ) -> tuple[float, str | None, str | None]:
    """(budget, first's trial id, second's trial id) from each unit's complete search trials (rows with trial_id,
    val_kl_other, val_flip_rate); (nan, None, None) when either has no trial with a finite val kl_other."""
    kls = [[k for r in rows if (k := _finite(r["val_kl_other"])) is not None] for rows in (first, second)]
    if not kls[0] or not kls[1]:
        return math.nan, None, None
    budget = max(min(kls[0]), min(kls[1]))

    def best(rows: Sequence[Mapping[str, Any]]) -> str:
        within = [r for r in rows if (k := _finite(r["val_kl_other"])) is not None and k <= budget + BUDGET_SLACK]
        flip = [_finite(r["val_flip_rate"]) for r in within]
        order = sorted(zip(within, flip), key=lambda rf: (-(rf[1] if rf[1] is not None else -math.inf),
                                                          float(rf[0]["val_kl_other"]), str(rf[0]["trial_id"])))
        return str(order[0][0]["trial_id"])
    return budget, best(first), best(second)
