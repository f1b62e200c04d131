"""The Ray driver and the only writer of a run: it plans the units, opens their studies,
reconciles them with Parquet, runs the dispatch loop, and ends with a summary.

    Coordinator.run
      start        lock, log, run id, RunStore                          (orchestrator/startup.py)
      open_units   plan, task data check, studies opened and reconciled (orchestrator/studies.py),
                   each unit's state counted from its stored rows       (orchestrator/units.py)
      dispatch     the loop, until every unit is done or --stop-after   (orchestrator/controller.py)
      finish       rows durable and told, sweep stored, tables compacted, summary (orchestrator/summary.py)

Order of truth: a finished trial goes to Parquet first, and to Optuna only once its part file
is durable (the rule is stated and kept in orchestrator/studies.py).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray

from orchestrator.controller import Controller
from orchestrator.deadline import Deadline
from orchestrator.lock import RunLock
from orchestrator.model_layers import layer_counts
from orchestrator.plan import plan_units
from orchestrator.progress import Progress
from orchestrator.recorder import Recorder
from orchestrator.rungs import count_stored_rungs
from orchestrator.startup import check_task_data, record_config, setup_logging
from orchestrator.studies import Studies, open_studies
from orchestrator.summary import Summary, log_phase_seconds, summarize
from orchestrator.units import Asked, Phase, UnitState, link_partners, note_curves, refresh_selections, targets_of
from search_spaces.config import SweepConfig
from search_spaces.duration import parse_duration
from storage.run_dir import RunDir
from storage.schema import Status
from storage.store import RunStore

log = logging.getLogger("actscale")

# The coordinator running in this process, if any: a test that times out reports what it waited for.
RUNNING: list[Coordinator] = []

__all__ = ["Coordinator", "Summary", "RUNNING", "ray_init_kwargs", "worker_env"]


class Coordinator:
    def __init__(self, config: SweepConfig, run_dir: Path | RunDir, address: str | None = None, quiet: bool = False,
                 stop_after: float | None = None):
        self.config = config
        self.run_dir = RunDir(run_dir)
        self.address = address
        self.quiet = quiet
        # seconds: --stop-after, else the sweep's stop_after, else no limit
        self.stop_after = stop_after if stop_after is not None else (
            parse_duration(config.stop_after, "stop_after") if config.stop_after else None)
        self.units: dict[str, UnitState] = {}
        self.store: RunStore | None = None
        self.studies: Studies | None = None
        self.controller: Controller | None = None
        self.deadline: Deadline | None = None

    def run(self) -> Summary:
        self.started = time.monotonic()
        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.run_dir)
        setup_logging(self.run_dir, self.quiet)
        lock.acquire(say=log.warning)
        started_ray = False
        RUNNING.append(self)
        try:
            self.run_id = self.run_dir.start_run()
            self.store = RunStore(self.run_dir.path, flush_rows=100, flush_seconds=2.0)
            studies = self._open_units(self.store)
            stopped = False
            if any(s.has_work() for s in self.units.values()):
                if not ray.is_initialized():
                    started_ray = True
                    ray.init(**ray_init_kwargs(self.address))
                stopped = self._dispatch(studies)
            return self._finish(studies, stopped)
        finally:
            try:
                if self.studies is not None:
                    self.studies.sync()
                elif self.store is not None:
                    self.store.flush()
                self._record_phase_seconds()  # a coordinator stopped by an error or Ctrl-C counts its worker time too
            finally:
                RUNNING.remove(self)
                if started_ray:
                    ray.shutdown()
                lock.release()

    def _record_phase_seconds(self) -> dict[str, float]:
        """Add this coordinator's worker seconds per phase to the run's record, once; the run's sums."""
        if self.controller is None or not self.controller.phase_seconds:
            return self.run_dir.phase_seconds()
        seconds, self.controller.phase_seconds = self.controller.phase_seconds, {}
        return self.run_dir.add_phase_seconds(seconds)

    def _open_units(self, store: RunStore) -> Studies:
        """Plan the units, open their studies, settle what an earlier coordinator left, count what is stored."""
        n_layers = layer_counts(self.config.models, self.run_dir, self.config.allow_pickle)
        planned = plan_units(self.config, n_layers.__getitem__)
        described = check_task_data(planned, store)
        if self.run_dir.stored_sweep_text() is None:  # first run: `resume` needs it even after an early crash
            record_config(self.run_dir, self.config, store, self.run_id)
        studies = self.studies = open_studies(self.run_dir, planned, self.config.search, store)
        self.recorder = Recorder(self.run_dir, self.run_id, store, studies, self.config.search)
        targets = targets_of(self.config)
        self.units = {p.unit_id: UnitState(p, targets, p.unit_id in described,
                                           lambda tid: self.run_dir.artifact(tid).exists()) for p in planned}
        link_partners(self.units.values(), self.config.search.matched)  # search.matched: C1's pairs
        self._count_stored(studies.reconcile(self._interrupted_by_a_crash), store)
        left = [s.left() for s in self.units.values()]
        search, replicates, controls = (sum(x.steps[phase].left for x in left)
                                        for phase in (Phase.SEARCH, Phase.REPLICATES, Phase.CONTROLS))
        log.info(f"run {self.run_id} in {self.run_dir}: {len(self.units)} unit(s), {search} search trial(s) to run"
                 + (f", {replicates} replicate(s)" if replicates else "")
                 + (f", {controls} mask control(s)" if controls else ""))
        return studies

    def _interrupted_by_a_crash(self, unit_id: str, asked: Asked) -> dict:
        return self.recorder.unfinished_row(self.units[unit_id], asked, Status.INTERRUPTED,
                                            "interrupted: the coordinator stopped before the result was stored; re-run")

    def _count_stored(self, trials: list[dict], store: RunStore) -> None:
        """Each unit's counts from its stored trials and curves rows; with a limit, how long its batches took."""
        for row in trials:
            if (state := self.units.get(row["unit_id"])) is not None:
                state.count(row)
        curves: dict[tuple[str, str], list[dict]] = {}
        for row in store.read("curves").table.select(["unit_id", "trial_id", "kind", "split", "k", "flip_rate",
                                                      "n_cells"]).to_pylist():
            curves.setdefault((row["unit_id"], row["trial_id"]), []).append(row)
        for (unit_id, trial_id), rows in curves.items():
            if (state := self.units.get(unit_id)) is not None:
                note_curves(state, trial_id, rows)
        if self.config.search.pruner is not None:  # ASHA's history of each unit
            count_stored_rungs(self.units, trials, store.read("checks").table.to_pylist())
        refresh_selections(self.units.values())
        if self.stop_after is not None:  # batches of earlier runs: what fits in the time left
            self.deadline = Deadline(self.stop_after, started=self.started)
            self.deadline.learn_from_rows(trials, {u: s.planned.spec.model for u, s in self.units.items()})

    def _finish(self, studies: Studies, stopped: bool) -> Summary:
        """Every row durable and told, the sweep stored, one part per table (queries over a finished run stay
        quick), and the summary."""
        assert self.store is not None
        studies.sync()
        record_config(self.run_dir, self.config, self.store, self.run_id)  # an edited sweep is stored once it ran
        self.store.compact_all()
        log_phase_seconds(self._record_phase_seconds())
        return summarize(self.run_dir, list(self.units.values()), self.model_loads, time.monotonic() - self.started,
                         self.config.selection.min_flip, stopped)

    def _dispatch(self, studies: Studies) -> bool:
        """The dispatch loop over a pool of actors; returns whether it stopped at the --stop-after limit with
        work left."""
        units = list(self.units.values())
        self.controller = Controller(units, self.config, studies, self.recorder, self._new_actor, self.run_dir,
                                     self.deadline)
        progress = Progress(self.controller.by_model, live=not self.quiet and sys.stderr.isatty())
        self.controller.run(progress)
        return self.controller.stopping and any(s.left().phase not in (Phase.DONE, Phase.GAVE_UP) for s in units)

    @property
    def model_loads(self) -> int:
        return self.controller.model_loads if self.controller is not None else 0

    def _new_actor(self, model: str) -> Any:
        from workers.actor import WorkerActor  # torch and transformers: only once there is work

        r = self.config.resources
        cls = ray.remote(WorkerActor)
        return cls.options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_restarts=0,
                           max_concurrency=1, runtime_env={"env_vars": worker_env()},
                           ).remote(model, self.config.allow_pickle, int(r.cpus_per_worker), self.config.plugins)

    def waiting_for(self) -> str:
        """What the dispatch loop is waiting for now (for logs and for a test that times out)."""
        return self.controller.waiting_for() if self.controller is not None else "nothing in flight"


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
