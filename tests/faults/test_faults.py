"""Faults during sweeps and training, each recorded with its reason or recovered from."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.cli import main
from orchestrator.coordinator import Coordinator
from orchestrator.lock import RunLock
from storage import store as store_module
from storage.store import read_table
from tests.sweeps import check_run, parsed, tiny_config, write_config
from workers.errors import UsageError
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.slow
def test_disk_full_stops_cleanly_and_resumes(tmp_path, monkeypatch, capsys):
    sweep = write_config(tmp_path / "s.yaml", tiny_config(search={"n_trials": 6, "batch": 2}))
    run = tmp_path / "run"
    real_write = pq.write_table
    calls = {"n": 0}

    def full_after_some(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # the first parts fit, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(store_module.pq, "write_table", full_after_some)
    rc = main(["run", str(sweep), "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert not list(run.rglob(".tmp-*")), "a temporary file was left behind"
    assert not read_table(run, "trials").problems
    monkeypatch.setattr(store_module.pq, "write_table", real_write)  # room again
    assert main(["run", str(sweep), "--out", str(run), "--quiet"]) == 0
    check_run(run, n_trials=6, n_units=1)


def test_nan_trial_is_recorded_and_others_go_on(tiny_models):
    loaded = tiny_models["tiny-llama"]
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi"), "mlp_out", "all", "activscalar", TrainSettings(steps=5))
    outcomes = train_trials(loaded, prepare_unit(loaded, spec), [Hyper(lr=0.05), Hyper(lambda_faith=float("nan")), Hyper(lr=0.01)])
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "not finite" in outcomes[1].error


def test_out_of_memory_is_recorded(tiny_models, monkeypatch):
    from workers import scoring

    loaded = tiny_models["tiny-gpt2"]
    spec = UnitSpec("tiny-gpt2", TaskSpec.make("ioi"), "mlp_out", "all", "activscalar", TrainSettings(steps=2))
    unit = prepare_unit(loaded, spec)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(scoring, "last_token_logits", oom)  # every intervened forward (training and scoring)
    outcomes = train_trials(loaded, unit, [Hyper(), Hyper(lr=0.01)])
    assert all(not o.ok and o.error.startswith("out of memory") for o in outcomes)


@pytest.mark.slow
def test_torn_journal_line_is_repaired(tmp_path):
    config = parsed(tiny_config(search={"n_trials": 2, "batch": 1}))
    Coordinator(config, tmp_path, quiet=True).run()
    journal = tmp_path / "optuna.journal"
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code": 6, "worker_id": "x", "trial_id": 0, "sta')
    more = parsed(tiny_config(search={"n_trials": 4, "batch": 1}))
    Coordinator(more, tmp_path, quiet=True).run()
    check_run(tmp_path, n_trials=4, n_units=1)
    assert "removed a torn last line" in (tmp_path / "actscale.log").read_text()
    assert journal.read_bytes().endswith(b"\n")


def test_stale_lock_is_taken_over_and_live_lock_refused(tmp_path):
    import json
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / "coordinator.lock"
    lock_file.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    messages = []
    lock = RunLock(tmp_path)
    lock.acquire(say=messages.append)
    assert messages and "stale lock" in messages[0]
    lock.release()
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(UsageError, match=f"another coordinator \\(pid {os.getppid()}\\) is running"):
        RunLock(tmp_path).acquire(say=messages.append)
