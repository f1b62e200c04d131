"""A unit's state machine (orchestrator/units.py): its phase, its next work and what is left, as the
scheduler, the progress display and `status` see them; no Ray, no Optuna."""
from __future__ import annotations

from orchestrator.plan import PlannedUnit
from orchestrator.units import Asked, Phase, Tally, Targets, UnitState, Work, matched_of, unit_left
from storage.schema import Status
from workers.tasks.base import TaskSpec
from workers.unit import TrainSettings, UnitSpec

TARGETS = Targets(n_trials=4, replicates=3, analysis=True, give_up_after=8, min_flip=0.5)


def _unit(unit_id: str = "u-000000000001", **kwargs) -> UnitState:
    spec = UnitSpec("tiny-gpt2", TaskSpec.make("ioi"), "mlp_out", "all", "activscalar", TrainSettings())
    return UnitState(PlannedUnit(unit_id, spec), kwargs.pop("targets", TARGETS), **kwargs)


def _row(unit: UnitState, number: int, status: str = Status.COMPLETE, replicate_of: str | None = None,
         flip: float = 0.8, moved: int = 3) -> dict:
    return dict(trial_id=f"{unit.unit_id}-t{number:05d}", unit_id=unit.unit_id, run_id="r", trial_number=number,
                status=status, replicate_of=replicate_of, val_flip_rate=flip, val_kl_other=0.1, sites_moved=moved,
                sites_total=10)


def _finish(unit: UnitState, work: Work, rows: list[dict]) -> None:
    unit.release(work)
    for row in rows:
        unit.count(row)


def test_a_unit_walks_its_phases_in_order():
    unit = _unit()
    assert unit.phase is Phase.DESCRIBE
    work = unit.next_work(batch=2)
    assert work is not None and work.phase is Phase.DESCRIBE
    unit.start(work)
    assert unit.next_work(batch=2) is None and unit.phase is Phase.DESCRIBE  # in flight: nothing more to hand out
    unit.release(work)
    unit.described = True
    numbers = iter(range(100))
    while unit.phase is Phase.SEARCH:
        work = unit.next_work(batch=3)
        assert work is not None and work.count == min(3, unit.left().steps[Phase.SEARCH].hand_out)
        unit.start(work)
        _finish(unit, work, [_row(unit, next(numbers), flip=0.6 + 0.01 * i) for i in range(work.count)])
    assert len(unit.search_rows) == 4 and unit.phase is Phase.REPLICATES
    selected = unit.selected["trial_id"]
    work = unit.next_work(batch=5)
    assert work.count == 2 and work.replicate_of == selected  # replicates - 1, of the selected trial
    unit.start(work)
    assert unit.left().trials == 2 and unit.next_work(batch=5) is None
    _finish(unit, work, [_row(unit, next(numbers), replicate_of=selected) for _ in range(2)])
    assert unit.phase is Phase.ANALYSE
    work = unit.next_work(batch=5)
    assert work.trial_ids[0] == selected and len(work.trial_ids) == 3
    unit.start(work)
    assert unit.next_work(batch=5) is None  # one analysis at a time
    unit.release(work)
    unit.analysed.update(work.trial_ids)
    assert unit.phase is Phase.DONE and unit.left().trials == 0 and not unit.has_work()


def test_pruned_search_trials_count_and_a_search_that_selects_nothing_has_no_replicates():
    unit = _unit(described=True)
    for number in range(4):
        unit.count(_row(unit, number, status=Status.PRUNED))
    left = unit.left()
    assert left.phase is Phase.DONE and left.trials == 0  # nothing selected: no replicates, no analysis


def test_a_unit_is_given_up_after_too_many_failures_and_then_has_nothing_left():
    unit = _unit(described=True, targets=Targets(n_trials=4, replicates=1, give_up_after=3))
    for number in range(3):
        unit.count(_row(unit, number, status=Status.FAILED))
        unit.failure()
    assert unit.gave_up and unit.phase is Phase.GAVE_UP and unit.left().trials == 0 and unit.next_work(4) is None


def test_a_trial_without_stored_tensors_stops_the_units_analysis():
    unit = _unit(described=True, targets=Targets(n_trials=1, analysis=True), has_artifact=lambda tid: False)
    unit.count(_row(unit, 0))
    assert unit.phase is Phase.ANALYSE
    assert unit.next_work(4) is None and unit.phase is Phase.DONE


def test_status_gets_the_same_answer_from_stored_counts():
    """`status` has only the stored rows: the pure function gives the pending trials and the phase."""
    fresh = unit_left(TARGETS, Tally())
    assert fresh.phase is Phase.SEARCH and fresh.trials == 4 + 2  # search trials and replicates to come
    mid = unit_left(TARGETS, Tally(search_finished=4, selected="t1", replicates_done=1, to_analyse=("t1", "t2")))
    assert mid.phase is Phase.REPLICATES and mid.trials == 1
    analysing = unit_left(TARGETS, Tally(search_finished=4, selected="t1", replicates_done=2, to_analyse=("t1",)))
    assert analysing.phase is Phase.ANALYSE and analysing.trials == 0
    assert unit_left(TARGETS, Tally(search_finished=4, selected="t1", replicates_done=2)).phase is Phase.DONE
    extended = unit_left(Targets(n_trials=6, replicates=3), Tally(search_finished=4, selected="t1", replicates_done=2))
    assert extended.phase is Phase.SEARCH and extended.trials == 2  # a longer search: its replicates stay done


def test_work_in_flight_is_left_but_not_handed_out_again():
    tally = Tally(search_finished=1, in_flight={Phase.SEARCH: 2})
    left = unit_left(TARGETS, tally)
    assert left.phase is Phase.SEARCH and left.steps[Phase.SEARCH].left == 3 and left.hand_out == 1


def test_fold_replicates_take_each_wanted_fold_once():
    from orchestrator.units import replicate_folds

    assert replicate_folds(5, 5, []) == [1, 2, 3, 4]  # R = K: every fold but the search's 0
    assert replicate_folds(7, 3, []) == [1, 2, 0, 1, 2, 0]  # R > K: round the folds again, fold 0 too
    assert replicate_folds(5, 5, [2], [4]) == [1, 3]  # done and in flight count off
    assert replicate_folds(3, 5, [None, 1]) == [2]  # a seed replicate (no fold) counts for no fold


def test_a_unit_hands_out_fold_replicates_by_fold_and_asks_again_the_fold_cut_off():
    targets = Targets(n_trials=2, replicates=4, give_up_after=8, min_flip=0.5, replicate_folds=4)
    unit = _unit(described=True, targets=targets)
    for number in range(2):
        unit.count(dict(_row(unit, number, flip=0.6 + 0.1 * number), fold=0))
    selected = unit.selected["trial_id"]
    work = unit.next_work(batch=2)
    unit.start(work)
    folds = unit.take_replicate_folds(work.count)
    assert work.phase is Phase.REPLICATES and folds == [1, 2]
    work.asked = [Asked(10 + i, {"fold": f}, selected) for i, f in enumerate(folds)]
    rest = unit.next_work(batch=2)
    unit.start(rest)
    assert unit.take_replicate_folds(rest.count) == [3]  # the folds in flight are not asked twice
    rest.asked = [Asked(12, {"fold": 3}, selected)]
    # fold 1 completes; fold 2 is cut off (interrupted); fold 3 completes
    _finish(unit, work, [dict(_row(unit, 10, replicate_of=selected), fold=1),
                         dict(_row(unit, 11, Status.INTERRUPTED, replicate_of=selected), fold=2)])
    _finish(unit, rest, [dict(_row(unit, 12, replicate_of=selected), fold=3)])
    assert unit.tally().replicates_done == 2 and unit.phase is Phase.REPLICATES
    again = unit.next_work(batch=2)
    unit.start(again)
    assert again.count == 1 and unit.take_replicate_folds(again.count) == [2]  # the fold cut off, again


def _kl_row(unit: UnitState, number: int, flip: float, kl: float, moved: int = 3, replicate_of: str | None = None,
            fold: int | None = None) -> dict:
    return dict(_row(unit, number, flip=flip, moved=moved, replicate_of=replicate_of), val_kl_other=kl, fold=fold)


def _pair(targets: Targets) -> tuple[UnitState, UnitState]:
    """An ActivScalar and a SteerVec unit at the same model, task and site, partners under search.matched."""
    from orchestrator.units import link_partners

    specs = [UnitSpec("tiny-gpt2", TaskSpec.make("ioi"), "mlp_out", "all", m, TrainSettings())
             for m in ("activscalar", "steervec")]
    a, s = (UnitState(PlannedUnit(f"u-00000000000{i}", spec), targets, described=True) for i, spec in enumerate(specs))
    link_partners([a, s], [("activscalar", "steervec")])
    assert a.partners == [s] and s.partners == [a]
    return a, s


def test_matched_trials_are_replicated_once_both_searches_are_over_and_counted_from_stored_rows():
    """ActivScalar's selected trial (t1: fewest cells above min_flip) is not its trial at the matched val kl_other
    (the budget is SteerVec's lowest, 0.3; within it ActivScalar's highest flip is t0): t0 is replicated like t1,
    by fold; SteerVec's matched trial is its selected one, so it replicates nothing more."""
    targets = Targets(n_trials=2, replicates=3, give_up_after=8, min_flip=0.5, replicate_folds=3)
    a, s = _pair(targets)
    a.count(_kl_row(a, 0, flip=0.9, kl=0.2, moved=9))
    a.count(_kl_row(a, 1, flip=0.8, kl=0.5, moved=2))
    s.count(_kl_row(s, 0, flip=0.95, kl=0.3))
    assert a.selected["trial_id"].endswith("t00001") and matched_of(a) == []  # the partner's search is not over
    s.count(_kl_row(s, 1, flip=0.6, kl=0.4))
    first = f"{a.unit_id}-t00000"
    assert matched_of(a) == [first] and matched_of(s) == []
    assert a.tally().matched_left == 2 and a.left().steps[Phase.REPLICATES].left == 4
    selected = a.selected["trial_id"]
    work = a.next_work(batch=8)
    assert work.replicate_of == selected and work.count == 2  # the selected trial first
    a.start(work)
    assert a.take_replicate_folds(work.count, work.replicate_of) == [1, 2]
    matched = a.next_work(batch=8)
    assert matched.replicate_of == first and matched.count == 2
    a.start(matched)
    assert a.take_replicate_folds(matched.count, first) == [1, 2] and a.next_work(batch=8) is None
    matched.asked = [Asked(20 + i, {"fold": f}, first) for i, f in enumerate([1, 2])]
    _finish(a, matched, [_kl_row(a, 20, 0.9, 0.2, replicate_of=first, fold=1)])  # fold 2 never came back
    again = a.next_work(batch=8)
    assert again.replicate_of == first and again.count == 1
    a.start(again)
    assert a.take_replicate_folds(again.count, first) == [2]  # the fold that did not come back, asked again
    work.asked = [Asked(10 + i, {"fold": f}, selected) for i, f in enumerate([1, 2])]
    _finish(a, work, [_kl_row(a, 10 + i, 0.8, 0.5, replicate_of=selected, fold=f) for i, f in enumerate([1, 2])])
    assert a.tally().replicates_done == 2 and a.tally().matched_left == 1 and a.next_work(batch=8) is None
    again.asked = [Asked(22, {"fold": 2}, first)]
    _finish(a, again, [_kl_row(a, 22, 0.9, 0.2, replicate_of=first, fold=2)])
    assert a.tally().matched_left == 0 and a.left().steps[Phase.REPLICATES].left == 0
    # a resumed coordinator counts the same from the stored rows alone
    b, t = _pair(targets)
    for unit, rows in ((b, [_kl_row(b, 0, 0.9, 0.2, moved=9), _kl_row(b, 1, 0.8, 0.5, moved=2),
                            _kl_row(b, 20, 0.9, 0.2, replicate_of=f"{b.unit_id}-t00000", fold=1)]),
                       (t, [_kl_row(t, 0, 0.95, 0.3), _kl_row(t, 1, 0.6, 0.4)])):
        for row in rows:
            unit.count(row)
    assert matched_of(b) == [f"{b.unit_id}-t00000"] and b.tally().matched_left == 1


def test_status_counts_the_matched_replicates_left_from_stored_rows_as_the_coordinator_does():
    """`actscale status` has no UnitState: orchestrator.units.stored_matched_left counts, from stored rows, what
    the coordinator's tally counts (the same rows as the test above); a unit at another site has no partner."""
    from orchestrator.units import StoredUnit, stored_matched_left

    targets = Targets(n_trials=2, replicates=3, give_up_after=8, min_flip=0.5, replicate_folds=3)
    a, s = _pair(targets)
    pairs = [("activscalar", "steervec")]

    def stored(done: dict[str, int]) -> dict[str, int]:
        units = {u.unit_id: StoredUnit(key, u.planned.spec.method, len(u.search_rows) >= 2,
                                       u.selected["trial_id"] if u.selected else None, u.search_rows)
                 for u, key in ((a, "here"), (s, "here"))}
        lone = StoredUnit("another site", "activscalar", True, "u-x-t00001",
                          [{"trial_id": "u-x-t00000", "val_kl_other": 0.2, "val_flip_rate": 0.9},
                           {"trial_id": "u-x-t00001", "val_kl_other": 0.5, "val_flip_rate": 0.8}])
        return stored_matched_left({**units, "u-x": lone}, pairs, targets.replicates, done)

    a.count(_kl_row(a, 0, flip=0.9, kl=0.2, moved=9))
    a.count(_kl_row(a, 1, flip=0.8, kl=0.5, moved=2))
    s.count(_kl_row(s, 0, flip=0.95, kl=0.3))
    assert stored({}) == {a.unit_id: 0, s.unit_id: 0, "u-x": 0}  # SteerVec's search is not over
    s.count(_kl_row(s, 1, flip=0.6, kl=0.4))
    first = f"{a.unit_id}-t00000"
    assert stored({}) == {a.unit_id: a.tally().matched_left, s.unit_id: s.tally().matched_left, "u-x": 0}
    assert stored({})[a.unit_id] == 2
    a.count(_kl_row(a, 20, 0.9, 0.2, replicate_of=first, fold=1))
    assert stored({first: 1})[a.unit_id] == a.tally().matched_left == 1


def test_the_matched_rule_takes_the_larger_lowest_kl_and_the_best_flip_within_it():
    from storage.matched import matched_trials

    a = [dict(trial_id="a0", val_kl_other=0.1, val_flip_rate=0.5), dict(trial_id="a1", val_kl_other=0.25,
                                                                         val_flip_rate=0.9),
         dict(trial_id="a2", val_kl_other=0.6, val_flip_rate=1.0), dict(trial_id="a3", val_kl_other=float("nan"),
                                                                        val_flip_rate=1.0)]
    s = [dict(trial_id="s0", val_kl_other=0.3, val_flip_rate=0.7), dict(trial_id="s1", val_kl_other=0.9,
                                                                        val_flip_rate=1.0)]
    assert matched_trials(a, s) == (0.3, "a1", "s0")
    assert matched_trials(s, a) == (0.3, "s0", "a1")
    tied = [dict(trial_id="b", val_kl_other=0.3, val_flip_rate=0.7), dict(trial_id="a", val_kl_other=0.3,
                                                                        val_flip_rate=0.7)]
    assert matched_trials(tied, s)[1] == "a"  # ties end on the trial id
    none = [dict(trial_id="x", val_kl_other=float("nan"), val_flip_rate=1.0)]
    assert matched_trials(none, s)[1:] == (None, None)
