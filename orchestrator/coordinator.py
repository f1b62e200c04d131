"""The Ray driver and the only writer of a run: actors, Optuna ask/tell, dispatch, resume.

Order of truth: a finished trial goes to Parquet first, and to Optuna only once its part
file is durable. On start the two are reconciled (DESIGN.md, Reliability contract):
a trial in Parquet but RUNNING in Optuna is told its stored values; a RUNNING trial with
no result is failed and its parameters re-enqueued. So after any sequence of crashes and
resumes each unit has exactly n_trials completed trials, and no trial id twice.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.journal import repair_journal
from orchestrator.lock import RunLock
from orchestrator.plan import PlannedUnit, plan_units
from orchestrator.records import trial_id, trial_rows
from search_spaces.config import SweepConfig
from search_spaces.spaces import directions, distributions, grid_size, make_sampler, objective_values
from storage.store import RunStore
from workers.actor import WorkerActor
from workers.errors import UsageError
from workers.tasks.base import examples_hash, load_examples

log = logging.getLogger("actscale")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class UnitState:
    planned: PlannedUnit
    study: optuna.Study
    dists: dict
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    described: bool = False
    gave_up: bool = False

    @property
    def unit_id(self) -> str:
        return self.planned.unit_id


@dataclass
class Summary:
    run_dir: Path
    completed: int
    failed: int
    model_loads: int
    best: list[dict] = field(default_factory=list)
    wall_s: float = 0.0


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
        self.pending_tells: list[tuple[UnitState, int, list[float] | None]] = []
        self.model_loads = 0
        self.actor_failures = 0

    # ------------------------------------------------------------------ setup
    def _run_id(self) -> str:
        path = self.run_dir / "run.json"
        if path.exists():
            return json.loads(path.read_text())["run_id"]
        run_id = f"run-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": run_id}))
        os.replace(tmp, path)
        return run_id

    def _record_config(self, store: RunStore) -> None:
        text = self.config.to_yaml()
        path = self.run_dir / "sweep.yaml"
        if path.exists() and path.read_text() == text:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        from importlib.metadata import PackageNotFoundError, version
        try:
            package_version = version("actscale")
        except PackageNotFoundError:
            package_version = "unknown"
        store.write_now("runs", [dict(run_id=self.run_id, created_at=dt.datetime.now(dt.timezone.utc),
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
        trials = store.read("trials").table.to_pylist()
        stored = {r["trial_id"]: r for r in trials}
        fixed = 0
        for state in self.units.values():
            for t in state.study.get_trials(deepcopy=False):
                if t.state != TrialState.RUNNING:
                    continue
                row = stored.get(trial_id(state.unit_id, t.number))
                if row is not None and row["status"] == "complete":
                    metrics = {s: {m: row[f"{s}_{m}"] for m in ("flip_rate", "kl_other", "l1")} for s in ("val",)}
                    state.study.tell(t.number, objective_values(self.config.search, metrics, row["n_active"], row["n_params"]))
                elif row is not None:
                    state.study.tell(t.number, state=TrialState.FAIL)
                else:
                    state.study.tell(t.number, state=TrialState.FAIL)
                    state.study.enqueue_trial(t.params)
                fixed += 1
            done = state.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            state.completed = len(done)
            state.failed = len(state.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if fixed:
            log.info(f"reconciled {fixed} trial(s) left running by an earlier coordinator")

    # ------------------------------------------------------------------ run
    def run(self) -> Summary:
        start = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.run_dir)
        _setup_logging(self.run_dir, self.quiet)
        lock.acquire(say=log.warning)
        started_ray = False
        try:
            self.run_id = self._run_id()
            store = RunStore(self.run_dir, flush_rows=100, flush_seconds=2.0)
            self.store = store
            from workers.models import layer_count
            allow = self.config.allow_pickle
            n_layers = {m: layer_count(m, allow) for m in self.config.models}  # fails early on a bad model
            planned = plan_units(self.config, n_layers.__getitem__)
            described = self._check_task_data(planned, store)
            if not (self.run_dir / "sweep.yaml").exists():
                self._record_config(store)  # first run: `resume` needs it even after an early crash
            self._open_studies(planned, described)
            self._reconcile(store)
            todo = sum(max(0, self.config.search.n_trials - s.completed) for s in self.units.values())
            log.info(f"run {self.run_id} in {self.run_dir}: {len(self.units)} unit(s), {todo} trial(s) to run")
            if todo or any(not s.described for s in self.units.values()):
                if not ray.is_initialized():
                    started_ray = True
                    ray.init(**ray_init_kwargs(self.address))
                self._dispatch(store)
            store.flush()
            self._tell_pending()
            self._record_config(store)  # an edited sweep becomes the stored one once it has run
            return self._summary(time.monotonic() - start)
        finally:
            try:
                if hasattr(self, "store"):
                    self.store.flush()
                    self._tell_pending()
            finally:
                if started_ray:
                    ray.shutdown()
                lock.release()

    def _new_actor(self, model: str):
        r = self.config.resources
        cls = ray.remote(WorkerActor)
        actor = cls.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0,
                            max_concurrency=1).remote(model, self.config.allow_pickle, int(r.cpus_per_worker))
        return actor

    def _dispatch(self, store: RunStore) -> None:
        search = self.config.search
        by_model: dict[str, list[UnitState]] = {}
        for s in self.units.values():
            by_model.setdefault(s.planned.spec.model, []).append(s)
        waiting_models = list(by_model)
        actors: dict[str, list] = {}  # model -> actors
        idle: list[tuple[str, object]] = []
        in_flight: dict = {}
        last_progress = time.monotonic()
        started = time.monotonic()
        done_at_start = {m: sum(s.completed for s in us) for m, us in by_model.items()}

        def model_open(model: str) -> bool:
            return any(not s.gave_up and (not s.described or s.completed + s.in_flight < search.n_trials)
                       for s in by_model[model])

        def launch(model: str) -> None:
            """Start an actor; it gets work only once it is up (its info() answered)."""
            actor = self._new_actor(model)
            actors[model].append(actor)
            in_flight[actor.info.remote()] = ("ready", model, actor, None, [])
            log.info(f"starting a worker for {model}")

        def start_models() -> None:
            while waiting_models and len(actors) < self.config.resources.models_at_once:
                model = waiting_models.pop(0)
                if not model_open(model):
                    continue
                actors[model] = []
                for _ in range(self.config.resources.workers_per_model):
                    launch(model)

        start_models()
        while in_flight or idle or waiting_models:
            # hand work to idle actors
            for model, actor in list(idle):
                state = next((s for s in by_model[model] if not s.gave_up and not s.described and s.in_flight == 0), None)
                if state is not None:
                    state.in_flight += 1
                    ref = actor.unit_record.remote(state.unit_id, state.planned.spec)
                    in_flight[ref] = ("record", model, actor, state, [])
                    idle.remove((model, actor))
                    continue
                state = next((s for s in by_model[model] if not s.gave_up and s.described
                              and s.completed + s.in_flight < search.n_trials), None)
                if state is None:
                    continue
                k = min(search.batch, search.n_trials - s_done(state))
                asked = []
                for _ in range(k):
                    trial = state.study.ask(state.dists)
                    params = dict(trial.params)
                    params["seed"] = trial.number
                    asked.append((trial.number, params))
                state.in_flight += k
                ref = actor.run_trials.remote(state.unit_id, state.planned.spec, asked)
                in_flight[ref] = ("trials", model, actor, state, asked)
                idle.remove((model, actor))
            # retire actors of finished models, start the next models
            for model in list(actors):
                if not model_open(model) and not any(v[1] == model and v[0] != "ready" for v in in_flight.values()):
                    for a in actors.pop(model):
                        ray.kill(a)
                    idle[:] = [(m, a) for m, a in idle if m != model]
                    for ref in [r for r, v in in_flight.items() if v[0] == "ready" and v[1] == model]:
                        in_flight.pop(ref)
            start_models()
            working = any(v[0] != "ready" for v in in_flight.values())
            if not working and not waiting_models and all(not model_open(m) for m in by_model):
                break
            if not in_flight:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                kind, model, actor, state, asked = in_flight.pop(ref)
                if state is not None:
                    state.in_flight -= max(1, len(asked)) if kind == "trials" else 1
                try:
                    value = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                    self._actor_died(model, actor, state, asked, exc, actors, launch)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if hasattr(exc, "cause") else exc
                    if isinstance(cause, UsageError):
                        raise cause from None
                    if state is None:
                        raise UsageError(f"a worker for {model} failed to start: {type(cause).__name__}: {cause}") from None
                    log.error(f"unit {state.unit_id}: worker error {type(cause).__name__}: {cause}")
                    for number, _ in asked:
                        self.pending_tells.append((state, number, None))
                    state.failed += len(asked)
                    self._maybe_give_up(state)
                    idle.append((model, actor))
                    continue
                idle.append((model, actor))
                if kind == "ready":
                    self.model_loads += value["model_loads"]
                    log.info(f"worker for {model} is up on {value['node']} (pid {value['pid']}, "
                             f"model loaded in {value['load_seconds']:.1f}s)")
                    continue
                if kind == "record":
                    row, examples = value
                    store.write_now("units", [dict(row, run_id=self.run_id)])
                    store.append("examples", examples)
                    state.described = True
                    continue
                self._record_results(store, state, value)
            if store.flush_if_due():
                self._tell_pending()
            if time.monotonic() - last_progress > 5:
                last_progress = time.monotonic()
                self._progress(by_model, done_at_start, started)
        for model in list(actors):
            for a in actors.pop(model):
                ray.kill(a)

    def _record_results(self, store: RunStore, state: UnitState, results: list[dict]) -> None:
        defaults = {"steps": state.planned.spec.settings.steps, "batch_size": state.planned.spec.settings.batch_size}
        for result in results:
            rows = trial_rows(self.run_id, state.unit_id, state.planned.spec, result, defaults)
            for table, table_rows in rows.items():
                store.append(table, table_rows)
            if result["tensors"]:
                self._write_artifact(trial_id(state.unit_id, result["number"]), result["tensors"])
            if result["status"] == "complete":
                values = objective_values(self.config.search, result["metrics"], result["n_active"], result["n_params"])
                self.pending_tells.append((state, result["number"], values))
                state.completed += 1
            else:
                log.warning(f"unit {state.unit_id} trial {result['number']} failed: {result['error']}")
                self.pending_tells.append((state, result["number"], None))
                state.failed += 1
                self._maybe_give_up(state)

    def _maybe_give_up(self, state: UnitState) -> None:
        limit = max(3, 2 * self.config.search.n_trials)
        if state.failed >= limit and not state.gave_up:
            state.gave_up = True
            log.error(f"unit {state.unit_id} ({state.planned.spec.describe()}): {state.failed} failed trials; giving up on it")

    def _write_artifact(self, tid: str, tensors: dict) -> None:
        import torch
        from safetensors.torch import save_file

        directory = self.run_dir / "artifacts"
        directory.mkdir(exist_ok=True)
        tmp = directory / f".tmp-{tid}.safetensors"
        save_file({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, directory / f"{tid}.safetensors")

    def _tell_pending(self) -> None:
        for state, number, values in self.pending_tells:
            if values is None:
                state.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                state.study.tell(number, values, skip_if_finished=True)
        self.pending_tells = []

    def _actor_died(self, model, actor, state, asked, exc, actors, launch) -> None:
        self.actor_failures += 1
        log.error(f"a worker for {model} died ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  f"re-running its {len(asked)} in-flight trial(s) on a new worker")
        if self.actor_failures > 10 + 2 * len(self.units):
            raise UsageError(f"workers for {model} keep dying ({self.actor_failures} times); see {self.run_dir}/actscale.log")
        for number, params in asked:
            state.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            state.study.enqueue_trial({k: v for k, v in params.items() if k in state.dists})
        if model in actors and actor in actors[model]:
            actors[model].remove(actor)
            launch(model)

    def _progress(self, by_model, done_at_start, started) -> None:
        n = self.config.search.n_trials
        for model, states in by_model.items():
            done = sum(s.completed for s in states)
            total = n * len(states)
            failed = sum(s.failed for s in states)
            rate = (done - done_at_start[model]) / max(1e-9, time.monotonic() - started)
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            log.info(f"{model}: {done}/{total} trials, {rate:.2f}/s, ETA {eta}, failed {failed}")

    def _summary(self, wall: float) -> Summary:
        best = []
        for state in self.units.values():
            complete = state.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not complete:
                continue
            top = max(complete, key=lambda t: (t.values[0], *(-v for v in t.values[1:])))
            best.append(dict(unit=state.planned.spec.describe(), trial_id=trial_id(state.unit_id, top.number),
                             values=[round(v, 4) for v in top.values], completed=len(complete)))
        completed = sum(s.completed for s in self.units.values())
        failed = sum(s.failed for s in self.units.values())
        summary = Summary(self.run_dir, completed, failed, self.model_loads, best, wall)
        log.info(f"done: {completed} completed trial(s), {failed} failed, model loads: {self.model_loads}, "
                 f"{wall:.1f}s")
        for b in best:
            log.info(f"  best {b['unit']}: {b['trial_id']} values {b['values']} ({b['completed']} trials)")
        return summary


def ray_init_kwargs(address: str | None) -> dict:
    """Safe by default: no dashboard, and an embedded Ray listens on the loopback only."""
    kwargs = dict(address=address, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
                  configure_logging=False, namespace="actscale")
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"
    return kwargs


def s_done(state: UnitState) -> int:
    return state.completed + state.in_flight
