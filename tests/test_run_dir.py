"""RunDir: the files of a run directory named in one place, the one check that a folder is a run,
the typed read of the stored sweep, and artefacts through safetensors' numpy API."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import yaml

from storage.errors import StorageError
from storage.run_dir import NotARunError, RunDir
from tests.sweeps import tiny_config


def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path):
    with pytest.raises(NotARunError, match=f"{tmp_path / 'nowhere'} is not an actscale run directory .it does not"):
        RunDir(tmp_path / "nowhere").check()
    with pytest.raises(NotARunError, match=f"{tmp_path} is not an actscale run directory .it holds no sweep.yaml"):
        RunDir(tmp_path).sweep()
    assert isinstance(NotARunError("x"), StorageError)  # shown by the CLI as one line


def test_the_stored_sweep_is_read_with_the_validators_defaults(tmp_path):
    run = RunDir(tmp_path)
    config = tiny_config()
    del config["search"]  # every search key left to its default
    run.store_sweep(yaml.safe_dump(config))
    sweep = run.check().sweep()
    assert sweep.search.n_trials == 8 and sweep.search.replicates == 1 and sweep.stop_after is None
    run.sweep_file.write_text(yaml.safe_dump(dict(config, search={"n_trials": 0})))
    with pytest.raises(Exception, match="search.n_trials"):
        run.sweep()


def test_run_id_is_written_once(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.run_id() is None
    first = run.start_run()
    assert first.startswith("run-") and run.start_run() == first == run.run_id()
    run.run_record.write_text("{not json")
    with pytest.raises(StorageError, match="run.json is unreadable"):
        run.start_run()


def test_artifacts_round_trip_without_torch(tmp_path):
    run = RunDir(tmp_path)
    tensors = {"alpha": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], "b": np.zeros(2, dtype=np.float32)}
    path = run.write_artifact("u-1-t00000", tensors)
    assert path == tmp_path / "artifacts" / "u-1-t00000.safetensors"
    back = run.read_artifact("u-1-t00000")
    assert set(back) == {"alpha", "b"} and np.array_equal(back["alpha"], tensors["alpha"])
    assert not list(run.artifacts.glob(".tmp-*"))
    with pytest.raises(StorageError, match="u-1-t00001 has no stored tensors"):
        run.read_artifact("u-1-t00001")


def test_a_run_dir_is_a_path(tmp_path):
    from pathlib import Path

    run = RunDir(tmp_path)
    assert Path(run) == tmp_path and RunDir(run) == run and str(run) == str(tmp_path)
    assert run.table("trials") == tmp_path / "tables" / "trials"


def test_artifact_io_does_not_import_torch(tmp_path):
    import subprocess

    code = (f"import sys, numpy as np; from storage.run_dir import RunDir; r = RunDir({str(tmp_path)!r}); "
            "r.write_artifact('t', {'a': np.ones(3, dtype=np.float32)}); r.read_artifact('t'); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
