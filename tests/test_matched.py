"""search.matched: each pair's trials at C1's matched val kl_other (storage/matched.py) are replicated like a unit's
selected trial, by a real sweep on an embedded Ray, exactly once across a resume."""
from __future__ import annotations

import pytest

from orchestrator.coordinator import Coordinator
from storage.matched import matched_trials
from storage.query import run_sql
from storage.store import read_table
from tests.sweeps import parsed, tiny_config
from workers.errors import UsageError

REPLICATES, FOLDS = 3, 3


@pytest.mark.slow
def test_a_sweep_replicates_each_pairs_matched_trials_and_a_resume_runs_none_twice(tmp_path, ray_session):
    # min_flip 1: every unit falls back to its highest val flip_rate, which is seldom its trial at the matched budget
    config = parsed(tiny_config(
        methods=["activscalar", "steervec"], selection={"min_flip": 1.0},
        search={"sampler": "random", "n_trials": 4, "batch": 4, "replicates": REPLICATES, "replicate_data": "folds",
                "matched": [["activscalar", "steervec"]]},
        train={"steps": 3, "batch_size": 8, "folds": FOLDS}))
    run = tmp_path / "run"
    Coordinator(config, run, quiet=True).run()
    rows = read_table(run, "trials").table.to_pylist()
    complete = [r for r in rows if r["status"] == "complete"]
    units = {r["method"]: r["unit_id"] for r in read_table(run, "units").table.to_pylist()}
    search = {u: [r for r in complete if r["unit_id"] == u and r["replicate_of"] is None and not r["pilot"]]
              for u in units.values()}
    selected = dict(zip(*run_sql([run], "SELECT unit_id, trial_id FROM selected")[0][["unit_id", "trial_id"]].T.values))
    _, matched_a, matched_s = matched_trials(search[units["activscalar"]], search[units["steervec"]])
    exercised = False
    for method, matched in (("activscalar", matched_a), ("steervec", matched_s)):
        unit = units[method]
        replicated = {selected[unit], matched}
        exercised |= matched != selected[unit]
        reps = [r for r in complete if r["unit_id"] == unit and r["replicate_of"] is not None]
        assert {r["replicate_of"] for r in reps} == replicated, (method, reps)
        for trial in replicated:  # R - 1 replicates each, one per fold 1..R-1, with the trial's hyper-parameters
            mine = [r for r in reps if r["replicate_of"] == trial]
            source = next(r for r in complete if r["trial_id"] == trial)
            assert sorted(r["fold"] for r in mine) == [1, 2], (method, trial, mine)
            assert all((r["lambda_faith"], r["lambda_min"], r["lr"]) ==
                       (source["lambda_faith"], source["lambda_min"], source["lr"]) for r in mine)
    assert exercised, "no unit's matched trial differed from its selected one: the test shows nothing"
    # the page's C1 finds the same trials at the budget, each with its replicates (reports/claims/c1.py)
    from reports import findings
    from reports.claims.c1 import budget_trials
    from reports.text import fmt

    page_run = findings.load_run(run, fmt)
    pair = page_run.selected.set_index("method")
    _, page_a, page_s = budget_trials(page_run, pair.loc["activscalar"], pair.loc["steervec"])
    assert (page_a, page_s) == (matched_a, matched_s)
    assert len(page_run.replicates(page_a)) == len(page_run.replicates(page_s)) == REPLICATES
    # `actscale status` counts nothing left, matched replicates included (orchestrator.units.stored_matched_left)
    from orchestrator.sweep_cmds import unit_status
    assert [(r["pending"], r["phase"]) for r in unit_status(run)] == [(0, "done")] * 2
    # a second run over the same directory finds every piece done: nothing is trained twice
    Coordinator(config, run, quiet=True).run()
    again = read_table(run, "trials").table.to_pylist()
    assert sorted(r["trial_id"] for r in again) == sorted(r["trial_id"] for r in rows)


def test_the_plan_counts_one_more_trials_replicates_per_pair_at_most():
    from orchestrator.costs import matched_partners
    from orchestrator.plan import plan_units

    config = parsed(tiny_config(
        tasks=[{"name": "ioi", "options": {"n": 20}}, {"name": "ccc", "methods": ["activscalar", "dynscalar"]}],
        methods=["activscalar", "steervec", "diffmeans", "dynscalar"],
        search={"matched": [["activscalar", "steervec"], ["activscalar", "diffmeans"]], "replicates": 2}))
    counted = {(u.spec.task.name, u.spec.method): matched_partners(config, u) for u in plan_units(config, lambda m: 2)}
    assert counted == {("ioi", "activscalar"): 2, ("ioi", "steervec"): 1, ("ioi", "diffmeans"): 1, ("ioi", "dynscalar"): 0,
                       ("ccc", "activscalar"): 0, ("ccc", "dynscalar"): 0}  # ccc runs neither partner


def test_a_pair_twice_or_without_replicates_is_refused_by_name():
    for search, message in (({"matched": [["activscalar", "steervec"], ["steervec", "activscalar"]], "replicates": 2},
                             "listed already"),
                            ({"matched": [["activscalar", "steervec"]]}, "set it to 2 or more"),
                            ({"matched": [["activscalar", "nope"]], "replicates": 2}, "two different methods")):
        with pytest.raises(UsageError, match=message):
            parsed(tiny_config(methods=["activscalar", "steervec"], search=search))
