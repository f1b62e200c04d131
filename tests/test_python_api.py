"""`from storage import open_runs`: tables, SQL, the selected trials, one trial's grid, seeds;
docs/python-api.md is regenerated from the sample run and must match."""
from __future__ import annotations

import pytest

from storage import open_runs
from storage.api_docs import render_page
from storage.errors import StorageError
from storage.query import run_sql
from storage.query_docs import EXAMPLE_TRIAL, SAMPLE_RUN
from tests.generated_pages import check_generated_page
from tests.sample_run import make_sample_run


def test_python_api_page_matches_the_code():
    check_generated_page("python-api.md", render_page(), "rerun with ACTSCALE_WRITE_DOCS=1 (or make docs)")


def test_tables_sql_and_selected_agree_with_the_query_layer(tmp_path):
    a, b = make_sample_run(tmp_path / "a", run_id="run-a"), make_sample_run(tmp_path / "b", run_id="run-b", seed=1)
    runs = open_runs(a, b)
    assert set(runs.trials.run_id) == {"run-a", "run-b"} and len(runs.trials) == len(open_runs([a]).trials) * 2
    selected = runs.selected()
    expected, _ = run_sql([a, b], "SELECT run_id, trial_id FROM selected ORDER BY run_id, trial_id")
    assert sorted(zip(selected.run_id, selected.trial_id)) == list(zip(expected.run_id, expected.trial_id))
    assert {"model", "method", "n_val", "n_test", "warnings", "selected_by"} <= set(selected.columns)
    assert runs.sql("SELECT count(*) AS n FROM units").n.iloc[0] == 8
    with pytest.raises(KeyError, match="several runs"):
        runs.cells(selected.trial_id.iloc[0])  # the same trial id in both runs
    grid = runs.cells(selected.trial_id.iloc[0], run_id="run-a")
    one = runs.scalars.query(f"trial_id == '{selected.trial_id.iloc[0]}' and run_id == 'run-a'")
    assert grid.shape == (one.layer.nunique(), one.position.nunique())
    first = one.sort_values(["layer", "position"]).iloc[0]
    assert grid.loc[first.layer].iloc[0] == first.value


def test_open_runs_names_what_is_wrong(tmp_path):
    with pytest.raises(StorageError, match="not an actscale run directory"):
        open_runs(tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        open_runs()
    assert open_runs(SAMPLE_RUN).seeds(EXAMPLE_TRIAL).n_seeds == 2
