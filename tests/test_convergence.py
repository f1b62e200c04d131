"""Training length from a convergence pilot (`train.converge`): the rule, the pilot's training and checks,
the PILOT phase of a unit, how Optuna is asked and told, and a real sweep whose trials train for the
pilot's steps."""
from __future__ import annotations

import pytest
from optuna.trial import TrialState

from orchestrator.coordinator import Coordinator
from orchestrator.plan import PlannedUnit, plan_units
from orchestrator.studies import PILOT_ATTR, Outcome, middle_params, open_studies
from orchestrator.units import Phase, Tally, Targets, UnitState, Work, unit_left
from search_spaces.config import parse_config
from search_spaces.spaces import distributions
from storage import open_runs
from storage.run_dir import RunDir
from storage.schema import Status
from storage.store import RunStore
from tests.sweeps import check_run, tiny_config
from workers.convergence import ConvergenceRule
from workers.errors import UsageError
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Convergence, Hyper, TrainSettings, UnitSpec


def test_the_rule_compares_the_objective_with_its_value_window_steps_before():
    rule = ConvergenceRule(window=20, tol=0.05)
    assert rule.observe(10, 1.0) is None and rule.observe(20, 0.8) is None  # fewer than 20 steps measured
    change = rule.observe(30, 0.9)
    assert change == pytest.approx(0.1) and not rule.converged(change)  # 0.9 against step 10's 1.0
    assert rule.converged(rule.observe(40, 0.78))  # 0.78 against step 20's 0.8: 2.5%
    assert not rule.converged(None)


def test_a_sweep_refuses_steps_searched_beside_a_pilot():
    with pytest.raises(UsageError, match="window .* must be a multiple of every"):
        parse_config(tiny_config(train={"converge": {"window": 15, "every": 10}}))
    with pytest.raises(UsageError, match="remove search.space.steps"):
        parse_config(tiny_config(train={"converge": {}}, search={"space": {"steps": {"low": 5, "high": 10}}}))
    config = parse_config(tiny_config(train={"converge": {"window": 20, "max_steps": 40}}))
    assert plan_units(config, lambda m: 4)[0].spec.settings.converge == Convergence(window=20, max_steps=40)


def _unit(tiny_models, converge: Convergence):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 120}), "mlp_out", (1, 2, 3), "steervec",
                    TrainSettings(steps=7, batch_size=16, filter="none", precision="fp32", check_prompts=24,
                                  converge=converge))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def test_a_pilot_stops_where_it_converged_or_says_it_did_not(tiny_models):
    loaded = tiny_models["tiny-llama"]
    pilot = Hyper(lr=0.05, lambda_min=0.01, steps=40, seed=0, pilot=True, prunable=False)
    loose = _unit(tiny_models, Convergence(window=10, tol=0.9, every=5, max_steps=40))
    (done,) = train_trials(loaded, loose, [pilot])
    assert done.ok and done.steps == 10 and done.stop_reason.startswith("converged at step 10")
    assert [c["step"] for c in done.checks] == [0, 5, 10] and {c["kind"] for c in done.checks} == {"pilot"}
    check = done.checks[-1]
    assert set(check) == {"kind", "step", "loss", "flip_rate", "kl_other", "l1", "sites_moved"}
    assert check["l1"] > 0 and isinstance(check["sites_moved"], int)
    assert done.checks[0]["l1"] == 0 and done.checks[0]["flip_rate"] == 0  # step 0: the model itself
    strict = _unit(tiny_models, Convergence(window=10, tol=1e-12, every=5, max_steps=40))
    (ran_out,) = train_trials(loaded, strict, [pilot])
    assert ran_out.ok and ran_out.steps == 40 and ran_out.stop_reason.startswith("not converged by max_steps=40")
    assert [c["step"] for c in ran_out.checks] == list(range(0, 45, 5))  # the last check at max_steps
    (plain,) = train_trials(loaded, strict, [Hyper(lr=0.05, lambda_min=0.01, seed=0)])  # not a pilot: no checks
    assert plain.steps == 7 and not plain.checks and plain.stop_reason is None


TARGETS = Targets(n_trials=2, replicates=2, pilot=True)


def _state(unit_id: str = "u-000000000002") -> UnitState:
    spec = UnitSpec("tiny-gpt2", TaskSpec.make("ioi"), "mlp_out", "all", "activscalar",
                    TrainSettings(converge=Convergence()))
    return UnitState(PlannedUnit(unit_id, spec), TARGETS, described=True)


def _row(state: UnitState, number: int, status: str = Status.COMPLETE, pilot: bool = False) -> dict:
    return dict(trial_id=f"{state.unit_id}-t{number:05d}", unit_id=state.unit_id, run_id="r", trial_number=number,
                status=status, replicate_of=None, pilot=pilot, steps_done=30, val_flip_rate=0.9, val_kl_other=0.1,
                sites_moved=1, sites_total=4)


def test_the_pilot_is_the_phase_before_the_search_and_never_a_search_trial():
    assert unit_left(TARGETS, Tally()).phase is Phase.PILOT and unit_left(TARGETS, Tally()).trials == 1 + 2 + 1
    assert unit_left(TARGETS, Tally(pilot_done=True)).phase is Phase.SEARCH
    assert unit_left(Targets(n_trials=2), Tally()).phase is Phase.SEARCH  # no converge: no pilot
    state = _state()
    work = state.next_work(batch=4)
    assert work.phase is Phase.PILOT and work.count == 1
    state.start(work)
    assert state.next_work(batch=4) is None  # one pilot at a time
    state.release(work)
    state.count(_row(state, 0, Status.INTERRUPTED, pilot=True))
    assert state.phase is Phase.PILOT and state.interrupted == 1  # an interrupted pilot: a new one
    state.count(_row(state, 1, pilot=True))
    assert state.pilot_steps == 30 and state.phase is Phase.SEARCH and not state.search_rows
    assert state.finished == 1 and state.completed == 1


@pytest.mark.parametrize("sampler", ["random", "nsga2", "grid", "tpe"])
def test_optuna_asks_the_pilot_at_the_middle_and_is_told_it_failed(tmp_path, sampler):
    config = parse_config(tiny_config(train={"converge": {"window": 20, "every": 10, "max_steps": 60}},
                                      search={"sampler": sampler, "n_trials": 2, "batch": 2}))
    run = RunDir(tmp_path)
    planned = plan_units(config, lambda m: 4)
    store = RunStore(tmp_path)
    studies = open_studies(run, planned, config.search, store)
    state = UnitState(planned[0], TARGETS, described=True)
    (asked,) = studies.ask(Work(Phase.PILOT, state))
    dists = distributions(config.search, "activscalar")
    assert middle_params(dists)["lr"] == pytest.approx((0.01 * 0.1) ** 0.5)
    assert asked.params == dict(middle_params(dists), seed=asked.number, steps=60, pilot=True, prunable=False)
    study = studies.units[state.unit_id].study
    assert study.trials[asked.number].user_attrs[PILOT_ATTR]
    assert Outcome.interrupted(asked.params, None).requeue is None  # an interrupted pilot is not re-queued
    studies.record(state.unit_id, asked.number, Outcome.failed())
    studies.sync()
    assert study.trials[asked.number].state is TrialState.FAIL
    state.pilot_steps = 20
    search = studies.ask(Work(Phase.SEARCH, state, count=2))
    assert [a.params["steps"] for a in search] == [20, 20] and not any("pilot" in a.params for a in search)


@pytest.mark.slow
def test_a_sweep_with_a_pilot_trains_its_trials_for_the_pilots_steps(tmp_path, ray_session):
    config = parse_config(tiny_config(methods=["activscalar", "dynscalar"], search={"n_trials": 2, "batch": 2,
                                                                                   "replicates": 2},
                                      train={"converge": {"window": 10, "tol": 0.5, "every": 5, "max_steps": 20}},
                                      analysis={"enabled": False}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    check_run(run, n_trials=2, n_units=2, replicates=2)  # includes check_pilots
    runs = open_runs(run)
    pilots = runs.trials[runs.trials.pilot.fillna(False).astype(bool)]
    assert len(pilots) == 2 and set(pilots.status) == {"complete"}
    assert not set(pilots.trial_id) & set(runs.selected().trial_id)  # never selected
    checks = runs.sql("SELECT * FROM checks")
    assert set(checks.trial_id) == set(pilots.trial_id) and set(checks.kind) == {"pilot"}
    Coordinator(config, run).run()  # a resume finds every pilot done: nothing runs again
    check_run(run, n_trials=2, n_units=2, replicates=2)
