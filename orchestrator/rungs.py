"""ASHA's history on the coordinator's side (the rule itself: workers/asha.py).

Each unit's state keeps, per rung step, the search trials judged there (`UnitState.rungs`): counted
from the stored rows on start (table `checks`, kind 'rung', of complete and pruned search trials:
the checks of a trial cut off before its trials row was durable are left out, as that trial is run
again), then from each finished batch. A piece of search work carries a snapshot of it (`rungs_for`):
what is known when the work is handed out, so no worker waits for another's batch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.units import UnitState
from search_spaces.config import SweepConfig
from storage.schema import Status
from workers.asha import Rungs

FINISHED = (Status.COMPLETE, Status.PRUNED)


def rungs_for(config: SweepConfig, state: UnitState) -> Rungs | None:
    """ASHA's settings and the unit's history so far, for its next piece of search work (None: no ASHA)."""
    pruner = config.search.pruner
    if pruner is None:
        return None
    history = {step: tuple(entries) for step, entries in state.rungs.items()}
    return Rungs(pruner.min_steps, pruner.eta, config.selection.min_flip, history, pruner.min_kept, pruner.rank)


def is_search_trial(row: Mapping[str, Any]) -> bool:
    """A finished trial of a unit's search (not a replicate, pilot or control): one ASHA judges."""
    return (row["status"] in FINISHED and row["replicate_of"] is None and not row.get("pilot")
            and row.get("control_of") is None)


def count_stored_rungs(units: Mapping[str, UnitState], trials: list[dict[str, Any]],
                       checks: list[dict[str, Any]]) -> None:
    """Each unit's rung history from its stored rows."""
    finished = {r["trial_id"]: r for r in trials if is_search_trial(r)}
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        if c["kind"] == "rung" and c["trial_id"] in finished:
            by_trial.setdefault(c["trial_id"], []).append(c)
    for trial_id, rows in by_trial.items():
        row = finished[trial_id]
        if (state := units.get(row["unit_id"])) is not None:
            state.count_rungs(row["trial_number"], rows)
