"""The Ray driver and the only writer of a run: actors, Optuna ask/tell, dispatch, resume.

Order of truth: a finished trial goes to Parquet first, and to Optuna only once its part
file is durable. On start the two are reconciled (docs/architecture.md, Reliability):
a trial in Parquet but RUNNING in Optuna is told its stored values; a RUNNING trial with
no result is recorded as `interrupted`, failed in Optuna and (a search trial) its
parameters re-enqueued. So after any sequence of crashes and resumes each unit has exactly
n_trials completed search trials and replicates - 1 completed replicates of its selected
trial, and no trial id twice.

A unit has two phases: the search (n_trials trials asked from its Optuna study), then, with
`search.replicates: R > 1`, R - 1 replicates: the selected trial's hyper-parameters (by the
one rule of storage/selection.py) asked again with fixed values, so they get new trial
numbers and so new trial seeds, marked with the user attribute `replicate_of`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.journal import repair_journal
from orchestrator.lock import RunLock
from orchestrator.model_layers import layer_counts
from orchestrator.plan import PlannedUnit, plan_units
from orchestrator.pool import ActorPool, Asked, Pending, PendingKind
from orchestrator.progress import Progress
from orchestrator.records import trial_id, trial_rows, unfinished_row
from search_spaces.config import SweepConfig
from search_spaces.spaces import directions, distributions, grid_size, make_sampler, objective_values
from storage.schema import Status
from storage.selection import describe_rule, select_per_unit
from storage.store import RunStore, artifact_path, read_table, replace_durably, write_durably
from workers.errors import UsageError
from workers.results import TrialResult
from workers.tasks.base import examples_hash, load_examples

log = logging.getLogger("actscale")
optuna.logging.set_verbosity(optuna.logging.WARNING)
STILL_WAITING_S = 300.0  # log what the loop waits for when nothing has finished for this long

# The coordinator running in this process, if any: a test that times out reports what it waited for.
RUNNING: list[Coordinator] = []


REPLICATE_ATTR = "replicate_of"
ANALYSIS_TRIES = 2  # a unit's analysis that failed this often is given up (logged; its trials stay)


@dataclass
class UnitState:
    planned: PlannedUnit
    study: optuna.Study
    dists: dict
    search_rows: list[dict] = field(default_factory=list)  # complete search trials (for the selection)
    replicate_ids: dict[str, list[str]] = field(default_factory=dict)  # selected trial id -> complete replicates' ids
    analyzed: set[str] = field(default_factory=set)  # trial ids with rows in the curves table
    analyzing: list[str] = field(default_factory=list)  # trial ids being analyzed now
    analysis_failures: int = 0  # analyses that failed (the unit's analysis stops after ANALYSIS_TRIES)
    failed: int = 0  # trials whose own computation failed
    interrupted: int = 0  # trials cut off by a crash or a dead worker (re-run)
    pruned: int = 0  # search trials stopped by the pruning rule (they count in n_trials)
    in_flight_search: int = 0
    in_flight_replicates: int = 0
    describing: bool = False
    described: bool = False
    gave_up: bool = False
    selection: tuple[int, dict | None] | None = None  # (number of search rows, selected row) cache

    @property
    def unit_id(self) -> str:
        return self.planned.unit_id

    @property
    def completed(self) -> int:
        return len(self.search_rows) + sum(map(len, self.replicate_ids.values()))

    @property
    def finished(self) -> int:
        """Trials that need no more work: completed and pruned."""
        return self.completed + self.pruned

    @property
    def in_flight(self) -> int:
        return self.in_flight_search + self.in_flight_replicates + int(self.describing) + int(bool(self.analyzing))


@dataclass
class Summary:
    run_dir: Path
    completed: int
    failed: int
    model_loads: int
    selected: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: int = 0
    pruned: int = 0
    analyzed: int = 0  # trials with curves rows


def _setup_logging(run_dir: Path, quiet: bool) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fh = logging.FileHandler(run_dir / "actscale.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    log.propagate = False


def _git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Coordinator:
    def __init__(self, config: SweepConfig, run_dir: Path, address: str | None = None, quiet: bool = False):
        self.config = config
        self.run_dir = Path(run_dir)
        self.address = address
        self.quiet = quiet
        self.units: dict[str, UnitState] = {}
        # (unit, trial number, objective values | None: failed | TrialState.PRUNED), told after Parquet has them
        self.pending_tells: list[tuple[UnitState, int, list[float] | TrialState | None]] = []
        self.model_loads = 0
        self.actor_failures = 0

    # ------------------------------------------------------------------ setup
    def _run_id(self) -> str:
        path = self.run_dir / "run.json"
        if path.exists():
            return json.loads(path.read_text())["run_id"]
        run_id = f"run-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        write_durably(path, json.dumps({"run_id": run_id}))
        return run_id

    def _record_config(self, store: RunStore) -> None:
        text = self.config.to_yaml()
        path = self.run_dir / "sweep.yaml"
        if path.exists() and path.read_text() == text:
            return
        write_durably(path, text)
        from importlib.metadata import PackageNotFoundError, version
        try:
            package_version = version("actscale")
        except PackageNotFoundError:
            package_version = "unknown"
        store.write_now("runs", [dict(run_id=self.run_id, created_at=dt.datetime.now(dt.UTC),
                                      config_yaml=text, package_version=package_version,
                                      git_revision=_git_revision(), host=platform.node())])

    def _check_task_data(self, planned: list[PlannedUnit], store: RunStore) -> set[str]:
        """Read every task once (bad task files fail here, before anything is written) and refuse
        a unit whose task data changed under the same name since results were stored."""
        stored = store.read("units").table.to_pylist()
        stored_hash = {r["unit_id"]: r["task_hash"] for r in stored}
        hashes: dict = {}
        for p in planned:
            key = (p.spec.task, p.spec.settings.seed)
            if key not in hashes:
                hashes[key] = examples_hash(load_examples(*key))
            current = hashes[key]
            if p.unit_id in stored_hash:
                if current != stored_hash[p.unit_id]:
                    raise UsageError(
                        f"task {p.spec.task.name!r} changed since unit {p.unit_id} stored its results (data hash "
                        f"{stored_hash[p.unit_id]} -> {current}); stored results would be wrong for it. Restore "
                        "the file, or save the new one under another name or run into another --out RUN_DIR")
        return set(stored_hash)

    def _open_studies(self, planned: list[PlannedUnit], described: set[str]) -> None:
        journal = self.run_dir / "optuna.journal"
        removed = repair_journal(journal)
        if removed:
            log.warning(f"removed a torn last line ({removed} bytes) from {journal}, left by a crash")
        storage = JournalStorage(JournalFileBackend(str(journal)))
        for p in planned:
            dists = distributions(self.config.search, p.spec.method)
            study = optuna.create_study(storage=storage, study_name=p.unit_id, load_if_exists=True,
                                        directions=directions(self.config.search),
                                        sampler=make_sampler(self.config.search, dists))
            self.units[p.unit_id] = UnitState(p, study, dists, described=p.unit_id in described)
        if self.config.search.sampler == "grid":
            for state in self.units.values():
                size = grid_size(self.config.search, state.dists)
                if size < self.config.search.n_trials:
                    raise UsageError(f"search.n_trials={self.config.search.n_trials} but the grid has only {size} "
                                     "points; raise search.grid_points or lower n_trials")

    def _reconcile(self, store: RunStore) -> None:
        """Settle trials an earlier coordinator left RUNNING, then count each unit's trials from Parquet."""
        stored = {r["trial_id"]: r for r in store.read("trials").table.to_pylist()}
        tells: list[tuple[UnitState, Any, dict]] = []
        for state in self.units.values():
            for t in state.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                tid = trial_id(state.unit_id, t.number)
                row = stored.get(tid)
                if row is None:
                    replicate_of = t.user_attrs.get(REPLICATE_ATTR)
                    asked = Asked(t.number, self._trial_params(t, replicate_of), replicate_of)
                    row = self._unfinished_row(state, asked, Status.INTERRUPTED,
                                               "interrupted: the coordinator stopped before the result was stored; re-run")
                    store.append("trials", [row])
                    stored[tid] = row
                tells.append((state, t, row))
        store.flush()  # Parquet first: the interrupted rows are durable before Optuna hears of them
        for state, t, row in tells:
            if row["status"] == Status.COMPLETE:
                metrics = {"val": {m: row[f"val_{m}"] for m in ("flip_rate", "kl_other", "l1")}}
                state.study.tell(t.number, objective_values(self.config.search, metrics, row["sites_moved"],
                                                            row["sites_total"]))
                continue
            if row["status"] == Status.PRUNED:
                state.study.tell(t.number, state=TrialState.PRUNED)
                continue
            if row["status"] == Status.INTERRUPTED:  # re-queue first: a crash in between loses nothing
                self._requeue(state, t.params, row["replicate_of"])
            state.study.tell(t.number, state=TrialState.FAIL)
        for row in stored.values():
            state = self.units.get(row["unit_id"])
            if state is not None:
                self._count(state, row)
        curves = store.read("curves").table.select(["unit_id", "trial_id"]).to_pylist()
        for row in curves:
            if row["unit_id"] in self.units:
                self.units[row["unit_id"]].analyzed.add(row["trial_id"])
        if tells:
            log.info(f"reconciled {len(tells)} trial(s) left running by an earlier coordinator")

    def _trial_params(self, trial, replicate_of: str | None) -> dict:
        """What a worker trains: the searched values, the trial seed, and for a replicate its data
        resampling and that it is never pruned (the one place these are decided)."""
        params = dict(trial.params, seed=trial.number)
        if replicate_of is not None:
            params["resample_train"] = self.config.search.replicate_data
            params["prunable"] = False
        return params

    def _requeue(self, state: UnitState, params: dict, replicate_of: str | None) -> None:
        """Run an interrupted search trial's parameters again (a replicate is simply asked again)."""
        if replicate_of is None and set(params) >= set(state.dists):
            state.study.enqueue_trial({k: params[k] for k in state.dists})

    def _count(self, state: UnitState, row: dict) -> None:
        """Count one stored trials row into its unit's state."""
        if row["status"] == Status.COMPLETE:
            if row["replicate_of"] is None:
                state.search_rows.append(row)
            else:
                state.replicate_ids.setdefault(row["replicate_of"], []).append(row["trial_id"])
        elif row["status"] == Status.FAILED:
            state.failed += 1
        elif row["status"] == Status.INTERRUPTED:
            state.interrupted += 1
        elif row["status"] == Status.PRUNED and row["replicate_of"] is None:
            state.pruned += 1

    # ------------------------------------------------------------------ phases of a unit
    def _search_left(self, state: UnitState) -> int:
        return self.config.search.n_trials - len(state.search_rows) - state.pruned - state.in_flight_search

    def _selected(self, state: UnitState) -> dict | None:
        """The unit's selected search trial (cached until its search rows change)."""
        if state.selection is None or state.selection[0] != len(state.search_rows):
            self._select_stale([state])
        return state.selection[1]

    def _select_stale(self, states: list[UnitState]) -> None:
        """Refresh the cached selection of every unit whose search rows changed, in one query."""
        stale = [s for s in states if s.selection is None or s.selection[0] != len(s.search_rows)]
        if not stale:
            return
        chosen = select_per_unit([r for s in stale for r in s.search_rows], self.config.selection.min_flip)
        for s in stale:
            s.selection = (len(s.search_rows), chosen.get(s.unit_id))

    def _replicates_left(self, state: UnitState) -> int:
        """Replicates still to ask: only once the unit's search is complete and nothing of it is in flight."""
        replicates = self.config.search.replicates
        if replicates <= 1 or self._search_left(state) > 0 or state.in_flight_search:
            return 0
        selected = self._selected(state)
        if selected is None:
            return 0
        done = len(state.replicate_ids.get(selected["trial_id"], []))
        return max(0, replicates - 1 - done - state.in_flight_replicates)

    def _analysis_left(self, state: UnitState) -> list[str]:
        """Trials still to analyze (workers/analysis.py): the selected trial and its complete replicates,
        once the unit's search and replicates are done and nothing of them is in flight."""
        wanted = self.config.analysis.enabled and (self.config.analysis.curves or self.config.analysis.betas)
        if not wanted or state.analyzing or state.analysis_failures >= ANALYSIS_TRIES:
            return []
        if self._search_left(state) > 0 or self._replicates_left(state) > 0 or state.in_flight:
            return []
        selected = self._selected(state)
        if selected is None:
            return []
        ids = [selected["trial_id"]] + state.replicate_ids.get(selected["trial_id"], [])
        todo = [tid for tid in ids if tid not in state.analyzed]
        missing = [tid for tid in todo if not artifact_path(self.run_dir, tid).exists()]
        if missing:  # e.g. a method without artifact_tensors: nothing to rebuild the trial from
            state.analysis_failures = ANALYSIS_TRIES
            log.warning(f"unit {state.unit_id}: not analyzed, trial(s) {', '.join(missing)} have no stored tensors "
                        f"(RUN_DIR/artifacts; a method without artifact_tensors/from_artifact stores none)")
            return []
        return todo

    def _has_work(self, state: UnitState) -> bool:
        return not state.gave_up and (not state.described or self._search_left(state) > 0
                                      or self._replicates_left(state) > 0 or bool(self._analysis_left(state)))

    def _ask(self, state: UnitState, replicate_of: str | None) -> optuna.trial.Trial:
        """Ask the study for a trial; a stale waiting trial of the other kind (left by a crash) is
        discarded (failed in Optuna, never run) so that search and replicates never mix."""
        while True:
            trial = state.study.ask(state.dists)
            if trial.user_attrs.get(REPLICATE_ATTR) == replicate_of:
                return trial
            state.study.tell(trial.number, state=TrialState.FAIL)

    def _ask_search(self, state: UnitState, k: int) -> list[Asked]:
        asked = []
        for _ in range(k):
            trial = self._ask(state, None)
            asked.append(Asked(trial.number, self._trial_params(trial, None)))
        return asked

    def _ask_replicates(self, state: UnitState, k: int) -> list[Asked]:
        """The selected trial's hyper-parameters again, as new Optuna trials (so new trial seeds).
        Enqueued with the `replicate_of` attribute in one journal record, then asked at once."""
        self.store.flush()  # the search rows behind this selection are durable before any replicate runs
        self._tell_pending()
        selected = self._selected(state)
        params = {name: selected[name] for name in state.dists}
        asked = []
        for _ in range(k):
            state.study.enqueue_trial(params, user_attrs={REPLICATE_ATTR: selected["trial_id"]})
            trial = self._ask(state, selected["trial_id"])
            asked.append(Asked(trial.number, self._trial_params(trial, selected["trial_id"]), selected["trial_id"]))
        return asked

    # ------------------------------------------------------------------ run
    def run(self) -> Summary:
        start = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.run_dir)
        _setup_logging(self.run_dir, self.quiet)
        lock.acquire(say=log.warning)
        started_ray = False
        RUNNING.append(self)
        try:
            self.run_id = self._run_id()
            store = RunStore(self.run_dir, flush_rows=100, flush_seconds=2.0)
            self.store = store
            n_layers = layer_counts(self.config.models, self.run_dir, self.config.allow_pickle)
            planned = plan_units(self.config, n_layers.__getitem__)
            described = self._check_task_data(planned, store)
            if not (self.run_dir / "sweep.yaml").exists():
                self._record_config(store)  # first run: `resume` needs it even after an early crash
            self._open_studies(planned, described)
            self._reconcile(store)
            self._select_stale(list(self.units.values()))
            todo = sum(max(0, self._search_left(s)) for s in self.units.values())
            replicates = sum(self._replicates_left(s) for s in self.units.values())
            log.info(f"run {self.run_id} in {self.run_dir}: {len(self.units)} unit(s), {todo} search trial(s) "
                     f"to run" + (f", {replicates} replicate(s)" if replicates else ""))
            if any(self._has_work(s) for s in self.units.values()):
                if not ray.is_initialized():
                    started_ray = True
                    ray.init(**ray_init_kwargs(self.address))
                self._dispatch(store)
            store.flush()
            self._tell_pending()
            self._record_config(store)  # an edited sweep becomes the stored one once it has run
            store.compact_all()  # one part per table: queries over a finished run stay quick
            return self._summary(time.monotonic() - start)
        finally:
            try:
                if hasattr(self, "store"):
                    self.store.flush()
                    self._tell_pending()
            finally:
                RUNNING.remove(self)
                if started_ray:
                    ray.shutdown()
                lock.release()

    def _new_actor(self, model: str):
        from workers.actor import WorkerActor  # torch and transformers: only once there is work

        r = self.config.resources
        cls = ray.remote(WorkerActor)
        return cls.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0,
                           max_concurrency=1, runtime_env={"env_vars": worker_env()},
                           ).remote(model, self.config.allow_pickle, int(r.cpus_per_worker), self.config.plugins)

    # ------------------------------------------------------------------ the dispatch loop
    def _dispatch(self, store: RunStore) -> None:
        """Until every unit is done: give idle workers work, retire finished models, start the
        next ones, and take finished work as it comes."""
        self.by_model: dict[str, list[UnitState]] = {}
        for s in self.units.values():
            self.by_model.setdefault(s.planned.spec.model, []).append(s)
        r = self.config.resources
        pool = ActorPool(self._new_actor, list(self.by_model), r.workers_per_model, r.models_at_once)
        self.pool = pool
        progress = Progress(self.by_model, self.config.search.n_trials + self.config.search.replicates - 1,
                            self._selected, live=not self.quiet and sys.stderr.isatty())
        self.last_result = self.last_waiting_line = time.monotonic()
        pool.start_models(self._model_has_work)
        try:
            with progress.shown():
                self._loop(store, pool, progress)
        finally:
            pool.shutdown()

    def _loop(self, store: RunStore, pool: ActorPool, progress: Progress) -> None:
        """The dispatch loop's steps, until no model has work left."""
        while pool.active():
            self._assign_idle(pool)
            self._retire_finished(pool)
            pool.start_models(self._model_has_work)
            if not pool.working() and not pool.waiting_models and not any(map(self._model_has_work, self.by_model)):
                break
            if not pool.in_flight:
                time.sleep(0.05)
                continue
            self._take_finished(store, pool)
            if store.flush_if_due():
                self._tell_pending()
            progress.tick()

    def _model_has_work(self, model: str) -> bool:
        return any(self._has_work(s) for s in self.by_model[model])

    def _assign_idle(self, pool: ActorPool) -> None:
        for model, actor in list(pool.idle):
            work = self._assign(self.by_model[model], model, actor)
            if work is not None:
                pool.submit(*work)

    def _retire_finished(self, pool: ActorPool) -> None:
        for model in list(pool.actors):
            if not self._model_has_work(model) and not pool.busy(model):
                pool.retire(model)

    def _take_finished(self, store: RunStore, pool: ActorPool) -> None:
        """Wait up to a second for one finished piece of work and record it; log what is awaited
        when nothing has finished for STILL_WAITING_S."""
        finished = pool.wait(timeout=1.0)
        now = time.monotonic()
        if finished:
            self.last_result = now
        elif now - self.last_result > STILL_WAITING_S and now - self.last_waiting_line > STILL_WAITING_S:
            self.last_waiting_line = now
            log.info(f"still waiting ({now - self.last_result:.0f}s without a result) for: {self.waiting_for()}")
        for ref, pending in finished:
            if self._handle(store, ref, pending, pool):
                pool.free(pending)

    def waiting_for(self) -> str:
        """What the dispatch loop is waiting for now (for logs and for a test that times out)."""
        pool = getattr(self, "pool", None)
        pending = list(pool.in_flight.values()) if pool is not None else []
        return "; ".join(p.describe() for p in pending) or "nothing in flight"

    def _assign(self, states: list[UnitState], model: str, actor) -> tuple[Any, Pending] | None:
        """The next piece of work for an idle actor of `model`: describe a unit, or a batch of trials."""
        state = next((s for s in states if not s.gave_up and not s.described and not s.describing), None)
        if state is not None:
            state.describing = True
            return (actor.unit_record.remote(state.unit_id, state.planned.spec),
                    Pending(PendingKind.DESCRIBE, model, actor, state))
        batch = self.config.search.batch
        for state in states:
            if state.gave_up or not state.described:
                continue
            if (left := self._search_left(state)) > 0:
                asked = self._ask_search(state, min(batch, left))
                state.in_flight_search += len(asked)
            elif (left := self._replicates_left(state)) > 0:
                asked = self._ask_replicates(state, min(batch, left))
                state.in_flight_replicates += len(asked)
            elif todo := self._analysis_left(state):
                return self._assign_analysis(state, model, actor, todo)
            else:
                continue
            ref = actor.run_trials.remote(state.unit_id, state.planned.spec, [(a.number, a.params) for a in asked])
            return ref, Pending(PendingKind.TRIALS, model, actor, state, asked)
        return None

    def _assign_analysis(self, state: UnitState, model: str, actor, todo: list[str]) -> tuple[Any, Pending]:
        """Analyze a unit's selected trial and replicates from their stored artifacts."""
        analysis = self.config.analysis
        self.store.flush()  # the trials analyzed are durable before any of their curves can be
        self._tell_pending()
        state.analyzing = todo
        log.info(f"analyzing {len(todo)} trial(s) of unit {state.unit_id}: curves and strength")
        trials = [(tid, read_artifact(self.run_dir, tid)) for tid in todo]
        ref = actor.analyze.remote(state.unit_id, state.planned.spec, trials, list(analysis.betas), analysis.curves,
                                   analysis.k_step)
        return ref, Pending(PendingKind.ANALYZE, model, actor, state, analyzing=todo)

    def _release(self, pending: Pending) -> None:
        state = pending.state
        if state is None:
            return
        if pending.kind is PendingKind.DESCRIBE:
            state.describing = False
        elif pending.kind is PendingKind.ANALYZE:
            state.analyzing = []
        elif pending.replicates:
            state.in_flight_replicates -= len(pending.asked)
        else:
            state.in_flight_search -= len(pending.asked)

    # ------------------------------------------------------------------ finished work
    def _handle(self, store: RunStore, ref, pending: Pending, pool: ActorPool) -> bool:
        """Take one finished piece of work; returns whether its actor is free for more."""
        self._release(pending)
        try:
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
            self._actor_died(store, pending, exc, pool)
            return False
        except ray.exceptions.RayTaskError as exc:
            self._worker_error(store, pending, exc.cause if hasattr(exc, "cause") else exc)
            return True
        if pending.kind is PendingKind.READY:
            self.model_loads += value["model_loads"]
            log.info(f"worker for {pending.model} is up on {value['node']} (pid {value['pid']}, "
                     f"model loaded in {value['load_seconds']:.1f}s)")
        elif pending.kind is PendingKind.DESCRIBE:
            row, examples = value
            store.write_now("units", [dict(row, run_id=self.run_id)])
            store.append("examples", [dict(e, run_id=self.run_id) for e in examples])
            pending.state.described = True
            for warning in row["warnings"]:
                log.warning(f"unit {row['unit_id']} ({pending.state.planned.spec.describe()}): {warning}")
        elif pending.kind is PendingKind.ANALYZE:
            self._record_analysis(store, pending.state, value)
        else:
            self._record_results(store, pending.state, value, pending.asked)
        return True

    def _worker_error(self, store: RunStore, pending: Pending, cause: BaseException) -> None:
        """An exception inside a worker: a usage error stops the run (in an analysis it counts as the analysis
        failing, like any other error there); otherwise the trials fail."""
        state = pending.state
        if isinstance(cause, UsageError) and pending.kind is not PendingKind.ANALYZE:
            raise cause from None
        if state is None:
            raise UsageError(f"a worker for {pending.model} failed to start: {type(cause).__name__}: {cause}") from None
        log.error(f"unit {state.unit_id}: worker error {type(cause).__name__}: {cause}")
        if pending.kind is PendingKind.ANALYZE:  # the trials stay; their analysis is tried ANALYSIS_TRIES times
            state.analysis_failures += 1
            return
        if pending.kind is PendingKind.DESCRIBE:  # preparing the unit failed: counts towards giving up on it
            state.failed += 1
        self._record_unfinished(store, state, pending.asked, Status.FAILED,
                                f"worker error {type(cause).__name__}: {str(cause)[:500]}")
        self._maybe_give_up(state)

    def _record_unfinished(self, store: RunStore, state: UnitState, asked: list[Asked], status: Status,
                           error: str) -> None:
        """Rows (and Optuna FAILs, once durable) for trials that produced no result."""
        for a in asked:
            row = self._unfinished_row(state, a, status, error)
            store.append("trials", [row])
            self._count(state, row)
            self.pending_tells.append((state, a.number, None))

    def _unfinished_row(self, state: UnitState, asked: Asked, status: Status, error: str) -> dict:
        return unfinished_row(self.run_id, state.unit_id, asked.number, asked.params, state.planned.spec.settings,
                              status, error, asked.replicate_of)

    def _record_results(self, store: RunStore, state: UnitState, results: list[TrialResult],
                        asked: list[Asked]) -> None:
        replicate_of = {a.number: a.replicate_of for a in asked}
        for result in results:
            rows = trial_rows(self.run_id, state.unit_id, state.planned.spec, result, replicate_of.get(result.number))
            if result.tensors:  # before its rows: a durable complete trial always has its tensors
                self._write_artifact(trial_id(state.unit_id, result.number), result.tensors)
            for table, table_rows in rows.items():
                store.append(table, table_rows)
            self._count(state, rows["trials"][0])
            if result.ok and result.pruned:
                self.pending_tells.append((state, result.number, TrialState.PRUNED))
            elif result.ok:
                values = objective_values(self.config.search, result.metrics, result.sites_moved, result.sites_total)
                self.pending_tells.append((state, result.number, values))
            else:
                log.warning(f"unit {state.unit_id} trial {result.number} failed: {result.error}")
                self.pending_tells.append((state, result.number, None))
                self._maybe_give_up(state)

    def _record_analysis(self, store: RunStore, state: UnitState, rows_by_trial: dict[str, list[dict]]) -> None:
        """A trial's curves rows go in one append, so one part file holds all or none of them."""
        for tid, rows in rows_by_trial.items():
            store.append("curves", [dict(row, trial_id=tid, unit_id=state.unit_id, run_id=self.run_id)
                                    for row in rows])
            state.analyzed.add(tid)

    def _maybe_give_up(self, state: UnitState) -> None:
        limit = max(3, 2 * self.config.search.n_trials)
        if state.failed >= limit and not state.gave_up:
            state.gave_up = True
            log.error(f"unit {state.unit_id} ({state.planned.spec.describe()}): {state.failed} failed trials; "
                      "giving up on it")

    def _write_artifact(self, tid: str, tensors: dict) -> None:
        import torch
        from safetensors.torch import save_file

        final = artifact_path(self.run_dir, tid)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(f".tmp-{final.name}")
        save_file({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, str(tmp))
        replace_durably(tmp, final)

    def _tell_pending(self) -> None:
        for state, number, values in self.pending_tells:
            if values is None:
                state.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            elif values is TrialState.PRUNED:
                state.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                state.study.tell(number, values, skip_if_finished=True)
        self.pending_tells = []

    def _actor_died(self, store: RunStore, pending: Pending, exc: Exception, pool: ActorPool) -> None:
        """A dead worker costs its in-flight trials: recorded as interrupted, re-run on a new worker."""
        self.actor_failures += 1
        model, state = pending.model, pending.state
        log.error(f"a worker for {model} died ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  f"re-running its {len(pending.asked)} interrupted trial(s) on a new worker")
        if self.actor_failures > 10 + 2 * len(self.units):
            raise UsageError(f"workers for {model} keep dying ({self.actor_failures} times); "
                             f"see {self.run_dir}/actscale.log")
        if state is not None and pending.kind is PendingKind.ANALYZE:
            state.analysis_failures += 1
        if state is not None and pending.asked:
            self._record_unfinished(store, state, pending.asked, Status.INTERRUPTED,
                                    f"interrupted: the worker died ({type(exc).__name__}); re-run")
            store.flush()  # durable before Optuna hears of it
            for a in pending.asked:  # re-queue first: a crash in between loses nothing
                self._requeue(state, a.params, a.replicate_of)
            self._tell_pending()
        pool.replace(pending)

    def _summary(self, wall: float) -> Summary:
        n_val = {r["unit_id"]: r["n_val"] for r in read_table(self.run_dir, "units").table.select(
            ["unit_id", "n_val"]).to_pylist()}  # the prompts behind each val rate
        selected = []
        self._select_stale(list(self.units.values()))
        for state in self.units.values():
            row = self._selected(state)
            if row is None:
                continue
            replicates = len(state.replicate_ids.get(row["trial_id"], []))
            selected.append(dict(unit=state.planned.spec.describe(), trial_id=row["trial_id"],
                                 val_flip_rate=row["val_flip_rate"], val_kl_other=row["val_kl_other"],
                                 sites_moved=row["sites_moved"], sites_total=row["sites_total"],
                                 selected_by=row["selected_by"], replicates=replicates,
                                 n_val=n_val.get(state.unit_id)))
        completed = sum(s.completed for s in self.units.values())
        failed = sum(s.failed for s in self.units.values())
        interrupted = sum(s.interrupted for s in self.units.values())
        pruned = sum(s.pruned for s in self.units.values())
        analyzed = sum(len(s.analyzed) for s in self.units.values())
        summary = Summary(self.run_dir, completed, failed, self.model_loads, selected, wall, interrupted, pruned,
                          analyzed)
        log.info(f"done: {completed} completed trial(s), {pruned} pruned, {failed} failed, {interrupted} interrupted "
                 f"and re-run, {analyzed} analyzed, model loads: {self.model_loads}, {wall:.1f}s")
        log.info(f"  ({describe_rule(self.config.selection.min_flip)})")
        for b in selected:
            flag = "  [fallback: none reached min_flip]" if b["selected_by"] == "fallback" else ""
            log.info(f"  selected {b['unit']}: {b['trial_id']} val flip_rate {b['val_flip_rate']:.3f} (n={b['n_val']}), "
                     f"val kl_other {b['val_kl_other']:.3f}, sites moved {b['sites_moved']}/{b['sites_total']}, "
                     f"{b['replicates']} replicate(s){flag}")
        return summary


def read_artifact(run_dir: Path, tid: str) -> dict:
    """A trial's stored tensors (RUN_DIR/artifacts/<trial id>.safetensors) as numpy arrays."""
    from safetensors.numpy import load_file

    path = artifact_path(run_dir, tid)
    if not path.exists():
        raise UsageError(f"trial {tid} has no stored tensors ({path} is missing): it cannot be analyzed; re-run its "
                         "unit into a new --out RUN_DIR, or set analysis.enabled: false")
    return load_file(str(path))


def worker_env() -> dict[str, str]:
    """Environment of every worker process. OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads
    sleep instead of spinning while they wait for each other, so a worker whose thread shares
    a core with another busy process (Ray also runs workers at nice 15) is not held up at
    every parallel region: 4x faster on a 2-core machine with a CPU burner on one core, the
    same when the machine is idle (docs/performance.md). A value set by the user is kept."""
    return {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def ray_init_kwargs(address: str | None) -> dict:
    """Safe by default: no dashboard, and an embedded Ray listens on the loopback only."""
    kwargs = dict(address=address, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
                  configure_logging=False, namespace="actscale")
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"
    return kwargs
