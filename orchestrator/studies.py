"""Every unit's Optuna study: opened (journal repaired), reconciled with Parquet, asked for search
trials and fixed-parameter replicates, and told how trials ended. The only module that talks to Optuna.

THE DURABILITY RULE. Parquet is the source of truth, and Optuna is told how a trial ended only once
that trial's rows are durable in Parquet. Whatever ends a trial goes through `Studies.record` (its
rows appended to the store, its outcome queued); queued outcomes are told only after the store has
flushed them (`sync`: flush, then tell; `sync_if_due`: tell after a flush the store decided on). An
interrupted search trial is re-queued (its parameters enqueued again) before it is failed in Optuna,
so a crash in between loses nothing. On start, `reconcile` settles the trials an earlier coordinator
left RUNNING: one with stored rows is told their values; one without gets an `interrupted` row and
is failed and re-queued like any interrupted trial. So after any sequence of crashes and resumes
each unit has exactly its n_trials finished search trials and its replicates, no trial id twice.

A unit's convergence pilot (`train.converge`) is asked like a replicate (its fixed parameters enqueued with
the `pilot` user attribute) and told FAIL however it ended, so that it never enters a sampler's population
(it is not a search draw); its rows are Parquet's (`trials.pilot`, table checks). The unit's search trials
and replicates train for the pilot's steps, so they are asked only once the pilot's rows are durable.

A retrained mask control (`controls:`, orchestrator/controls.py) is asked the same way: the selected trial's
parameters enqueued with its mask, cells, seed and the trial it controls as user attributes, told FAIL however it
ended (never in a sampler's population) and never re-queued: the unit asks a mask again until it has a complete
control (`UnitState.take_controls`).

Each unit's sampler has its own seed, hashed from the sweep's `search.seed` and the unit id
(`unit_seed`): units of one method get different draws, the same unit in another run the same ones.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from orchestrator.controls import mask_cells
from orchestrator.journal import repair_journal
from orchestrator.plan import PlannedUnit
from orchestrator.records import trial_id
from orchestrator.units import Asked, Phase, Work, controlled_trials, replicated_row
from search_spaces.config import Search
from search_spaces.spaces import directions, distributions, grid_size, make_sampler, objective_values
from storage.run_dir import RunDir
from storage.schema import Status
from storage.store import RunStore
from workers.errors import UsageError
from workers.results import TrialResult

log = logging.getLogger("actscale")
optuna.logging.set_verbosity(optuna.logging.WARNING)
REPLICATE_ATTR = "replicate_of"  # the user attribute that marks a replicate and names the trial it re-trains
FOLD_ATTR = "fold"  # a replicate's fold (search.replicate_data: folds), kept with the trial so a resume re-runs it there
PILOT_ATTR = "pilot"  # the user attribute that marks a unit's convergence pilot
CONTROL_ATTR = "control_of"  # a retrained mask control: the trial it controls (with MASK_ATTR, CELLS_ATTR, SEED_ATTR)
MASK_ATTR, CELLS_ATTR, SEED_ATTR = "mask", "mask_cells", "control_seed"
# a controlled replicate's data: its fold (fold replicates) or bootstrap resample, trained on again by its controls
CONTROL_FOLD_ATTR, CONTROL_RESAMPLE_ATTR = "control_fold", "control_resample"


def unit_seed(unit_id: str, seed: int) -> int:
    """A unit's sampler seed: a stable hash of the sweep's seed and the unit id (below 2**32, as numpy needs)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{unit_id}".encode()).digest()[:4], "big")


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, as Optuna is told: COMPLETE with values, PRUNED, or FAIL (failed or interrupted;
    an interrupted trial carries what re-queues it)."""

    state: TrialState
    values: list[float] | None = None
    requeue: tuple[dict[str, Any], str | None] | None = None  # (parameters, replicate_of) of an interrupted trial

    @classmethod
    def failed(cls) -> Outcome:
        return cls(TrialState.FAIL)

    @classmethod
    def interrupted(cls, params: dict[str, Any], replicate_of: str | None) -> Outcome:
        # never re-queued as a search draw: the unit asks for a new pilot, or its mask's control again
        if params.get("pilot") or params.get("control_of") is not None:
            return cls.failed()
        return cls(TrialState.FAIL, requeue=(params, replicate_of))

    @classmethod
    def of_result(cls, result: TrialResult, search: Search) -> Outcome:
        if not result.ok or result.hyper.pilot or result.hyper.control_of is not None:  # never in the population
            return cls.failed()
        if result.pruned:
            return cls(TrialState.PRUNED)
        return cls(TrialState.COMPLETE, objective_values(search, result.metrics, result.sites_moved, result.sites_total))

    @classmethod
    def of_row(cls, row: dict[str, Any], params: dict[str, Any], search: Search) -> Outcome:
        """From a stored trials row (`params`: the trial's, to re-queue it if it was interrupted)."""
        if row.get("pilot") or row.get("control_of") is not None:
            return cls.failed()
        if row["status"] == Status.COMPLETE:
            metrics = {"val": {m: row[f"val_{m}"] for m in ("flip_rate", "kl_other", "l1")}}
            return cls(TrialState.COMPLETE, objective_values(search, metrics, row["sites_moved"], row["sites_total"]))
        if row["status"] == Status.PRUNED:
            return cls(TrialState.PRUNED)
        if row["status"] == Status.INTERRUPTED:
            return cls.interrupted(params, row["replicate_of"])
        return cls.failed()


class UnitStudy:
    """One unit's study and its search space."""

    def __init__(self, study: optuna.Study, dists: dict[str, BaseDistribution], search: Search):
        self.study = study
        self.dists = dists
        self.search = search

    def trial_params(self, trial: Trial | FrozenTrial, steps: int | None = None) -> dict[str, Any]:
        """What a worker trains: the searched values, the trial seed, the training length where a pilot set it
        (`steps`), for a replicate its data resampling or fold and that it is never pruned, for a pilot that it is
        one (the one place these are decided; the kind is the trial's user attribute)."""
        params = dict(trial.params, seed=trial.number)
        if steps is not None:
            params["steps"] = steps
        if trial.user_attrs.get(REPLICATE_ATTR) is not None:
            params["resample_train"] = self.search.replicate_data == "bootstrap"
            params["prunable"] = False
            if trial.user_attrs.get(FOLD_ATTR) is not None:
                params["fold"] = trial.user_attrs[FOLD_ATTR]
        if trial.user_attrs.get(PILOT_ATTR):
            params["pilot"] = True
            params["prunable"] = False
        if trial.user_attrs.get(CONTROL_ATTR) is not None:  # the controlled trial's seed, only its mask's cells free
            attrs = trial.user_attrs
            params.update(seed=attrs[SEED_ATTR], prunable=False, control_of=attrs[CONTROL_ATTR], mask=attrs[MASK_ATTR],
                          mask_cells=attrs[CELLS_ATTR], resample_train=bool(attrs.get(CONTROL_RESAMPLE_ATTR)))
            if attrs.get(CONTROL_FOLD_ATTR) is not None:
                params["fold"] = attrs[CONTROL_FOLD_ATTR]
        return params

    def _ask(self, replicate_of: str | None, fold: int | None = None, pilot: bool = False,
             mask: str | None = None, control_of: str | None = None) -> Trial:
        """Ask for a trial; a stale waiting trial of another kind or fold (left by a crash) is discarded (failed
        unrun: it has no rows) so that search trials, replicates and pilots never mix, nor replicates' folds."""
        while True:
            trial = self.study.ask(self.dists)
            attrs = trial.user_attrs
            if (attrs.get(REPLICATE_ATTR) == replicate_of and attrs.get(FOLD_ATTR) == fold
                    and bool(attrs.get(PILOT_ATTR)) == pilot and attrs.get(MASK_ATTR) == mask
                    and attrs.get(CONTROL_ATTR) == control_of):
                return trial
            self.study.tell(trial.number, state=TrialState.FAIL)

    def ask_search(self, k: int, steps: int | None = None) -> list[Asked]:
        return [Asked(t.number, self.trial_params(t, steps)) for t in (self._ask(None) for _ in range(k))]

    def ask_replicates(self, replicated: dict[str, Any], folds: list[int | None], steps: int | None = None
                       ) -> list[Asked]:
        """The replicated trial's hyper-parameters (the selected trial's, or a matched one's: search.matched) again as
        new trials (so new trial seeds), one per entry of `folds` (None: no fold of its own), each enqueued with the
        `replicate_of` attribute (and its fold) in one journal record, then asked at once; `steps`: the training
        length a pilot set."""
        params = {name: replicated[name] for name in self.dists}
        asked = []
        for fold in folds:
            attrs: dict[str, Any] = {REPLICATE_ATTR: replicated["trial_id"]}
            if fold is not None:
                attrs[FOLD_ATTR] = fold
            self.study.enqueue_trial(params, user_attrs=attrs)
            trial = self._ask(replicated["trial_id"], fold)
            asked.append(Asked(trial.number, self.trial_params(trial, steps), replicated["trial_id"]))
        return asked

    def ask_controls(self, controlled: dict[str, Any], masks: list[tuple[str, list[tuple[int, int, int]]]],
                     steps: int | None = None) -> list[Asked]:
        """The controlled trial's hyper-parameters, seed and data (a replicate's fold or resample) again, once per
        (mask, cells), each enqueued with its control attributes in one journal record, then asked at once;
        `steps`: the training length a pilot set."""
        params = {name: controlled[name] for name in self.dists}
        asked = []
        for mask, cells in masks:
            attrs = {CONTROL_ATTR: controlled["trial_id"], MASK_ATTR: mask, CELLS_ATTR: [list(c) for c in cells],
                     SEED_ATTR: int(controlled["seed"]), CONTROL_RESAMPLE_ATTR: bool(controlled.get("resample_train"))}
            if controlled.get("replicate_kind") == "fold":
                attrs[CONTROL_FOLD_ATTR] = controlled["fold"]
            self.study.enqueue_trial(params, user_attrs=attrs)
            trial = self._ask(None, mask=mask, control_of=controlled["trial_id"])
            asked.append(Asked(trial.number, self.trial_params(trial, steps)))
        return asked

    def ask_pilot(self, max_steps: int) -> Asked:
        """The unit's convergence pilot: the middle of each searched range, enqueued with the `pilot` attribute."""
        self.study.enqueue_trial(middle_params(self.dists), user_attrs={PILOT_ATTR: True})
        trial = self._ask(None, pilot=True)
        return Asked(trial.number, self.trial_params(trial, max_steps))

    def running(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def tell(self, number: int, outcome: Outcome) -> None:
        if outcome.requeue is not None:  # re-queue first: a crash in between loses nothing
            params, replicate_of = outcome.requeue
            if replicate_of is None and set(params) >= set(self.dists):  # a replicate is simply asked again
                self.study.enqueue_trial({k: params[k] for k in self.dists})
        if outcome.state is TrialState.COMPLETE:
            self.study.tell(number, outcome.values, skip_if_finished=True)
        else:
            self.study.tell(number, state=outcome.state, skip_if_finished=True)


class Studies:
    """Every unit's study, told only what the store holds durably (the rule above)."""

    def __init__(self, store: RunStore, studies: dict[str, UnitStudy]):
        self.store = store
        self.units = studies
        self.queued: list[tuple[str, int, Outcome]] = []
        self.durable_pilots: set[str] = set()  # units whose pilot's rows this coordinator knows are durable

    def ask(self, work: Work) -> list[Asked]:
        """The trials of a PILOT, SEARCH or REPLICATES piece of work. Replicates are asked only once the search
        rows behind their selection are durable, and a unit's trials only once its pilot's rows are."""
        unit = work.unit
        study = self.units[unit.unit_id]
        if work.phase is Phase.PILOT:
            converge = unit.planned.spec.settings.converge
            assert converge is not None, "a pilot is asked only for a unit with train.converge"
            return [study.ask_pilot(converge.max_steps)]
        if unit.pilot_steps is not None and unit.unit_id not in self.durable_pilots:
            self.sync()
            self.durable_pilots.add(unit.unit_id)
        if work.phase is Phase.SEARCH:
            return study.ask_search(work.count, unit.pilot_steps)
        self.sync()
        if work.phase is Phase.CONTROLS:
            return self._ask_controls(work)
        assert work.replicate_of is not None, "replicates name the trial they re-train"
        replicated = replicated_row(unit, work.replicate_of)  # the selected trial, or a matched one (search.matched)
        return study.ask_replicates(replicated, unit.take_replicate_folds(work.count, work.replicate_of),
                                    unit.pilot_steps)

    def _ask_controls(self, work: Work) -> list[Asked]:
        """A batch of controls, their cells from each controlled trial's scalars rows (durable: synced before)."""
        unit = work.unit
        rows = {row["trial_id"]: row for row in controlled_trials(unit)}
        by_trial: dict[str, list[str]] = {}
        for tid, name in unit.take_controls(work.count):
            by_trial.setdefault(tid, []).append(name)
        asked = []
        for tid, names in by_trial.items():
            cells = self._cells_of(tid)
            masks = [(name, mask_cells(name, cells, tid)) for name in names]
            asked += self.units[unit.unit_id].ask_controls(rows[tid], masks, unit.pilot_steps)
        return asked

    def _cells_of(self, trial: str) -> list[dict[str, Any]]:
        """A trial's scalars rows, in the cell grid's order (as its worker wrote them)."""
        import pyarrow.compute as pc

        table = self.store.read("scalars").table
        rows: list[dict[str, Any]] = table.filter(pc.equal(table["trial_id"], trial)).to_pylist()
        if not rows:
            raise UsageError(f"trial {trial} has no stored cells (scalars rows): its masked controls cannot be drawn")
        return rows

    def record(self, unit_id: str, number: int, outcome: Outcome, rows: dict[str, list[dict]] | None = None) -> None:
        """A trial's end: its rows (in writing order) to the store now, its outcome to Optuna once they are durable."""
        for table, table_rows in (rows or {}).items():
            self.store.append(table, table_rows)
        self.queued.append((unit_id, number, outcome))

    def sync(self) -> None:
        """Make every row durable, then tell Optuna what they say."""
        self.store.flush()
        self._tell_queued()

    def sync_if_due(self) -> None:
        if self.store.flush_if_due():
            self._tell_queued()

    def _tell_queued(self) -> None:
        for unit_id, number, outcome in self.queued:
            self.units[unit_id].tell(number, outcome)
        self.queued = []

    def reconcile(self, interrupted_row: Callable[[str, Asked], dict]) -> list[dict]:
        """Settle the trials an earlier coordinator left RUNNING; returns every stored trials row."""
        stored = {r["trial_id"]: r for r in self.store.read("trials").table.to_pylist()}
        pilot_steps = {r["unit_id"]: r["steps_done"] for r in stored.values()  # what a unit's trials train for
                       if r["pilot"] and r["status"] == Status.COMPLETE}
        settled = 0
        for unit_id, study in self.units.items():
            for t in study.running():
                row = stored.get(trial_id(unit_id, t.number))
                rows = None
                if row is None:
                    replicate_of = t.user_attrs.get(REPLICATE_ATTR)
                    steps = None if t.user_attrs.get(PILOT_ATTR) else pilot_steps.get(unit_id)
                    row = interrupted_row(unit_id, Asked(t.number, study.trial_params(t, steps), replicate_of))
                    stored[row["trial_id"]] = row
                    rows = {"trials": [row]}
                self.record(unit_id, t.number, Outcome.of_row(row, t.params, study.search), rows)
                settled += 1
        self.sync()
        if settled:
            log.info(f"reconciled {settled} trial(s) left running by an earlier coordinator")
        return list(stored.values())


def middle_params(dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The middle of each searched range (the convergence pilot's parameters): geometric for a range above 0,
    else arithmetic; the middle choice of a categorical one."""
    middle: dict[str, Any] = {}
    for name, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            middle[name] = d.choices[len(d.choices) // 2]
        elif isinstance(d, (FloatDistribution, IntDistribution)):
            value = math.sqrt(d.low * d.high) if d.low > 0 else (d.low + d.high) / 2
            value = min(max(value, d.low), d.high)  # sqrt can land a rounding outside
            middle[name] = round(value) if isinstance(d, IntDistribution) else value
    return middle


def open_studies(run_dir: RunDir, planned: list[PlannedUnit], search: Search, store: RunStore) -> Studies:
    """Each unit's study in the run's journal (a torn last line, left by a crash, cut off first)."""
    removed = repair_journal(run_dir)
    if removed:
        log.warning(f"removed a torn last line ({removed} bytes) from {run_dir.journal}, left by a crash")
    dists = {p.unit_id: distributions(search, p.spec.method) for p in planned}
    if search.sampler == "grid":  # checked before any study is created
        size = min((grid_size(search, d) for d in dists.values()), default=search.n_trials)
        if size < search.n_trials:
            raise UsageError(f"search.n_trials={search.n_trials} but the grid has only {size} points; raise "
                             "search.grid_points or lower n_trials")
    storage = JournalStorage(JournalFileBackend(str(run_dir.journal)))
    studies = {}
    for p in planned:
        study = optuna.create_study(storage=storage, study_name=p.unit_id, load_if_exists=True,
                                    directions=directions(search),
                                    sampler=make_sampler(search, dists[p.unit_id], unit_seed(p.unit_id, search.seed)))
        studies[p.unit_id] = UnitStudy(study, dists[p.unit_id], search)
    restore_numbering(studies, store.read("trials").table.to_pylist())
    return Studies(store, studies)


def restore_numbering(studies: dict[str, UnitStudy], stored: list[dict[str, Any]]) -> None:
    """Give back to each study the trial numbers the tables hold beyond its journal (a journal deleted, as the
    committed paper run's is, or lost), so that the next trial asked never reuses a stored trial id. A stored
    complete search trial comes back with its values (the sampler's population); every other number as FAIL."""
    by_unit: dict[str, dict[int, dict[str, Any]]] = {}
    for row in stored:
        by_unit.setdefault(row["unit_id"], {})[int(row["trial_number"])] = row
    for unit_id, rows in by_unit.items():
        study = studies.get(unit_id)
        if study is None:
            continue
        first, last = len(study.study.get_trials(deepcopy=False)), max(rows)
        if first > last:
            continue
        log.warning(f"unit {unit_id}: the journal holds {first} trial(s), the tables trial numbers up to {last}; "
                    "restoring the missing numbers so that no trial id repeats")
        study.study.add_trials(restored_trial(rows.get(n), study) for n in range(first, last + 1))


def restored_trial(row: dict[str, Any] | None, study: UnitStudy) -> FrozenTrial:
    """A stored trial as Optuna is told it on restore (FAIL unless a search trial that completed in range)."""
    failed = optuna.trial.create_trial(state=TrialState.FAIL)
    if row is None or row["status"] != Status.COMPLETE:
        return failed
    params = {name: row.get(name) for name in study.dists}
    outcome = Outcome.of_row(row, params, study.search)
    if outcome.state is not TrialState.COMPLETE or row.get("replicate_of") is not None:
        return failed
    try:
        return optuna.trial.create_trial(values=outcome.values, params=params, distributions=study.dists)
    except ValueError:  # its values lie outside today's search space: not a draw of this study
        return failed
