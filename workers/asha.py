"""ASHA: asynchronous successive halving over training steps, inside one unit's search (no torch).

`search.pruner: {kind: asha, min_steps: r, eta: 3}`. Rungs are at r, r*eta, r*eta^2, ... steps
(below a trial's own steps: a rung at its last step would decide nothing). At a rung, a search
trial is scored on the val check slice (workers/stopping.py `RungJudge`) and compared with every
search trial of its unit that has reached that rung so far.

THE RULE (asynchronous: promote by what is known now, so no worker ever waits for a rung to fill).
When trials reach a rung, the competitors are the unit's earlier search trials at that rung (the
history the coordinator sends with the work, from stored rows: table `checks`, kind 'rung') plus the
trials of this batch that reach it now, n in all. Of those, the best max(min_kept, n // eta) by
`rung_key` are kept (min_kept, 1 by default, is a floor so that a front of several complete trials
remains); a trial of this batch continues only if it is one of them, else it is pruned at the rung
(status pruned, steps_done = the rung). So with every trial of a unit at hand at once exactly the top
1/eta continue; a trial arriving early, with fewer than eta competitors, continues only if it is the
best so far (as Optuna's SuccessiveHalvingPruner does); and a trial is never held back to wait.

The rung key keeps THE SELECTION RULE'S ORDER (storage/selection.py, `selected_sql`): trials whose
val flip_rate reaches min_flip first, among them fewer sites moved first; below min_flip, higher
flip_rate first; then lower kl_other; ties on the trial number (the trial id's order). So ASHA keeps
the trials the selection would pick if the search ended at that rung.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# storage.selection.RATE_SLACK (workers import nothing of storage): a rate reaching min_flip within it counts
RATE_SLACK = 1e-6


class RungEntry(NamedTuple):
    """One search trial at one rung: what it was judged by."""

    number: int  # the trial's Optuna number (ties end on it, as on the trial id)
    flip_rate: float  # on the val check slice
    kl_other: float
    sites_moved: int


RungKey = tuple[int, int, float, float, int]


def rung_key(entry: RungEntry, min_flip: float) -> RungKey:
    """Smaller is better, in the order of the selection rule's ORDER BY (storage/selection.py)."""
    kl = entry.kl_other if math.isfinite(entry.kl_other) else math.inf
    if entry.flip_rate >= min_flip - RATE_SLACK:
        return (0, entry.sites_moved, 0.0, kl, entry.number)
    return (1, 0, -entry.flip_rate, kl, entry.number)


def rung_steps(min_steps: int, eta: int, steps: int) -> list[int]:
    """The rungs below `steps`: min_steps, min_steps*eta, ..."""
    rungs, rung = [], min_steps
    while rung < steps:
        rungs.append(rung)
        rung *= eta
    return rungs


@dataclass(frozen=True)
class Rungs:
    """ASHA for one piece of a unit's search work: the rule's settings and the unit's history so far.
    Plain data: the coordinator builds it (orchestrator/rungs.py), the worker applies it."""

    min_steps: int
    eta: int
    min_flip: float  # the selection rule's threshold (selection.min_flip)
    history: Mapping[int, tuple[RungEntry, ...]] = field(default_factory=dict)  # rung step -> earlier trials there
    min_kept: int = 1  # at least this many go on at a rung (search.pruner.min_kept)

    def is_rung(self, step: int) -> bool:
        rung = self.min_steps
        while rung < step:
            rung *= self.eta
        return rung == step

    def kept(self, step: int, arriving: list[RungEntry]) -> list[bool]:
        """For each trial reaching rung `step` now: whether it continues (THE RULE above)."""
        numbers = {e.number for e in arriving}
        competitors = [e for e in self.history.get(step, ()) if e.number not in numbers] + list(arriving)
        n_kept = max(self.min_kept, len(competitors) // self.eta)
        best = sorted(rung_key(e, self.min_flip) for e in competitors)[:n_kept]
        keys = set(best)
        return [rung_key(e, self.min_flip) in keys for e in arriving]
