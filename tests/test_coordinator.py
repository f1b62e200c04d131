"""Sweeps with a real local Ray, real Optuna journal storage and tiny models."""
from __future__ import annotations

import pytest

from orchestrator.coordinator import Coordinator
from orchestrator.sweep_cmds import unit_status
from storage.query import load
from tests.sweeps import check_run, parsed, tiny_config


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
    assert len(list((tmp_path / "artifacts").glob("*.safetensors"))) == 16  # SteerVec vectors
    assert all(r["pending"] == 0 and r["done"] == 4 for r in unit_status(tmp_path))


def test_one_model_one_worker_loads_the_model_once(tmp_path):
    config = parsed(tiny_config(search={"n_trials": 12, "batch": 3}))
    summary = Coordinator(config, tmp_path, quiet=True).run()
    assert summary.completed == 12
    assert summary.model_loads == 1


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
