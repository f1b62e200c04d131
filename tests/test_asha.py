"""ASHA over training steps (workers/asha.py): the asynchronous rule on synthetic rung scores, its key
against the selection rule, the rung checks in a batched training, and real sweeps (stored, told,
never selected, exactly once after crashes)."""
from __future__ import annotations

import dataclasses
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces.config import parse_config
from storage.selection import RATE_SLACK, select_rows
from tests.sweeps import tiny_config
from workers.asha import RATE_SLACK as WORKERS_SLACK
from workers.asha import RungEntry, Rungs, front_order, rung_key, rung_steps
from workers.errors import UsageError

MIN_FLIP = 0.9


def _entries(scores: list[float], start: int = 0) -> list[RungEntry]:
    """Trials below min_flip whose flip_rate is the score: higher is better."""
    return [RungEntry(start + n, s, 0.1, 5) for n, s in enumerate(scores)]


# ----------------------------------------------------------------- the rule on synthetic scores
@given(st.lists(st.floats(0, 0.85), min_size=1, max_size=40, unique=True), st.integers(2, 5))
def test_all_at_once_exactly_the_top_1_over_eta_continue(scores, eta):
    arriving = _entries(scores)
    kept = Rungs(1, eta, MIN_FLIP).kept(1, arriving)
    n_kept = max(1, len(scores) // eta)
    assert sum(kept) == n_kept
    best = sorted(scores, reverse=True)[:n_kept]
    assert {s for s, k in zip(scores, kept) if k} == set(best)


@given(st.lists(st.floats(0, 0.85), min_size=1, max_size=40, unique=True), st.integers(2, 5), st.integers(1, 8))
def test_min_kept_is_a_floor_on_the_trials_that_go_on(scores, eta, min_kept):
    kept = Rungs(1, eta, MIN_FLIP, min_kept=min_kept).kept(1, _entries(scores))
    n_kept = min(len(scores), max(min_kept, len(scores) // eta))
    assert sum(kept) == n_kept
    assert {s for s, k in zip(scores, kept) if k} == set(sorted(scores, reverse=True)[:n_kept])


@given(st.lists(st.floats(0, 0.85), min_size=16, max_size=16, unique=True), st.integers(1, 6))
def test_with_min_kept_at_least_that_many_trials_complete_in_batches(scores, min_kept):
    """16 trials in two batches of 8 through rungs 5 and 20 (eta 4): a front of at least min_kept remains,
    whatever the order of their qualities; without the floor (min_kept 1) ASHA may leave a single one."""
    history: dict[int, tuple[RungEntry, ...]] = {}
    complete = 0
    for start in (0, 8):
        live = _entries(scores[start:start + 8], start=start)
        for rung in (5, 20):
            kept = Rungs(5, 4, MIN_FLIP, history, min_kept).kept(rung, live)
            history[rung] = history.get(rung, ()) + tuple(live)
            live = [e for e, keep in zip(live, kept) if keep]
        complete += len(live)
    assert complete >= min_kept


def test_a_floor_above_the_trials_is_refused_by_name():
    search = {"n_trials": 4, "pruner": {"kind": "asha", "min_steps": 2, "eta": 3, "min_kept": 5}}
    with pytest.raises(UsageError, match=r"search.pruner.min_kept = 5 is above search.n_trials = 4: accepted 1 to"):
        parse_config(tiny_config(search=search))
    parse_config(tiny_config(search={**search, "n_trials": 5}))


def test_arriving_one_by_one_each_is_judged_against_what_is_known_then():
    """Asynchronous: the 1st trial at a rung is the best so far (goes on), the 2nd goes on only if it beats
    the 1st (n // eta = 0: the best so far), from the 3rd on the best n // eta of those so far."""
    scores = [0.5, 0.4, 0.6, 0.1, 0.7, 0.55, 0.2, 0.3, 0.65]
    history: list[RungEntry] = []
    decisions = []
    for entry in _entries(scores):
        rungs = Rungs(4, 3, MIN_FLIP, {4: tuple(history)})
        (keep,) = rungs.kept(4, [entry])
        decisions.append(keep)
        history.append(entry)
    # n = 1, 2: the best so far; n = 3..5: the best 1; n = 6..8: the best 2; n = 9: the best 3
    assert decisions == [True, False, True, False, True, False, False, False, True]


def test_a_batch_competes_with_the_history_and_with_itself():
    history = {6: tuple(_entries([0.8, 0.7, 0.6, 0.5, 0.4, 0.3], start=0))}
    rungs = Rungs(2, 3, MIN_FLIP, history)
    # 6 earlier + 3 now = 9 trials: the best 3 go on, wherever they come from
    assert rungs.kept(6, _entries([0.75, 0.65, 0.85], start=10)) == [True, False, True]
    assert rungs.kept(6, _entries([0.1, 0.2, 0.3], start=10)) == [False, False, False]
    # a trial already in the history (the same number) is not counted twice
    assert rungs.kept(6, [RungEntry(0, 0.8, 0.1, 5)]) == [True]


def test_rungs_are_min_steps_times_powers_of_eta_below_the_trials_steps():
    assert rung_steps(10, 3, 300) == [10, 30, 90, 270]
    assert rung_steps(10, 3, 270) == [10, 30, 90]
    rungs = Rungs(10, 3, MIN_FLIP)
    assert [s for s in range(1, 300) if rungs.is_rung(s)] == [10, 30, 90, 270]


# ----------------------------------------------------------------- the 'front' order
def test_front_keeps_a_sparse_trial_dipping_below_min_flip_where_the_selection_order_prunes_it():
    """Measured on SmolLM2 IOI mlp_out (seed 0, step 24): the unpruned search's winner t03 is at 0.88 flip with 17
    cells while denser trials are above 0.9; it ends at 0.93 with 7. Keeping 2 of 5: 'selection' drops it."""
    at_rung = [RungEntry(0, 0.94, 0.2, 41), RungEntry(3, 0.88, 0.3, 17), RungEntry(8, 1.0, 0.1, 208),
               RungEntry(13, 1.0, 0.1, 166), RungEntry(11, 0.88, 0.3, 23)]
    front = Rungs(6, 2, MIN_FLIP, rank="front").kept(24, at_rung)
    selection = Rungs(6, 2, MIN_FLIP, rank="selection").kept(24, at_rung)
    assert front == [True, True, False, False, False]  # t00: the sparsest above 0.9; t03: fewer cells, lower flip
    assert selection == [True, False, False, True, False]  # above 0.9 first, whatever their cells


def test_front_ranks_trials_that_moved_no_cell_last_unless_they_reach_min_flip():
    entries = [RungEntry(0, 0.05, 0.0, 0), RungEntry(1, 0.5, 0.1, 300), RungEntry(2, 0.3, 0.1, 12)]
    assert [e.number for e in front_order(entries, MIN_FLIP)] == [1, 2, 0]
    entries.append(RungEntry(3, 0.95, 0.1, 0))  # an effect without a cell past the threshold: the best there is
    assert [e.number for e in front_order(entries, MIN_FLIP)][0] == 3


ENTRY = st.builds(RungEntry, st.integers(0, 10_000), st.sampled_from([0.0, 0.3, 0.85, MIN_FLIP - RATE_SLACK / 2, 0.8999, 0.9, 1.0]),
                  st.floats(0, 2), st.integers(0, 50))


@given(st.lists(ENTRY, min_size=1, max_size=30, unique_by=lambda e: e.number))
def test_front_puts_the_selection_rules_pick_first_when_a_trial_reaches_min_flip(entries):
    ordered = front_order(entries, MIN_FLIP)
    assert sorted(ordered) == sorted(entries)  # a permutation
    if any(e.flip_rate >= MIN_FLIP - RATE_SLACK for e in entries):
        assert ordered[0] == min(entries, key=lambda e: rung_key(e, MIN_FLIP))
    # no trial is ranked behind one it dominates
    for i, a in enumerate(ordered):
        for b in ordered[:i]:
            flip_a, flip_b = (MIN_FLIP if e.flip_rate >= MIN_FLIP - RATE_SLACK else e.flip_rate for e in (a, b))
            better = (flip_a >= flip_b and a.sites_moved <= b.sites_moved
                      and (flip_a > flip_b or a.sites_moved < b.sites_moved))
            assert not (better and (a.sites_moved > 0 or flip_a == MIN_FLIP)), (a, b)


@given(st.lists(st.floats(0, 0.85), min_size=1, max_size=30, unique=True), st.integers(1, 50))
def test_front_is_the_selection_order_when_every_trial_moves_the_same_cells(scores, moved):
    entries = [RungEntry(n, s, 0.1, moved) for n, s in enumerate(scores)]
    assert front_order(entries, MIN_FLIP) == sorted(entries, key=lambda e: rung_key(e, MIN_FLIP))


# ----------------------------------------------------------------- the key keeps the selection rule's order
def _row(entry: RungEntry) -> dict:
    return dict(trial_id=f"u-000000000001-t{entry.number:05d}", unit_id="u-000000000001", run_id="r",
                trial_number=entry.number, status="complete", replicate_of=None, val_flip_rate=entry.flip_rate,
                val_kl_other=entry.kl_other, sites_moved=entry.sites_moved, sites_total=100)


FLIPS = st.sampled_from([0.0, 0.3, 0.5, 0.85, MIN_FLIP - RATE_SLACK / 2, 0.8999999, MIN_FLIP, 0.95, 1.0])
TRIAL = st.tuples(FLIPS, st.sampled_from([0.0, 0.05, 0.1, 0.4]), st.integers(0, 6))


@settings(max_examples=60, deadline=None)
@given(st.lists(TRIAL, min_size=1, max_size=7))
def test_the_rung_key_orders_trials_exactly_as_the_selection_rule(trials):
    """Sorting by the key gives the order in which the SQL rule (storage/selection.py) picks the trials
    when each pick is removed in turn: the first is the selected trial, and so on."""
    assert WORKERS_SLACK == RATE_SLACK
    entries = [RungEntry(n, flip, kl, moved) for n, (flip, kl, moved) in enumerate(trials)]
    by_key = [e.number for e in sorted(entries, key=lambda e: rung_key(e, MIN_FLIP))]
    rows = [_row(e) for e in entries]
    by_rule = []
    while rows:
        chosen = select_rows(rows, MIN_FLIP)
        assert chosen is not None
        by_rule.append(chosen["trial_number"])
        rows = [r for r in rows if r["trial_id"] != chosen["trial_id"]]
    assert by_key == by_rule


# ----------------------------------------------------------------- rung checks in a batched training
GOOD = dict(lr=0.2, lambda_min=0.001)
HOPELESS = dict(lr=1e-7, lambda_min=0.001)


def _unit(tiny_models, **settings):
    from workers.interventions import ActivScalar
    from workers.prepare import prepare_unit
    from workers.tasks.base import TaskSpec
    from workers.unit import TrainSettings, UnitSpec

    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 120}), "mlp_out", (1, 2, 3), ActivScalar.method,
                    TrainSettings(**{"steps": 20, "batch_size": 16, "filter": "none", "precision": "fp32",
                                     "check_prompts": 24, **settings}))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def test_a_rung_prunes_the_batchs_worst_and_the_others_train_as_without_it(tiny_models):
    from workers.trainer import train_trials
    from workers.unit import Hyper

    loaded, unit = tiny_models["tiny-llama"], _unit(tiny_models)
    hypers = [Hyper(**GOOD, seed=0), Hyper(**HOPELESS, seed=1), Hyper(**HOPELESS, seed=2)]
    with_rungs = train_trials(loaded, unit, hypers, Rungs(4, 3, MIN_FLIP))
    good, *hopeless = with_rungs
    assert good.ok and not good.pruned and good.steps == 20
    assert [c["step"] for c in good.checks] == [4, 12] and all(c["kind"] == "rung" for c in good.checks)
    for h in hopeless:  # 3 trials at rung 4: the best one goes on
        assert h.ok and h.pruned and h.steps == 4 and h.stop_reason.startswith("pruned by asha at rung 4")
        assert [c["step"] for c in h.checks] == [4] and h.metrics["val"], "scored where it stopped"
    (alone,) = train_trials(loaded, unit, [hypers[0]])
    assert alone.checks == [] and alone.steps == 20
    for split in ("val", "test"):
        for name, value in alone.metrics[split].items():
            assert abs(value - good.metrics[split][name]) <= 1e-4 * (1 + abs(value)), (split, name)


def test_the_history_prunes_a_trial_that_is_best_in_its_batch(tiny_models):
    from workers.trainer import train_trials
    from workers.unit import Hyper

    loaded, unit = tiny_models["tiny-llama"], _unit(tiny_models, steps=8)
    earlier = tuple(RungEntry(100 + n, 1.0, 0.0, 0) for n in range(6))  # perfect trials at rung 4
    (result,) = train_trials(loaded, unit, [Hyper(**GOOD, seed=7)], Rungs(4, 3, MIN_FLIP, {4: earlier}))
    assert result.pruned and result.steps == 4 and "of the 7 search trial(s)" in result.stop_reason
    replicate = dataclasses.replace(Hyper(**GOOD, seed=8), prunable=False)
    (kept,) = train_trials(loaded, unit, [replicate], Rungs(4, 3, MIN_FLIP, {4: earlier}))
    assert not kept.pruned and kept.steps == 8 and kept.checks == [], "replicates are never judged"


def test_cells_moved_at_a_rung_are_measured_for_every_built_in_method(tiny_models):
    """SteerVec's effect needs the train norms, DynScalar's a recorded forward: both reach the rung check."""
    from workers.interventions import DynScalar, SteerVec
    from workers.prepare import prepare_unit
    from workers.tasks.base import TaskSpec
    from workers.trainer import train_trials
    from workers.unit import Hyper, TrainSettings, UnitSpec

    loaded = tiny_models["tiny-llama"]
    for method in (SteerVec.method, DynScalar.method):
        spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 80}), "mlp_out", "all", method,
                        TrainSettings(steps=6, batch_size=8, filter="none", precision="fp32"))
        results = train_trials(loaded, prepare_unit(loaded, spec), [Hyper(lr=0.3, seed=0), Hyper(lr=0.2, seed=1)],
                               Rungs(3, 3, MIN_FLIP))
        assert sum(r.pruned for r in results) == 1, method  # 2 at rung 3: the best one goes on
        for r in results:
            (check,) = r.checks
            assert check["step"] == 3 and 0 <= check["sites_moved"] <= r.sites_total, (method, check)


# ----------------------------------------------------------------- real sweeps
def asha_config(**search):
    from tests.sweeps import tiny_config

    return tiny_config(
        models=["tiny-llama"], tasks=[{"name": "ioi", "options": {"n": 120}}], layers=[[1, 2, 3]],
        search={"n_trials": 8, "batch": 4, "replicates": 2, "pruner": {"kind": "asha", "min_steps": 2, "eta": 3},
                "space": {"lr": {"low": 1e-7, "high": 0.3, "log": True}, "lambda_min": {"low": 1e-3, "high": 2e-3}},
                **search},
        train={"steps": 20, "batch_size": 16, "filter": "none", "check_prompts": 24})


@pytest.mark.slow
def test_an_asha_sweep_prunes_at_rungs_never_selects_pruned_trials_and_resumes(tmp_path, ray_session):
    from orchestrator.coordinator import Coordinator
    from storage.query import load, run_sql
    from tests.sweeps import check_run, check_rungs, parsed

    config = parsed(asha_config())
    summary = Coordinator(config, tmp_path, quiet=True).run()
    trials = load(tmp_path, "trials")
    pruned = trials[trials.status == "pruned"]
    # the first batch of 4 keeps 1 at rung 2; the next one competes with all 8
    assert summary.pruned == len(pruned) >= 3, trials[["status", "lr", "steps_done", "stop_reason"]]
    check_run(tmp_path, n_trials=8, n_units=1, replicates=2)
    check_rungs(tmp_path, min_steps=2, eta=3)
    selected, _ = run_sql([tmp_path], "SELECT trial_id FROM selected")
    assert not set(selected.trial_id) & set(pruned.trial_id)
    again = Coordinator(config, tmp_path, quiet=True).run()
    assert len(load(tmp_path, "trials")) == len(trials) and again.completed == summary.completed


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_an_asha_sweep_sigkilled_and_resumed_runs_everything_exactly_once(tmp_path):
    from storage.store import read_table
    from tests.procs import kill_session, start_coordinator, wait_for
    from tests.sweeps import check_run, check_rungs, write_config

    config = asha_config(n_trials=12, batch=2, replicates=2)
    config["train"]["steps"] = 300  # a batch that goes on past its rungs takes seconds: the kills land in one
    cfg = write_config(tmp_path / "sweep.yaml", config)
    run = tmp_path / "run"
    log = run / "actscale.log"
    rng = random.Random(3)
    for _ in range(2):
        before = log.read_text().count(" is up on ") if log.exists() else 0
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        assert wait_for(lambda: log.exists() and log.read_text().count(" is up on ") > before, timeout=600)  # noqa: B023
        time.sleep(rng.uniform(1.0, 3.0))  # trials in flight, some of them past a rung
        kill_session(proc)
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=12, n_units=1, replicates=2)
    check_rungs(run, min_steps=2, eta=3)
    statuses = read_table(run, "trials").table.column("status").to_pylist()
    assert statuses.count("interrupted") >= 1 and statuses.count("pruned") >= 1, statuses
