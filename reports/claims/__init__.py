"""The claims of Stoehr et al. (2024), C1 to C6, each one small definition (reports/claims/c1.py ...): what is
measured per unit or unit pair, the rule on interval bounds, and its thresholds with why they are not below the
noise. `CLAIMS` evaluates each on a run (reports.run.Run) into a reports.engine.ClaimResult."""
from __future__ import annotations

from collections.abc import Callable

from reports.claims import c1, c2, c3, c4, c5, c6
from reports.engine import ClaimResult
from reports.run import Run

CLAIMS: list[Callable[[Run], ClaimResult]] = [c1.evaluate, c2.evaluate, c3.evaluate, c4.evaluate, c5.evaluate,
                                              c6.evaluate]


def evaluate(run: Run) -> list[ClaimResult]:
    """Every claim judged on the run."""
    return [claim(run) for claim in CLAIMS]
