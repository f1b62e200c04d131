"""The dispatch loop: a controller over the units' state machines and a pool of Ray actors.

Each turn of the loop is the same named steps:

    check_limit      (--stop-after) stop handing out work that would not end in time; cut off what won't
    hand_out_work    each idle actor gets the next piece of work of its model's units (`UnitState.next_work`)
    retire_finished  the actors of a model with nothing left to hand out are stopped
    start_models     the next models with work get their actors (resources.models_at_once)
    take_finished    one finished piece of work is recorded (orchestrator/recorder.py), or its failure
    sync_if_due      Parquet flushed when due, then Optuna told (orchestrator/studies.py)

A unit decides what it needs (its phase: orchestrator/units.py); the controller only runs it: a
describe, a batch of trials asked from the unit's study, or an analysis of stored trials.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from orchestrator.deadline import Deadline
from orchestrator.pool import ActorPool, Pending
from orchestrator.progress import Progress
from orchestrator.recorder import Recorder
from orchestrator.rungs import rungs_for
from orchestrator.studies import Studies
from orchestrator.units import Phase, UnitState, Work
from search_spaces.config import SweepConfig
from storage.run_dir import RunDir
from storage.schema import Status
from workers.errors import DriverError, UsageError

log = logging.getLogger("actscale")
STILL_WAITING_S = 300.0  # log what the loop waits for when nothing has finished for this long


class Controller:
    def __init__(self, units: list[UnitState], config: SweepConfig, studies: Studies, recorder: Recorder,
                 new_actor: Callable[[str], Any], run_dir: RunDir, deadline: Deadline | None = None):
        self.by_model: dict[str, list[UnitState]] = {}
        for state in units:
            self.by_model.setdefault(state.planned.spec.model, []).append(state)
        self.n_units = len(units)
        self.config = config
        self.studies = studies
        self.recorder = recorder
        self.run_dir = run_dir
        self.deadline = deadline
        self.phase_seconds: dict[str, float] = {}  # seconds of finished worker calls per phase (Phase.value)
        r = config.resources
        self.pool = ActorPool(new_actor, list(self.by_model), r.workers_per_model, r.models_at_once)
        self.model_loads = 0
        self.actor_failures = 0
        self.stopping = False  # the --stop-after limit is near: no more work is handed out
        self.last_result = self.last_waiting_line = time.monotonic()

    def run(self, progress: Progress) -> None:
        """Until every unit is done (or the limit is near): the loop's steps, in order."""
        self.pool.start_models(self.model_has_work)
        try:
            with progress.shown():
                while self.pool.active():
                    self.check_limit()
                    self.hand_out_work()
                    self.retire_finished()
                    self.start_models()
                    if self.finished():
                        break
                    if not self.pool.in_flight:
                        time.sleep(0.05)
                        continue
                    self.take_finished()
                    self.studies.sync_if_due()
                    progress.tick()
        finally:
            self.pool.shutdown()

    # ------------------------------------------------------------------ the steps
    def check_limit(self) -> None:
        """Near the --stop-after limit: stop handing out work, and cut off the work in flight that is not
        expected to end in time (its trials are interrupted and re-queued, as a crash would leave them)."""
        if self.deadline is None:
            return
        if not self.stopping:
            late = [p for p in self.pool.in_flight.values()
                    if p.work is not None and not self.deadline.will_end_in_time(p.work, p.since)]
            if late or self.deadline.passed():
                self.stop(f"{late[0].describe()} is not expected to end in time" if late else "no time is left")
        if self.stopping:
            for ref, pending in list(self.pool.in_flight.items()):
                if pending.work is None or not self.deadline.will_end_in_time(pending.work, pending.since):
                    self.cut_off(ref)

    def stop(self, why: str) -> None:
        assert self.deadline is not None
        self.stopping = True
        self.pool.waiting_models.clear()
        log.info(f"stopping before the --stop-after limit ({max(0.0, self.deadline.left()):.0f}s left for work): "
                 f"{why}")

    def cut_off(self, ref: Any) -> None:
        pending = self.pool.abandon(ref)  # its actor is stopped too
        if pending.work is None:
            return
        pending.work.unit.release(pending.work)
        log.info(f"cut off at the limit: {pending.describe()}")
        self.interrupt(pending, "the run stopped at its --stop-after limit")

    def hand_out_work(self) -> None:
        for model, actor in list(self.pool.idle):
            work = None if self.stopping else self.next_work(model)
            if work is None:
                continue
            if self.deadline is not None and not self.deadline.fits(work):
                self.stop(f"{work.describe()} took up to {self.deadline.expected(work):.0f}s before")
                return
            self.launch(work, model, actor)

    def next_work(self, model: str) -> Work | None:
        """The next piece of work for an idle actor of `model`: a unit to describe first, then the first
        unit's trials or analysis, in the units' order."""
        batch = self.config.search.batch
        states = self.by_model[model]
        work = next((w for s in states if s.phase is Phase.DESCRIBE and (w := s.next_work(batch))), None)
        return work or next((w for s in states if (w := s.next_work(batch)) is not None), None)

    def launch(self, work: Work, model: str, actor: Any) -> None:
        state, spec = work.unit, work.unit.planned.spec
        state.start(work)
        if work.phase is Phase.DESCRIBE:
            ref = actor.unit_record.remote(state.unit_id, spec)
        elif work.phase is Phase.ANALYSE:
            ref = self._launch_analysis(work, actor)
        else:
            work.asked = self.studies.ask(work)
            rungs = rungs_for(self.config, state) if work.phase is Phase.SEARCH else None  # ASHA, with what is known now
            ref = actor.run_trials.remote(state.unit_id, spec, [(a.number, a.params) for a in work.asked], rungs)
        self.pool.submit(ref, Pending(model, actor, work))

    def _launch_analysis(self, work: Work, actor: Any) -> Any:
        """Analyse a unit's selected trial and replicates, rebuilt from their stored tensors."""
        analysis = self.config.analysis
        self.studies.sync()  # the trials analysed are durable before any of their curves can be
        log.info(f"analyzing {len(work.trial_ids)} trial(s) of unit {work.unit.unit_id}: curves and strength")
        trials = [(tid, self.run_dir.read_artifact(tid)) for tid in work.trial_ids]
        folds = {tid: work.unit.trial_folds.get(tid) for tid in work.trial_ids}  # each on its own fold's val/test
        return actor.analyze.remote(work.unit.unit_id, work.unit.planned.spec, trials, list(analysis.betas),
                                    analysis.curves, analysis.k_step, folds, analysis.k90_within, analysis.val_all,
                                    analysis.precision)

    def retire_finished(self) -> None:
        for model in list(self.pool.actors):
            if (self.stopping or not self.model_has_work(model)) and not self.pool.busy(model):
                self.pool.retire(model)

    def start_models(self) -> None:
        if not self.stopping:
            self.pool.start_models(self.model_has_work)

    def finished(self) -> bool:
        if self.pool.working():
            return False
        return self.stopping or (not self.pool.waiting_models and not any(map(self.model_has_work, self.by_model)))

    def model_has_work(self, model: str) -> bool:
        return any(s.has_work() for s in self.by_model[model])

    def take_finished(self) -> None:
        """Wait up to a second for one finished piece of work and record it; log what is awaited
        when nothing has finished for STILL_WAITING_S."""
        finished = self.pool.wait(timeout=1.0)
        now = time.monotonic()
        if finished:
            self.last_result = now
        elif now - self.last_result > STILL_WAITING_S and now - self.last_waiting_line > STILL_WAITING_S:
            self.last_waiting_line = now
            log.info(f"still waiting ({now - self.last_result:.0f}s without a result) for: {self.waiting_for()}")
        for ref, pending in finished:
            if self.handle(ref, pending):
                self.pool.free(pending)

    # ------------------------------------------------------------------ finished work
    def handle(self, ref: Any, pending: Pending) -> bool:
        """Take one finished piece of work; returns whether its actor is free for more."""
        work = pending.work
        if work is not None:
            work.unit.release(work)
        try:
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
            self.actor_died(pending, exc)
            return False
        except ray.exceptions.RayTaskError as exc:
            self.worker_error(pending, exc.cause if hasattr(exc, "cause") else exc)
            return True
        if work is None:
            self.model_loads += value["model_loads"]
            log.info(f"worker for {pending.model} is up on {value['node']} (pid {value['pid']}, "
                     f"model loaded in {value['load_seconds']:.1f}s)")
            return True
        took = time.monotonic() - pending.since
        self.phase_seconds[work.phase.value] = self.phase_seconds.get(work.phase.value, 0.0) + took
        if self.deadline is not None:
            self.deadline.measured(work, took)
        self.recorder.finished(work, value)
        return True

    def worker_error(self, pending: Pending, cause: BaseException) -> None:
        """An exception inside a worker: a usage error stops the run (in an analysis it counts as the analysis
        failing, like any other error there); otherwise the trials fail."""
        work = pending.work
        if isinstance(cause, UsageError) and (work is None or work.phase is not Phase.ANALYSE):
            raise cause from None
        if work is None:
            raise DriverError(f"a worker for {pending.model} failed to start: {type(cause).__name__}: {cause}; "
                              f"see {self.run_dir.log_file}") from None
        state = work.unit
        log.error(f"unit {state.unit_id}: worker error {type(cause).__name__}: {cause}")
        if work.phase is Phase.ANALYSE:  # the trials stay; their analysis is tried ANALYSIS_TRIES times
            state.analysis_failures += 1
            return
        if work.phase is Phase.DESCRIBE:  # preparing the unit failed: counts towards giving up on it
            state.failed += 1
        self.recorder.unfinished(state, work.asked, Status.FAILED,
                                 f"worker error {type(cause).__name__}: {str(cause)[:500]}")
        state.failure()

    def actor_died(self, pending: Pending, exc: Exception) -> None:
        """A dead worker costs its in-flight trials: recorded as interrupted, re-run on a new worker."""
        self.actor_failures += 1
        n_asked = len(pending.work.asked) if pending.work is not None else 0
        first_line = (str(exc).splitlines() or [""])[0][:200]
        log.error(f"a worker for {pending.model} died ({type(exc).__name__}: {first_line}); "
                  f"re-running its {n_asked} interrupted trial(s) on a new worker")
        if self.actor_failures > 10 + 2 * self.n_units:
            raise DriverError(f"workers for {pending.model} keep dying ({self.actor_failures} times); "
                              f"see {self.run_dir.log_file}")
        if pending.work is not None and pending.work.phase is Phase.ANALYSE:
            pending.work.unit.analysis_failures += 1
        self.interrupt(pending, f"the worker died ({type(exc).__name__})")
        self.pool.replace(pending)

    def interrupt(self, pending: Pending, why: str) -> None:
        """Work that will not finish: its trials recorded as interrupted, then (durable) re-queued and failed
        in Optuna, exactly as reconciling after a crash would (orchestrator/studies.py)."""
        work = pending.work
        if work is None or not work.asked:
            return
        self.recorder.unfinished(work.unit, work.asked, Status.INTERRUPTED, f"interrupted: {why}; re-run")
        self.studies.sync()

    def waiting_for(self) -> str:
        """What the loop is waiting for now (for logs and for a test that times out)."""
        return "; ".join(p.describe() for p in self.pool.in_flight.values()) or "nothing in flight"
