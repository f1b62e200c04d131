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

THE ORDER at a rung (`search.pruner.rank`):
- 'selection': the selection rule's order (storage/selection.py, `selected_sql`), `rung_key`: trials
  whose val flip_rate reaches min_flip first, among them fewer sites moved first; below min_flip,
  higher flip_rate first; then lower kl_other; ties on the trial number. The trials the selection
  would pick if the search ended at that rung. It loses sparse winners: L1 pulls a sparse trial's
  flip below min_flip for a while before it settles with few cells (on SmolLM2 IOI a trial at
  0.94 / 82 cells after 6 steps is at 0.88 / 17 after 24 and ends at 0.93 / 7), and at that rung
  every denser trial above min_flip ranks ahead of it (docs/performance.md, ASHA).
- 'front' (the default), `front_order`: Pareto fronts on the two things the selection rule asks
  for, flip_rate capped at min_flip (above it the rule does not care how much) and sites moved. A
  trial is in the first front unless another reaches at least its capped flip with at most its
  cells (and is better in one); the first front holds the sparsest trial above min_flip and every
  trial with fewer cells and a lower flip, so a sparse trial dipping below min_flip is kept while
  denser ones are pruned. Fronts in order, each in the selection's order; trials below min_flip that
  moved no cell (no effect to rank yet, their sparsity says nothing) after every front.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

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


def dominates(a: RungEntry, b: RungEntry, min_flip: float) -> bool:
    """a at least as good as b on capped flip and on cells moved, and better on one."""
    flip_a, flip_b = (min_flip if e.flip_rate >= min_flip - RATE_SLACK else e.flip_rate for e in (a, b))
    return flip_a >= flip_b and a.sites_moved <= b.sites_moved and (flip_a > flip_b or a.sites_moved < b.sites_moved)


def front_order(entries: list[RungEntry], min_flip: float) -> list[RungEntry]:
    """Best first: the Pareto fronts of the trials that moved a cell or reach min_flip, in order, each in the
    selection's order (`rung_key`); then the trials below min_flip that moved none, in the selection's order."""
    ranked = [e.sites_moved > 0 or e.flip_rate >= min_flip - RATE_SLACK for e in entries]
    rest = [e for e, r in zip(entries, ranked) if r]
    ordered: list[RungEntry] = []
    while rest:
        front = [a for a in rest if not any(dominates(b, a, min_flip) for b in rest)]
        ordered += sorted(front, key=lambda e: rung_key(e, min_flip))
        rest = [e for e in rest if e not in front]
    return ordered + sorted((e for e, r in zip(entries, ranked) if not r), key=lambda e: rung_key(e, min_flip))


Rank = Literal["front", "selection"]  # THE ORDER at a rung (search.pruner.rank)
RANKS: tuple[Rank, ...] = get_args(Rank)


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
    rank: Rank = "front"  # THE ORDER at a rung (search.pruner.rank)

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
        kept = {e.number for e in self.order(competitors)[:n_kept]}
        return [e.number in kept for e in arriving]

    def order(self, entries: list[RungEntry]) -> list[RungEntry]:
        """The trials at a rung, best first (THE ORDER above)."""
        if self.rank == "front":
            return front_order(entries, self.min_flip)
        return sorted(entries, key=lambda e: rung_key(e, self.min_flip))
