"""Helpers for sweep tests: small tiny-model configs and checks of a run's consistency."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search_spaces.config import parse_config
from storage.query import run_sql
from storage.run_dir import RunDir
from storage.store import read_table
from workers.analysis import k_grid


def tiny_config(**overrides) -> dict:
    config = {
        "name": "t",
        "models": ["tiny-gpt2"],
        "tasks": [{"name": "ioi", "options": {"n": 20}}],
        "sites": ["mlp_out"],
        "layers": "all",
        "methods": ["activscalar"],
        "search": {"sampler": "random", "n_trials": 4, "batch": 2},
        "train": {"steps": 3, "batch_size": 8},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def parsed(config: dict):
    return parse_config(config)


def check_run(run_dir: Path, n_trials: int, n_units: int, replicates: int = 1) -> dict:
    """Every unit has exactly n_trials finished (completed or pruned) search trials and replicates - 1
    completed replicates of its selected trial, no trial id twice, Parquet == Optuna."""
    trials = read_table(run_dir, "trials")
    assert not trials.problems, trials.problems
    rows = trials.table.to_pylist()
    ids = Counter(r["trial_id"] for r in rows)
    assert not [i for i, c in ids.items() if c > 1], "a trial id appears twice"
    pilots = [r for r in rows if r["pilot"]]
    rows = [r for r in rows if not r["pilot"]]  # the convergence pilots: check_pilots
    rows = [r for r in rows if r.get("control_of") is None]  # retrained mask controls: tests/test_controls.py
    complete = [r for r in rows if r["status"] == "complete"]
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert all(r["replicate_of"] is None for r in pruned), "a replicate was pruned"
    per_unit = Counter(r["unit_id"] for r in complete + pruned if r["replicate_of"] is None)
    assert len(per_unit) == n_units and set(per_unit.values()) == {n_trials}, per_unit
    selected, _ = run_sql([run_dir], "SELECT unit_id, trial_id FROM selected")
    for unit_id, selected_id in zip(selected.unit_id, selected.trial_id):
        reps = [r for r in complete if r["unit_id"] == unit_id and r["replicate_of"] is not None]
        assert len(reps) == replicates - 1 and {r["replicate_of"] for r in reps} <= {selected_id}, (unit_id, reps)
        chosen = next(r for r in complete if r["trial_id"] == selected_id)
        for r in reps:  # the selected hyper-parameters, another trial seed
            assert (r["lambda_faith"], r["lambda_min"], r["lr"]) == (chosen["lambda_faith"], chosen["lambda_min"],
                                                                     chosen["lr"])
            assert r["seed"] != chosen["seed"]
    storage = JournalStorage(JournalFileBackend(str(RunDir(run_dir).journal)))
    by_id = {r["trial_id"]: r for r in complete}
    for unit_id in per_unit:
        study = optuna.load_study(study_name=unit_id, storage=storage)
        done = study.get_trials(states=(TrialState.COMPLETE,))
        n_pruned = sum(r["unit_id"] == unit_id for r in pruned)
        assert len(done) == n_trials - n_pruned + replicates - 1, (unit_id, len(done))
        assert len(study.get_trials(states=(TrialState.PRUNED,))) == n_pruned, unit_id
        assert not study.get_trials(states=(TrialState.RUNNING,))
        for t in done:
            row = by_id[f"{unit_id}-t{t.number:05d}"]
            assert t.values[0] == row["val_flip_rate"] and t.values[1] == row["val_kl_other"]
            assert abs(t.values[2] - row["val_l1"]) < 1e-9
            assert t.params["lr"] == row["lr"]
    check_curves(run_dir, selected.trial_id.tolist(), complete)
    check_folds(run_dir, dict(zip(selected.unit_id, selected.trial_id)), complete, replicates)
    check_pilots(run_dir, pilots, complete + pruned)
    return per_unit


def check_folds(run_dir: Path, selected: dict[str, str], complete: list[dict], replicates: int) -> None:
    """With cross-fitted folds: each complete trial's test predictions are exactly its fold's test prompts; fold
    replicates of a selected trial take folds 1..R-1 mod K once each, so with R = K the selected trial and its
    replicates test every prompt some fold tests exactly once (hence every testable entity once)."""
    units = {r["unit_id"]: r for r in read_table(run_dir, "units").table.to_pylist()}
    examples = read_table(run_dir, "examples").table.to_pylist()
    predictions = read_table(run_dir, "predictions").table.to_pylist()
    tested: dict[str, list[int]] = {}
    for p in predictions:
        tested.setdefault(p["trial_id"], []).append(p["index"])
    for unit_id, unit in units.items():
        k = unit["n_folds"] or 1
        mine = [r for r in complete if r["unit_id"] == unit_id]
        if k == 1:
            assert all(r["fold"] is None for r in mine), unit_id
            continue
        by_fold: dict[int, list[int]] = {}
        for e in examples:
            if e["unit_id"] == unit_id and e["test_fold"] is not None:
                by_fold.setdefault(e["test_fold"], []).append(e["index"])
        for r in mine:
            assert sorted(tested[r["trial_id"]]) == sorted(by_fold[r["fold"]]), (r["trial_id"], r["fold"])
            assert r["n_test"] == len(by_fold[r["fold"]]) and r["n_test_clusters"] >= 1
        reps = [r for r in mine if r["replicate_of"] == selected.get(unit_id)]
        if not reps or reps[0]["replicate_kind"] != "fold":
            continue
        assert all(r["replicate_kind"] == "fold" for r in reps)
        assert sorted(r["fold"] for r in reps) == sorted(i % k for i in range(1, replicates)), unit_id
        if replicates == k:
            pooled = [i for r in reps + [next(r for r in mine if r["trial_id"] == selected[unit_id])]
                      for i in tested[r["trial_id"]]]
            assert sorted(pooled) == sorted(i for rows in by_fold.values() for i in rows), "not every prompt once"


def check_pilots(run_dir: Path, pilots: list[dict], trials: list[dict]) -> None:
    """With train.converge, each unit has exactly one complete pilot, told to Optuna as failed (never a search
    draw), with one checks row per check; its unit's trials trained for its steps. Without, no pilot at all."""
    converge = RunDir(run_dir).sweep().train.converge
    complete = {r["unit_id"]: r for r in pilots if r["status"] == "complete"}
    if converge is None:
        assert not pilots
        return
    assert len(complete) == sum(r["status"] == "complete" for r in pilots), "a unit has two complete pilots"
    assert set(complete) == {r["unit_id"] for r in trials}, "a unit without its pilot"
    checks = read_table(run_dir, "checks").table.to_pylist()
    storage = JournalStorage(JournalFileBackend(str(RunDir(run_dir).journal)))
    for unit_id, pilot in complete.items():
        mine = [c["step"] for c in checks if c["trial_id"] == pilot["trial_id"]]
        expected = list(range(0, pilot["steps_done"] + 1, converge.every))
        assert sorted(mine) == expected, (pilot["trial_id"], mine, expected)  # each check exactly once
        assert pilot["stop_reason"].startswith(("converged at step", "not converged"))
        assert {r["steps"] for r in trials if r["unit_id"] == unit_id} == {pilot["steps_done"]}
        study = optuna.load_study(study_name=unit_id, storage=storage)
        told = study.trials[pilot["trial_number"]]
        assert told.user_attrs.get("pilot") and told.state is TrialState.FAIL


def check_curves(run_dir: Path, selected_ids: list[str], complete: list[dict]) -> None:
    """With analysis on (the default), the selected trial and every replicate of it have exactly one
    full set of curves rows, and no other trial has any."""
    run = RunDir(run_dir)
    analysis = run.sweep().analysis  # the stored sweep with the schema's defaults
    rows = read_table(run_dir, "curves").table.to_pylist()
    betas = analysis.betas
    if not analysis.enabled or not (analysis.curves or betas):
        assert not rows
        return
    wanted = set(selected_ids) | {r["trial_id"] for r in complete if r["replicate_of"] in set(selected_ids)}
    # a method without artifact_tensors stores nothing to rebuild its trials from: never analyzed
    wanted = {tid for tid in wanted if run.artifact(tid).exists()}
    analyzed = {r["trial_id"] for r in rows}
    # a trial selected before the search was extended keeps its rows; every other one is a complete trial
    assert wanted <= analyzed and analyzed - wanted <= {r["trial_id"] for r in complete}, (wanted, analyzed)
    keys = Counter((r["trial_id"], r["kind"], r["split"], r["k"], r["beta"]) for r in rows)
    assert all(count == 1 for count in keys.values()), "a curves row twice"
    for tid in wanted:
        mine = [r for r in rows if r["trial_id"] == tid]
        n_cells = mine[0]["n_cells"]
        grid = set(k_grid(n_cells, analysis.k_step)) if analysis.curves else set()
        on_grid = [r for r in mine if r["kind"] == "strength" or r["k"] in grid]
        per_split = 2 * len(grid) + len(betas)  # test: every point; val: the sufficiency curve, or all (val_all)
        assert len(on_grid) == per_split + (per_split if analysis.val_all else len(grid)), (tid, len(on_grid))
        assert analysis.val_all or all(r["kind"] == "sufficiency" for r in mine if r["split"] == "val")
        # k90's narrowing (analysis.k90_within): val sufficiency points off the grid, and the k90 found scored
        # both ways on test (and as necessity on val with val_all)
        off = [r for r in mine if r not in on_grid]
        assert not off or (analysis.curves and analysis.k90_within), off
        k90s = {r["k"] for r in off if not (r["kind"] == "sufficiency" and r["split"] == "val")}
        assert len(k90s) <= 1, k90s
        assert all(r["kind"] == "sufficiency" and r["split"] == "val" or r["k"] in k90s for r in off), off


def check_rungs(run_dir: Path, min_steps: int, eta: int) -> None:
    """ASHA's checks: each finished search trial has one 'rung' check at each rung it reached (below its
    steps), a pruned one stopped exactly at its last rung and says why, replicates have none."""
    from workers.asha import rung_steps

    trials = [r for r in read_table(run_dir, "trials").table.to_pylist() if r["status"] in ("complete", "pruned")]
    checks = [c for c in read_table(run_dir, "checks").table.to_pylist() if c["kind"] == "rung"]
    keys = Counter((c["trial_id"], c["step"]) for c in checks)
    assert all(n == 1 for n in keys.values()), "a rung check twice"
    steps_of: dict[str, list[int]] = {}
    for c in checks:
        steps_of.setdefault(c["trial_id"], []).append(c["step"])
    for r in trials:
        mine = sorted(steps_of.get(r["trial_id"], []))
        if r["replicate_of"] is not None:
            assert not mine, ("a replicate was judged at a rung", r["trial_id"])
            continue
        assert mine == [s for s in rung_steps(min_steps, eta, r["steps"]) if s <= r["steps_done"]], (r, mine)
        if r["status"] == "pruned":
            assert mine and r["steps_done"] == mine[-1], r
            assert r["stop_reason"].startswith(f"pruned by asha at rung {mine[-1]}"), r["stop_reason"]
