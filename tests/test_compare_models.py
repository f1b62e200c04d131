"""`Runs.compare_models()`: the models side by side per task, site, method, role and relative depth;
a model near chance on a task is left out of the comparison unless asked for, and listed."""
from __future__ import annotations

import pytest

from storage import open_runs
from storage.query import COMPARE_SQL, run_sql
from storage.store import RunStore, part_files, read_table
from tests.sample_run import make_sample_run


def _with_competence(run_dir, accuracy: dict[str, float]) -> None:
    """Give each model of the sample run a base accuracy (and near_chance as the worker sets it)."""
    rows = read_table(run_dir, "units").table.to_pylist()
    for path in part_files(run_dir, "units"):
        path.unlink()
    for row in rows:
        row["base_accuracy"] = accuracy[row["model"]]
        row["near_chance"] = accuracy[row["model"]] < 0.6
    RunStore(run_dir).write_now("units", rows)


def test_models_side_by_side_by_relative_depth_and_role(tmp_path):
    run = make_sample_run(tmp_path / "run")
    _with_competence(run, {"tiny-gpt2": 0.9, "tiny-llama": 0.95})
    wide = open_runs(run).compare_models()
    assert list(wide.columns.names) == [None, "model"] and set(wide.columns.get_level_values("model")) == {
        "tiny-gpt2", "tiny-llama"}
    effect = wide["effect"]
    rel = effect.index.get_level_values("rel_depth")
    assert rel.min() == 0.0 and rel.max() == 1.0
    # the sample run moves S2 in the middle layer of each model: 2 of 4 layers (0.7), 3 of 6 (0.6)
    s2 = effect.xs(("activscalar", "S2"), level=("method", "role"))
    assert s2["tiny-gpt2"].idxmax()[-1] == 0.7 and s2["tiny-llama"].idxmax()[-1] == 0.6
    assert s2["tiny-gpt2"].max() > 0.5 and s2["tiny-llama"].max() > 0.5
    selected, _ = run_sql([run], "SELECT u.model, u.method, s.trial_id FROM selected s JOIN units u USING (unit_id)")
    trials = wide["trial_id"].xs("activscalar", level="method")
    for model in ("tiny-gpt2", "tiny-llama"):
        expected = selected[(selected.model == model) & (selected.method == "activscalar")].trial_id.item()
        assert set(trials[model].dropna()) == {expected}
    assert wide["base_accuracy"]["tiny-llama"].dropna().unique().tolist() == [0.95]
    long, _ = run_sql([run], COMPARE_SQL)
    assert len(long) == wide["effect"].notna().sum().sum()  # every long row is one cell of the wide frame


def test_a_model_near_chance_is_left_out_and_listed(tmp_path):
    run = make_sample_run(tmp_path / "run")
    _with_competence(run, {"tiny-gpt2": 0.52, "tiny-llama": 0.95})
    runs = open_runs(run)
    wide = runs.compare_models()
    assert set(wide.columns.get_level_values("model")) == {"tiny-llama"}
    assert {(u["model"], u["method"]) for u in wide.attrs["near_chance"]} == {("tiny-gpt2", "activscalar"),
                                                                             ("tiny-gpt2", "steervec")}
    kept = runs.compare_models(include_near_chance=True)
    assert kept["near_chance"]["tiny-gpt2"].dropna().astype(bool).all()
    competence = runs.competence()
    assert competence.set_index("model").near_chance.to_dict() == {"tiny-gpt2": True, "tiny-llama": False}


def test_the_same_model_twice_is_refused(tmp_path):
    a, b = make_sample_run(tmp_path / "a", run_id="a"), make_sample_run(tmp_path / "b", run_id="b")
    for run in (a, b):
        _with_competence(run, {"tiny-gpt2": 0.9, "tiny-llama": 0.9})
    with pytest.raises(ValueError, match="has several selected trials for task 'ioi'.*open one run per model"):
        open_runs(a, b).compare_models()
