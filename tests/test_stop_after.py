"""`actscale run --stop-after DURATION`: durations refused by name, the rule for what still fits, and a
sweep that stops at its limit, resumes, and ends with exactly the trials of an uninterrupted run."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orchestrator.deadline import STOPPED_AT_LIMIT, Deadline, reserve_for
from orchestrator.plan import PlannedUnit
from orchestrator.units import Phase, Targets, UnitState, Work
from search_spaces.config import parse_config
from search_spaces.duration import parse_duration
from tests.sweeps import check_run, tiny_config, write_config
from workers.errors import UsageError
from workers.tasks.base import TaskSpec
from workers.unit import TrainSettings, UnitSpec


@pytest.mark.parametrize("text, seconds", [("40s", 40), ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           (" 10S ", 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "90", "", "m", "0s", "-5m", "2d"])
def test_a_bad_duration_is_named_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=f"--stop-after {text!r} .*accepted: a number with a unit s, m or h"):
        parse_duration(text, "--stop-after")


def test_a_bad_stop_after_is_refused_in_the_sweep_and_on_the_command_line(tmp_path, capsys):
    from orchestrator.cli import main

    with pytest.raises(UsageError, match="stop_after: stop_after '5 minutes' is not a duration"):
        parse_config(tiny_config(stop_after="5 minutes"))
    assert parse_config(tiny_config(stop_after="2h")).stop_after == "2h"
    sweep = write_config(tmp_path / "s.yaml", tiny_config())
    assert main(["run", str(sweep), "--out", str(tmp_path / "run"), "--stop-after", "soon"]) == 2
    err = capsys.readouterr().err
    assert "actscale: error: --stop-after 'soon' is not a duration; accepted: a number with a unit s, m or h" in err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_stop_after_is_not_part_of_any_unit_id():
    from orchestrator.plan import plan_units

    ids = [[u.unit_id for u in plan_units(parse_config(tiny_config(**extra)), lambda m: 2)]
           for extra in ({}, {"stop_after": "40s"})]
    assert ids[0] == ids[1]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _work(unit_id: str, model: str = "tiny-gpt2", phase: Phase = Phase.SEARCH) -> Work:
    spec = UnitSpec(model, TaskSpec.make("ioi"), "mlp_out", "all", "activscalar", TrainSettings())
    return Work(phase, UnitState(PlannedUnit(unit_id, spec), Targets(n_trials=4)), count=2)


def test_work_is_handed_out_only_while_it_is_expected_to_end_in_time():
    clock = Clock()
    deadline = Deadline(100.0, clock=clock)
    assert deadline.left() == 100.0 - reserve_for(100.0) == 95.0
    first, other_unit, other_model = _work("u-1"), _work("u-2"), _work("u-3", model="tiny-llama")
    assert deadline.fits(first)  # nothing measured yet: handed out
    deadline.measured(first, 30.0)
    deadline.measured(first, 20.0)
    assert deadline.expected(first) == 30.0 and deadline.expected(other_unit) == 30.0  # the same model's kind
    assert deadline.expected(other_model) is None and deadline.expected(_work("u-1", phase=Phase.ANALYSE)) is None
    clock.now += 60.0  # 35 s left
    assert deadline.fits(first)
    assert deadline.will_end_in_time(first, since=clock.now - 25.0)  # expected to end in 5 s
    clock.now += 10.0  # 25 s left
    assert not deadline.fits(first) and deadline.fits(other_model)
    assert not deadline.will_end_in_time(first, since=clock.now - 3.0)  # expected to end 2 s after the limit
    clock.now += 30.0
    assert deadline.passed() and not deadline.will_end_in_time(other_model, since=clock.now)


def _actscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_run_stopped_at_its_limit_resumes_to_exactly_the_trials_of_an_uninterrupted_run(tmp_path):
    """A first attempt far too short for the sweep stops before its limit (exit 3, the last line says so);
    running the command again resumes (with a limit that leaves room for work, then without one); the run
    ends with every unit's n_trials search trials and replicates, no trial id twice, every curve exactly
    once, Parquet equal to Optuna (check_run), as an uninterrupted run would."""
    sweep = write_config(tmp_path / "sweep.yaml", tiny_config(
        methods=["activscalar", "steervec"], search={"n_trials": 8, "batch": 2, "replicates": 2},
        train={"steps": 300, "batch_size": 8}))
    run = tmp_path / "run"
    command = ["run", str(sweep), "--out", str(run), "--quiet"]
    first = _actscale(*command, "--stop-after", "30s")
    assert first.returncode == STOPPED_AT_LIMIT, first.stdout[-2000:] + first.stderr[-3000:]
    last = first.stdout.strip().splitlines()[-1]
    assert "stopped at its --stop-after limit" in last and "running the same command again resumes" in last
    for _ in range(3):  # a limit that leaves time for work after Ray and the worker start
        done = _actscale(*command, "--stop-after", "90s")
        assert done.returncode in (0, STOPPED_AT_LIMIT), done.stderr[-3000:]
        if done.returncode == 0:
            break
    else:
        done = _actscale(*command)
    assert done.returncode == 0, done.stderr[-3000:]
    check_run(run, n_trials=8, n_units=2, replicates=2)
    assert "stopping before the --stop-after limit" in (run / "actscale.log").read_text()


@pytest.mark.slow
def test_trials_in_flight_that_would_overrun_the_limit_are_interrupted_and_run_again(tmp_path, monkeypatch,
                                                                                     ray_session):
    """A batch in flight that is not expected to end in time is cut off: its trials get `interrupted` rows,
    are re-queued and failed in Optuna as after a crash, and the next run trains their parameters again."""
    from orchestrator.coordinator import Coordinator
    from orchestrator.units import TRIAL_PHASES
    from storage.store import read_table
    from tests.sweeps import parsed

    def overruns_after_a_second(self, work, since):  # as if every batch were measured as too long for the time left
        return not (work.phase in TRIAL_PHASES and time.monotonic() - since > 1.0)
    monkeypatch.setattr(Deadline, "will_end_in_time", overruns_after_a_second)
    config = parsed(tiny_config(search={"n_trials": 4, "batch": 2}, train={"steps": 300, "batch_size": 8}))
    first = Coordinator(config, tmp_path, quiet=True, stop_after=3600.0).run()
    assert first.stopped_at_limit and first.interrupted == 2 and first.completed == 0 and first.trials_left == 4
    cut = read_table(tmp_path, "trials").table.to_pylist()
    assert {r["status"] for r in cut} == {"interrupted"} and all("--stop-after" in r["error"] for r in cut)
    monkeypatch.undo()
    second = Coordinator(config, tmp_path, quiet=True).run()
    assert not second.stopped_at_limit and second.completed == 4
    check_run(tmp_path, n_trials=4, n_units=1)
    complete = [r for r in read_table(tmp_path, "trials").table.to_pylist() if r["status"] == "complete"]
    rerun = {(r["lambda_faith"], r["lambda_min"], r["lr"]) for r in complete}
    assert {(r["lambda_faith"], r["lambda_min"], r["lr"]) for r in cut} <= rerun  # re-queued, then trained
