"""Finished work into the run: rows to the store, a trial's tensors to its artefact, outcomes to
Optuna through `Studies.record` (told once the rows are durable), counts to the unit's state."""
from __future__ import annotations

import logging
from typing import Any

from orchestrator.records import trial_id, trial_rows, unfinished_row
from orchestrator.rungs import is_search_trial
from orchestrator.studies import Outcome, Studies
from orchestrator.units import Asked, Phase, UnitState, Work, note_curves
from search_spaces.config import Search
from storage.run_dir import RunDir
from storage.schema import Status
from storage.store import RunStore
from workers.results import TrialResult

log = logging.getLogger("actscale")


class Recorder:
    def __init__(self, run_dir: RunDir, run_id: str, store: RunStore, studies: Studies, search: Search):
        self.run_dir = run_dir
        self.run_id = run_id
        self.store = store
        self.studies = studies
        self.search = search

    def finished(self, work: Work, value: Any) -> None:
        """A piece of work that ended well, by its phase."""
        if work.phase is Phase.DESCRIBE:
            self.described(work.unit, *value)
        elif work.phase is Phase.ANALYSE:
            self.analysis(work.unit, value)
        else:
            self.results(work.unit, work.asked, value)

    def described(self, state: UnitState, row: dict, examples: list[dict]) -> None:
        """A unit prepared: its units row (written now) and its examples."""
        self.store.write_now("units", [dict(row, run_id=self.run_id)])
        self.store.append("examples", [dict(e, run_id=self.run_id) for e in examples])
        state.described = True
        for warning in row["warnings"]:
            log.warning(f"unit {row['unit_id']} ({state.planned.spec.describe()}): {warning}")

    def results(self, state: UnitState, asked: list[Asked], results: list[TrialResult]) -> None:
        """A batch of trials' results: each trial's tensors, then its rows, then (once durable) its outcome."""
        replicate_of = {a.number: a.replicate_of for a in asked}
        for result in results:
            rows = trial_rows(self.run_id, state.unit_id, state.planned.spec, result, replicate_of.get(result.number))
            if result.tensors:  # before its rows: a durable complete trial always has its tensors
                self.run_dir.write_artifact(trial_id(state.unit_id, result.number), result.tensors)
            self.studies.record(state.unit_id, result.number, Outcome.of_result(result, self.search), rows)
            state.count(rows["trials"][0])
            if is_search_trial(rows["trials"][0]):
                state.count_rungs(result.number, result.checks)
            if not result.ok:
                log.warning(f"unit {state.unit_id} trial {result.number} failed: {result.error}")
                state.failure()

    def unfinished_row(self, state: UnitState, asked: Asked, status: Status, error: str) -> dict:
        return unfinished_row(self.run_id, state.unit_id, asked.number, asked.params, state.planned.spec.settings,
                              status, error, asked.replicate_of)

    def unfinished(self, state: UnitState, asked: list[Asked], status: Status, error: str) -> None:
        """Trials that produced no result: failed (a worker error) or interrupted (re-queued, re-run)."""
        for a in asked:
            row = self.unfinished_row(state, a, status, error)
            outcome = Outcome.interrupted(a.params, a.replicate_of) if status is Status.INTERRUPTED else Outcome.failed()
            self.studies.record(state.unit_id, a.number, outcome, {"trials": [row]})
            state.count(row)

    def analysis(self, state: UnitState, rows_by_trial: dict[str, list[dict]]) -> None:
        """A trial's curves rows go in one append, so one part file holds all or none of them."""
        for tid, rows in rows_by_trial.items():
            self.store.append("curves", [dict(row, trial_id=tid, unit_id=state.unit_id, run_id=self.run_id)
                                         for row in rows])
            note_curves(state, tid, rows)
