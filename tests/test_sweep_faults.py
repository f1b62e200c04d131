"""Crashes during sweeps: coordinator SIGKILLed and resumed, a worker killed, a node removed."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from storage.store import read_table
from tests.procs import kill_session, session_processes, start_coordinator, wait_for
from tests.sweeps import check_run, tiny_config, write_config

# Waits and timeouts catch hangs only: sized for a 2-core machine with another CPU-heavy process on it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _complete_count(run_dir) -> int:
    try:
        rows = read_table(run_dir, "trials").table.column("status").to_pylist()
    except Exception:  # noqa: BLE001 - directory not there yet
        return 0
    return rows.count("complete")


def test_coordinator_sigkilled_and_resumed_five_times(tmp_path):
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(methods=["activscalar", "steervec"],
                                                            search={"n_trials": 8, "batch": 2, "replicates": 3},
                                                            train={"steps": 120, "batch_size": 8}))
    run = tmp_path / "run"
    rng = random.Random(1)
    log = run / "actscale.log"

    def workers_up() -> int:
        return log.read_text().count(" is up on ") if log.exists() else 0
    for attempt in range(5):
        before = workers_up()
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        if attempt % 2 == 0:  # any moment, start-up included
            time.sleep(rng.uniform(5, 12))
        else:  # once its worker is up, so that trials are in flight, however slow the machine
            assert wait_for(lambda: workers_up() > before, timeout=600)  # noqa: B023
            time.sleep(rng.uniform(0.5, 2.0))
        kill_session(proc)
        trials = read_table(run, "trials").table.column("trial_id").to_pylist() if (run / "tables").exists() else []
        assert len(trials) == len(set(trials)), "a trial id twice"
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=8, n_units=2, replicates=3)  # replicates, too, exactly once
    text = (run / "actscale.log").read_text()
    assert "taking over the stale lock" in text
    # trials cut off by the kills are interrupted, not failed, and the summary says so
    statuses = read_table(run, "trials").table.column("status").to_pylist()
    interrupted = statuses.count("interrupted")
    assert statuses.count("failed") == 0 and interrupted >= 1
    final = [line for line in (tmp_path / "out.log").read_text().splitlines() if line.startswith("results:")][-1]
    assert f"0 failed, {interrupted} interrupted and re-run" in final


def test_coordinator_sigkilled_while_analyzing_leaves_every_curve_exactly_once(tmp_path):
    """Kills land while the selected trials and replicates are analyzed: after the resume each of
    them has exactly one set of curves rows (a trial's rows go to one part file, or none)."""
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(
        methods=["activscalar", "dynscalar"], tasks=[{"name": "ioi", "options": {"n": 60}}],
        search={"n_trials": 2, "batch": 2, "replicates": 3}, analysis={"betas": [-1.0, 0.0, 0.5, 1.0, 2.0]}))
    run = tmp_path / "run"
    log = run / "actscale.log"
    rng = random.Random(7)
    for _ in range(3):
        seen = log.read_text().count("analyzing ") if log.exists() else 0
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        started = wait_for(lambda: log.exists() and log.read_text().count("analyzing ") > seen  # noqa: B023
                           or proc.poll() is not None, timeout=600)  # noqa: B023
        assert started
        time.sleep(rng.uniform(0.0, 1.5))
        kill_session(proc)
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=2, n_units=2, replicates=3)  # includes every curve exactly once
    assert "analyzed" in (tmp_path / "out.log").read_text()


def _replicate_count(run_dir) -> int:
    try:
        rows = read_table(run_dir, "trials").table.select(["status", "replicate_of"]).to_pylist()
    except Exception:  # noqa: BLE001 - directory not there yet
        return 0
    return sum(r["status"] == "complete" and r["replicate_of"] is not None for r in rows)


def _replicates_left_running(run_dir, copy) -> int:
    """Replicates (trials with a replicate_of attribute) that the run's Optuna journal holds as RUNNING: those a
    kill interrupted. Read from a copy of the journal (a torn last line cut off), so the run's own is untouched."""
    import shutil

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from orchestrator.journal import repair_journal
    from orchestrator.studies import REPLICATE_ATTR
    from storage.run_dir import RunDir

    source = RunDir(run_dir).journal
    if not source.exists():
        return 0
    copy.mkdir(exist_ok=True)
    target = RunDir(copy)
    shutil.copyfile(source, target.journal)
    repair_journal(target)
    storage = JournalStorage(JournalFileBackend(str(target.journal)))
    return sum(REPLICATE_ATTR in t.user_attrs for study in storage.get_all_studies()
               for t in storage.get_all_trials(storage.get_study_id_from_name(study.study_name), deepcopy=False,
                                              states=(TrialState.RUNNING,)))


def test_fold_replicates_exactly_once_after_sigkills_while_replicating(tmp_path):
    """train.folds: 4, replicate_data: folds, replicates: 4, one trial at a time: kills land while the fold
    replicates train; after the resume each fold 1..3 has exactly one replicate and the selected trial and its
    replicates test every prompt some fold tests exactly once (tests/sweeps.py check_folds)."""
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(
        tasks=[{"name": "ioi", "options": {"n": 20}}], analysis={"enabled": False},
        search={"n_trials": 2, "batch": 1, "replicates": 4, "replicate_data": "folds"},
        train={"steps": 60, "batch_size": 8, "folds": 4, "filter": "none"}))
    run = tmp_path / "run"
    rng = random.Random(3)
    for attempt in range(3):
        before = _replicate_count(run)
        command = ["run", str(cfg), "--out", str(run), "--quiet"]
        proc = start_coordinator(command, tmp_path / "out.log")
        # a replicate finished (so the next is in flight), or, the first time, the search's end is near
        assert wait_for(lambda: _replicate_count(run) > before or _complete_count(run) >= 2  # noqa: B023
                        and attempt == 0 or proc.poll() is not None, timeout=900)  # noqa: B023
        time.sleep(rng.uniform(0.2, 1.5))
        kill_session(proc)
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=2, n_units=1, replicates=4)  # with check_folds: each fold's replicate exactly once
    rows = read_table(run, "trials").table.to_pylist()
    assert not [r for r in rows if r["status"] == "failed"]
    assert all(r["fold"] is not None for r in rows if r["replicate_of"] is not None)  # interrupted ones too
    interrupted = [r for r in rows if r["status"] == "interrupted" and r["replicate_of"] is not None]
    assert interrupted, "no kill landed on a replicate"  # ... and each was re-run on its fold (check_folds)


def test_coordinator_sigkilled_during_convergence_pilots_leaves_each_pilot_and_check_once(tmp_path):
    """Kills land while the units' convergence pilots and then their trials train: after the resume each unit
    has exactly one complete pilot with one checks row per check, told to Optuna as failed, and its trials
    trained for the pilot's steps (tests/sweeps.py check_pilots)."""
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(
        methods=["activscalar", "steervec"], search={"n_trials": 4, "batch": 2, "replicates": 2},
        train={"batch_size": 8, "converge": {"window": 20, "tol": 0.002, "every": 5, "max_steps": 150}},
        analysis={"enabled": False}))
    run = tmp_path / "run"
    log = run / "actscale.log"
    rng = random.Random(3)
    for attempt in range(3):
        before = (log.read_text().count(" is up on ") if log.exists() else 0)
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        assert wait_for(lambda: log.exists() and log.read_text().count(" is up on ") > before  # noqa: B023
                        or proc.poll() is not None, timeout=600)  # noqa: B023
        time.sleep(rng.uniform(*((0.2, 1.0), (1.0, 3.0), (3.0, 8.0))[attempt]))  # pilots first, then trials
        kill_session(proc)
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=4, n_units=2, replicates=2)
    rows = read_table(run, "trials").table.to_pylist()
    assert sum(bool(r["pilot"]) and r["status"] == "complete" for r in rows) == 2
    assert any(r["status"] == "interrupted" for r in rows)  # the kills cut work off


def test_worker_process_killed_mid_trial(tmp_path):
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(search={"n_trials": 6, "batch": 2},
                                                            train={"steps": 150, "batch_size": 8}))
    run = tmp_path / "run"
    proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")

    def worker():
        return next((pid for pid, comm in session_processes(proc.pid).items() if comm.startswith("ray::WorkerActo")), None)
    assert wait_for(lambda: worker() is not None and (run / "tables" / "units").exists()
                    and any((run / "tables" / "units").glob("part-*")), timeout=600)
    time.sleep(1.0)  # the first batch of trials is training now
    os.kill(worker(), signal.SIGKILL)
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=6, n_units=1)
    assert "died" in (run / "actscale.log").read_text()
    statuses = read_table(run, "trials").table.column("status").to_pylist()
    assert statuses.count("failed") == 0 and statuses.count("interrupted") >= 1  # the batch in flight


def test_multi_node_cluster_survives_losing_a_worker_node(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cfg = write_config(tmp_path / "sweep.yaml", tiny_config(search={"n_trials": 10, "batch": 1},
                                                                train={"steps": 60, "batch_size": 8},
                                                                resources={"workers_per_model": 2}))
        run = tmp_path / "run"
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet", "--address", cluster.address],
                                 tmp_path / "out.log")
        assert wait_for(lambda: _complete_count(run) >= 2, timeout=600), (tmp_path / "out.log").read_text()[-3000:]
        cluster.remove_node(nodes[0])
        assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
        check_run(run, n_trials=10, n_units=1)
        nodes_seen = set(read_table(run, "trials").table.column("worker_node").to_pylist())
        assert nodes_seen  # trials ran on the cluster's worker nodes
    finally:
        cluster.shutdown()


def test_matched_trials_replicated_exactly_once_after_sigkills_while_replicating(tmp_path):
    """search.matched with fold replicates, one trial at a time: kills land while the replicates of the selected
    and of the matched trials train; after the resume each trial a unit replicates (its selected one and its trial
    at the pair's matched val kl_other, storage/matched.py) has exactly one replicate on each fold 1..R-1."""
    from storage.matched import matched_trials
    from storage.query import run_sql

    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(
        tasks=[{"name": "ioi", "options": {"n": 20}}], analysis={"enabled": False}, methods=["activscalar", "steervec"],
        selection={"min_flip": 1.0},  # every unit falls back to its highest val flip, seldom its matched trial
        search={"n_trials": 3, "batch": 1, "replicates": 3, "replicate_data": "folds",
                "matched": [["activscalar", "steervec"]]},
        train={"steps": 150, "batch_size": 8, "folds": 3, "filter": "none"}))
    run = tmp_path / "run"
    rng = random.Random(5)
    landed = 0  # replicates a kill left running in the journal (the resume records them interrupted)
    for attempt in range(8):  # at least 3 kills, more until one lands on a replicate (a timing, not a given)
        if attempt >= 3 and landed:
            break
        before = _replicate_count(run)
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        assert wait_for(lambda: _replicate_count(run) > before or _complete_count(run) >= 6  # noqa: B023
                        and attempt == 0 or proc.poll() is not None, timeout=900)  # noqa: B023
        time.sleep(rng.uniform(0.2, 1.5))
        finished = proc.poll() is not None
        kill_session(proc)
        landed += _replicates_left_running(run, tmp_path / "journal-copy")
        if finished:
            break
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    rows = read_table(run, "trials").table.to_pylist()
    complete = [r for r in rows if r["status"] == "complete"]
    assert len({r["trial_id"] for r in rows}) == len(rows) and not [r for r in rows if r["status"] == "failed"]
    units = {r["method"]: r["unit_id"] for r in read_table(run, "units").table.to_pylist()}
    search = {u: [r for r in complete if r["unit_id"] == u and r["replicate_of"] is None] for u in units.values()}
    selected = dict(run_sql([run], "SELECT unit_id, trial_id FROM selected")[0][["unit_id", "trial_id"]].values)
    _, matched_a, matched_s = matched_trials(search[units["activscalar"]], search[units["steervec"]])
    assert matched_a != selected[units["activscalar"]] or matched_s != selected[units["steervec"]], "nothing matched"
    for unit, matched in ((units["activscalar"], matched_a), (units["steervec"], matched_s)):
        for trial in {selected[unit], matched}:
            folds = sorted(r["fold"] for r in complete if r["replicate_of"] == trial)
            assert folds == [1, 2], (unit, trial, folds)  # each fold's replicate exactly once
        assert {r["replicate_of"] for r in complete if r["unit_id"] == unit and r["replicate_of"]} == \
            {selected[unit], matched}
    assert [r for r in rows if r["status"] == "interrupted" and r["replicate_of"] is not None], \
        "no kill landed on a replicate"
