"""Sweeps with a real local Ray, real Optuna journal storage and tiny models."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.coordinator import Coordinator
from orchestrator.sweep_cmds import unit_status
from storage.query import load
from storage.schema import SCHEMAS
from storage.store import part_files
from tests.sweeps import check_run, parsed, tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.slow
def test_sweep_2_models_2_tasks_2_methods(tmp_path):
    config = parsed(tiny_config(models=["tiny-gpt2", "tiny-llama"],
                                tasks=[{"name": "ioi", "options": {"n": 20}}, {"name": "city_country"}],
                                methods=["activscalar", "steervec"],
                                resources={"workers_per_model": 1, "models_at_once": 2}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 32
    check_run(tmp_path, n_trials=4, n_units=8)
    assert len(load(tmp_path, "units")) == 8
    scalars = load(tmp_path, "scalars")
    assert set(scalars.method) == {"activscalar", "steervec"} and scalars.rel_depth.between(0, 1).all()
    trial_ids = set(load(tmp_path, "trials").query("status == 'complete'").trial_id)
    assert {f.stem for f in (tmp_path / "artifacts").glob("*.safetensors")} == trial_ids  # every trial rebuildable
    assert all(r["pending"] == 0 and r["done"] == 4 for r in unit_status(tmp_path))
    assert all(len(part_files(tmp_path, table)) == 1 for table in SCHEMAS if table not in ("checks", "patching"))  # compacted (this sweep writes no checks or patching rows)


def test_one_model_one_worker_loads_the_model_once(tmp_path):
    config = parsed(tiny_config(search={"n_trials": 12, "batch": 3}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 12
    assert summary.model_loads == 1
    from storage.run_dir import RunDir

    seconds = RunDir(tmp_path).phase_seconds()  # worker time per phase, kept in the run directory
    assert set(seconds) >= {"describe", "search", "analyse"} and all(s > 0 for s in seconds.values()), seconds
    Coordinator(config, tmp_path, quiet=True).run()  # a resume with nothing to do adds nothing
    assert RunDir(tmp_path).phase_seconds() == seconds


@pytest.mark.slow
def test_extending_runs_only_the_new_work(tmp_path):
    first = parsed(tiny_config(layers=[[0]], search={"n_trials": 2}))
    Coordinator(first, tmp_path, quiet=True).run()
    before = set(load(tmp_path, "trials").trial_id)
    assert len(before) == 2
    again = Coordinator(first, tmp_path, quiet=True).run()  # same command: nothing to do
    assert again.model_loads == 0 and set(load(tmp_path, "trials").trial_id) == before
    extended = parsed(tiny_config(layers=[[0], [1]], search={"n_trials": 3}))
    Coordinator(extended, tmp_path, quiet=True).run()
    trials = load(tmp_path, "trials")
    assert before <= set(trials.trial_id)
    assert len(trials) == 2 + 1 + 3  # one more for layer 0, three for the new layer-1 unit
    check_run(tmp_path, n_trials=3, n_units=2)


@pytest.mark.slow
def test_changed_task_file_is_refused(tmp_path):
    import json

    from workers.errors import UsageError
    task = tmp_path / "task.jsonl"
    rows = [{"prompt": f"When Mary and John went to the store, John gave a {o} to", "answer_a": " Mary",
             "answer_b": " John", "template": "t"} for o in ["drink", "book", "ball", "ring", "bag", "key", "gift", "cake"] * 4]
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = parsed(tiny_config(tasks=[str(task)], search={"n_trials": 1}, train={"filter": "none"}))
    run = tmp_path / "run"
    Coordinator(config, run, quiet=True).run()
    task.write_text("\n".join(json.dumps(dict(r, answer_a=" Tom")) for r in rows) + "\n")
    stored = sorted(p.read_bytes() for p in run.rglob("*.parquet"))
    with pytest.raises(UsageError, match="changed since unit"):
        Coordinator(config, run, quiet=True).run()
    assert stored == sorted(p.read_bytes() for p in run.rglob("*.parquet"))


@pytest.mark.slow
def test_replicates_retrain_the_selected_trial_with_other_seeds(tmp_path):
    config = parsed(tiny_config(methods=["activscalar", "steervec"], selection={"min_flip": 0.5},
                                search={"n_trials": 4, "batch": 2, "replicates": 3, "replicate_data": True}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 2 * (4 + 2) and summary.failed == 0 and summary.interrupted == 0
    check_run(tmp_path, n_trials=4, n_units=2, replicates=3)
    trials = load(tmp_path, "trials")
    reps = trials[trials.replicate_of.notna()]
    assert reps.resample_train.all() and not trials[trials.replicate_of.isna()].resample_train.any()
    assert (reps.replicate_kind == "bootstrap").all() and trials.fold.isna().all()  # `true` reads as bootstrap
    assert {s["selected_by"] for s in summary.selected} <= {"min_flip", "fallback"}
    again = Coordinator(config, tmp_path, quiet=True).run()  # nothing left: no replicate runs twice
    assert again.model_loads == 0 and len(load(tmp_path, "trials")) == len(trials)
    rows = unit_status(tmp_path)
    assert all(r["replicates"] == 2 and r["pending"] == 0 for r in rows)
    assert all(r["seed_jaccard"] is None or 0 <= r["seed_jaccard"] <= 1 for r in rows)


@pytest.mark.slow
def test_fold_replicates_test_every_entity_once_with_the_selected_configuration(tmp_path):
    """train.folds: 3 and replicate_data: folds, replicates: 3: the search runs on fold 0, replicate r on fold r,
    so the selected trial and its replicates test every entity exactly once (tests/sweeps.py check_folds)."""
    config = parsed(tiny_config(tasks=[{"name": "ioi", "options": {"n": 20}}], selection={"min_flip": 0.5},
                                search={"n_trials": 2, "batch": 2, "replicates": 3, "replicate_data": "folds"},
                                train={"folds": 3, "filter": "none", "patience": 2, "check_every": 1}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.failed == 0 and summary.interrupted == 0
    check_run(tmp_path, n_trials=2, n_units=1, replicates=3)
    trials = load(tmp_path, "trials")
    search, reps = trials[trials.replicate_of.isna()], trials[trials.replicate_of.notna()]
    assert (search.fold == 0).all() and search.replicate_kind.isna().all()
    assert sorted(reps.fold) == [1, 2] and (reps.replicate_kind == "fold").all() and not reps.resample_train.any()
    units = load(tmp_path, "units")
    assert units.n_folds.tolist() == [3] and "fold2_test" in units.counts[0]
    examples = load(tmp_path, "examples")
    assert sorted(examples.test_fold.dropna().unique()) == [0, 1, 2]
    tested = examples[examples.test_fold.notna()]
    assert tested.groupby(tested.entities.map(tuple)).test_fold.nunique().eq(1).all()  # an entity: one fold
    curves = load(tmp_path, "curves")
    n_test = trials.set_index("trial_id").n_test
    for tid, rows in curves[curves.split == "test"].groupby("trial_id"):  # each analysed on its own fold's test
        assert (rows.n_prompts == n_test[tid]).all(), tid
    # the findings' reading: each trial's test prompts joined to their examples by pool index, clustered by
    # predictions.cluster, and each fold a prompt set of its own in the two-level bootstrap
    from reports.run import load_run
    run = load_run(tmp_path)
    (seeds,) = run.selected.seeds
    assert len(seeds) == 3
    for tid in seeds:
        frame = run.prompts(tid)
        assert len(frame) == n_test[tid] and not frame.index.str.contains("#").any()  # every prompt found
        assert frame.cluster.nunique() == trials.set_index("trial_id").n_test_clusters[tid]
    arm, clusters = run.arm("selected", seeds)
    assert len(set(arm.prompt_sets)) == 3 and len(clusters) == 3


@pytest.mark.slow
def test_status_shows_the_selected_trials_values_never_a_test_maximum(tmp_path, capsys):
    from orchestrator.cli import main
    from storage.query import run_sql

    config = parsed(tiny_config(search={"n_trials": 6, "batch": 3}))
    Coordinator(config, tmp_path, quiet=True).run()
    (row,) = unit_status(tmp_path)
    chosen, _ = run_sql([tmp_path], "SELECT * FROM selected")
    trials = load(tmp_path, "trials")
    assert row["selected_trial"] == chosen.trial_id[0]
    assert row["test_flip_rate"] == trials.set_index("trial_id").test_flip_rate[row["selected_trial"]]
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{row['test_flip_rate']:.3f}" in out and "chosen on val only" in out


def _break_trial_batches():
    """Ray worker setup hook: every trial batch raises, as a bug in the worker would."""
    import workers.actor

    def broken(*args, **kwargs):
        raise RuntimeError("injected worker error")
    workers.actor.train_trials = broken


@pytest.mark.slow
def test_a_worker_error_writes_failed_rows_that_status_sees(tmp_path, own_ray):
    import ray

    from orchestrator.coordinator import ray_init_kwargs
    config = parsed(tiny_config(search={"n_trials": 2, "batch": 1}))
    root = str(Path(__file__).resolve().parents[1])  # so that workers can import this hook
    ray.init(**ray_init_kwargs(None), runtime_env={"worker_process_setup_hook": _break_trial_batches,
                                                   "env_vars": {"PYTHONPATH": root}})
    try:
        summary = Coordinator(config, tmp_path, quiet=True).run()
    finally:
        ray.shutdown()
    trials = load(tmp_path, "trials")
    assert len(trials) == summary.failed == 4 and (trials.status == "failed").all()  # gave up after 2 x n_trials
    assert trials.error.str.contains("RuntimeError: injected worker error").all()
    (row,) = unit_status(tmp_path)
    assert row["failed"] == 4 and row["interrupted"] == 0 and row["selected_trial"] is None


@pytest.mark.slow
def test_a_long_wait_is_logged_with_what_it_waits_for(tmp_path, monkeypatch):
    from orchestrator import controller

    monkeypatch.setattr(controller, "STILL_WAITING_S", 0.3)
    # the loop looks for a result once a second: the batch must outlast that (150 steps took under 1 s in a CI run)
    config = parsed(tiny_config(search={"n_trials": 2, "batch": 2}, train={"steps": 1500, "batch_size": 8}))
    Coordinator(config, tmp_path, quiet=True).run()
    log = (tmp_path / "actscale.log").read_text()
    assert re.search(r"still waiting \(\d+s without a result\) for: trial\(s\) 0, 1 of unit u-[0-9a-f]{12} on a "
                     r"tiny-gpt2 worker \(\d+s\)", log), log[-2000:]


@pytest.mark.slow
def test_a_test_that_times_out_reports_the_waiting_sweep_step(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile("""
        import sys
        import time
        import types

        coordinator = sys.modules["orchestrator.coordinator"] = types.ModuleType("orchestrator.coordinator")
        coordinator.RUNNING = []

        class Stuck:  # stands for a Coordinator stuck in its dispatch loop
            run_dir = "RUN"
            def waiting_for(self):
                return "trial(s) 3 of unit u-000000000000 on a tiny-gpt2 worker (9s)"

        def test_hangs():
            coordinator.RUNNING.append(Stuck())
            time.sleep(30)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--timeout=2")
    result.stdout.fnmatch_lines(["*sweep step that was waiting*",
                                 "*coordinator of RUN is waiting for: trial(s) 3 of unit u-000000000000*"])


@pytest.mark.slow
def test_grid_sampler_runs_the_whole_grid_and_then_replicates(tmp_path):
    config = parsed(tiny_config(search={"sampler": "grid", "grid_points": 2, "n_trials": 8, "batch": 4,
                                        "replicates": 2}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 9
    check_run(tmp_path, n_trials=8, n_units=1, replicates=2)
    search = load(tmp_path, "trials").query("replicate_of.isna()")
    assert len(search[["lambda_faith", "lambda_min", "lr"]].drop_duplicates()) == 8  # every grid point once


@pytest.mark.slow
def test_analyze_adds_curves_to_a_run_made_without_them(tmp_path):
    """`actscale analyze RUN_DIR` on a finished run with analysis off: curves for each unit's selected
    trial and its replicates, exactly once; a second analyze adds nothing."""
    from orchestrator.cli import main

    config = parsed(tiny_config(methods=["activscalar", "steervec"], search={"n_trials": 2, "batch": 2, "replicates": 2},
                                analysis={"enabled": False}))
    Coordinator(config, tmp_path, quiet=True).run()
    check_run(tmp_path, n_trials=2, n_units=2, replicates=2)  # no curves while the analysis is off
    assert main(["analyze", str(tmp_path), "--betas", "0", "1", "--quiet"]) == 0
    check_run(tmp_path, n_trials=2, n_units=2, replicates=2)  # now every curve exactly once
    curves = load(tmp_path, "curves")
    assert sorted(curves.beta.dropna().unique()) == [0.0, 1.0]
    assert main(["analyze", str(tmp_path), "--quiet"]) == 0
    assert len(load(tmp_path, "curves")) == len(curves)
