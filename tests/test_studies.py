"""The Optuna side (orchestrator/studies.py) on a real journal, without Ray: each unit's own sampler
seed, and the rule that Optuna hears of a trial only once its rows are durable."""
from __future__ import annotations

from optuna.trial import TrialState

from orchestrator.plan import plan_units
from orchestrator.studies import Outcome, open_studies, unit_seed
from orchestrator.units import Asked
from storage.run_dir import RunDir
from storage.store import RunStore, read_table
from tests.sweeps import parsed, tiny_config

SWEEP = parsed(tiny_config(layers=[[0], [1]], search={"sampler": "random", "n_trials": 4, "batch": 2, "seed": 7}))


def _open(path):
    planned = plan_units(SWEEP, lambda model: 2)
    store = RunStore(path)
    return planned, open_studies(RunDir(path), planned, SWEEP.search, store)


def _first_draws(path) -> dict[str, dict]:
    planned, studies = _open(path)
    return {p.unit_id: studies.units[p.unit_id].ask_search(1)[0].params for p in planned}


def test_each_unit_has_its_own_draws_and_the_same_ones_in_another_run(tmp_path):
    first = _first_draws(tmp_path / "a")
    again = _first_draws(tmp_path / "b")
    (one, two) = first
    assert first[one]["lr"] != first[two]["lr"]  # two units of one method, one sweep: different draws
    assert first == again  # the same units, the same seed, another run: the same draws
    assert unit_seed(one, 7) != unit_seed(two, 7) and unit_seed(one, 7) != unit_seed(one, 8)
    assert 0 <= unit_seed(one, 7) < 2 ** 32


def test_optuna_is_told_only_once_the_rows_are_durable(tmp_path):
    planned, studies = _open(tmp_path)
    unit_id = planned[0].unit_id
    study = studies.units[unit_id]
    (asked,) = study.ask_search(1)
    row = dict(trial_id=f"{unit_id}-t{asked.number:05d}", unit_id=unit_id, run_id="r", trial_number=asked.number,
               status="failed", error="x")
    studies.record(unit_id, asked.number, Outcome.failed(), {"trials": [row]})
    assert study.running()[0].number == asked.number  # buffered rows: Optuna not told yet
    assert read_table(tmp_path, "trials").table.num_rows == 0
    studies.sync()
    assert read_table(tmp_path, "trials").table.num_rows == 1 and not study.running()


def test_reconcile_records_a_trial_left_running_as_interrupted_and_requeues_it(tmp_path):
    planned, studies = _open(tmp_path)
    unit_id = planned[0].unit_id
    (asked,) = studies.units[unit_id].ask_search(1)  # then the coordinator "crashes"
    _, reopened = _open(tmp_path)

    def interrupted_row(uid: str, a: Asked) -> dict:
        return dict(trial_id=f"{uid}-t{a.number:05d}", unit_id=uid, run_id="r", trial_number=a.number,
                    status="interrupted", error="crash", replicate_of=a.replicate_of)
    rows = reopened.reconcile(interrupted_row)
    assert [r["status"] for r in rows] == ["interrupted"]
    study = reopened.units[unit_id].study
    assert study.trials[asked.number].state is TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{k: asked.params[k] for k in reopened.units[unit_id].dists}]
    again = reopened.reconcile(interrupted_row)  # nothing left running: nothing more to settle
    assert [(r["trial_id"], r["status"]) for r in again] == [(r["trial_id"], r["status"]) for r in rows]


def test_fold_replicates_keep_their_fold_through_a_crash(tmp_path):
    """A replicate's fold lives in its Optuna trial's user attributes: the interrupted row a resume writes carries
    it, and a stale waiting replicate of another fold is never handed out for this one."""
    planned, studies = _open(tmp_path)
    unit_id = planned[0].unit_id
    study = studies.units[unit_id]
    (searched,) = study.ask_search(1)
    selected = dict(searched.params, trial_id=f"{unit_id}-t{searched.number:05d}")
    asked = study.ask_replicates(selected, [2, 3])
    assert [a.params["fold"] for a in asked] == [2, 3] and all(not a.params["resample_train"] for a in asked)
    assert all(a.replicate_of == selected["trial_id"] and a.params["prunable"] is False for a in asked)
    study.study.enqueue_trial({k: selected[k] for k in study.dists},
                              user_attrs={"replicate_of": selected["trial_id"], "fold": 1})  # stale: never asked
    (again,) = study.ask_replicates(selected, [2])
    assert again.params["fold"] == 2
    _, reopened = _open(tmp_path)
    rows = reopened.reconcile(lambda uid, a: dict(trial_id=f"{uid}-t{a.number:05d}", unit_id=uid, run_id="r",
                                                  trial_number=a.number, status="interrupted", error="crash",
                                                  replicate_of=a.replicate_of, fold=a.params.get("fold")))
    assert sorted(r["fold"] for r in rows if r["replicate_of"]) == [2, 2, 3]


def test_a_lost_journal_never_makes_a_trial_id_repeat(tmp_path):
    """Trials stored in Parquet but absent from the journal (deleted, as the committed paper run's is): the studies
    get their numbers back, complete search trials with their values, so the next trial asked takes a new id."""
    planned, studies = _open(tmp_path)
    unit_id = planned[0].unit_id
    study = studies.units[unit_id]
    rows = []
    for a in study.ask_search(3):
        row = dict(trial_id=f"{unit_id}-t{a.number:05d}", unit_id=unit_id, run_id="r", trial_number=a.number,
                   status="complete" if a.number != 1 else "pruned", pilot=False, sites_moved=3, sites_total=8,
                   val_flip_rate=0.5 + a.number / 10, val_kl_other=0.1, val_l1=1.0, **a.params)
        rows.append(row)
    studies.record(unit_id, 0, Outcome.failed(), {"trials": rows})
    studies.sync()
    RunDir(tmp_path).journal.unlink()
    _, reopened = _open(tmp_path)
    again = reopened.units[unit_id]
    restored = again.study.get_trials(deepcopy=False)
    assert [t.state for t in restored] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert restored[2].params["lr"] == rows[2]["lr"]  # the sampler's population keeps the stored draw
    (asked,) = again.ask_search(1)
    assert asked.number == 3  # a new id, not t00000 again
    other = reopened.units[planned[1].unit_id]  # a unit with nothing stored starts at 0
    assert other.ask_search(1)[0].number == 0
