"""Where maps pair models by relative depth and role, never by absolute layer (reports/where.py)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.where import DEPTH_BINS, aligned, draw_where, selected_where, where_matrix
from storage.errors import StorageError
from tests.sample_run import make_sample_run


def _cells(n_layers: int, effect_of) -> pd.DataFrame:
    rows = []
    for layer in range(n_layers):
        for position, role in enumerate(["IO", "S1", "When|After", "END"]):
            rows.append(dict(layer=layer, rel_depth=layer / (n_layers - 1), role=role, mean_position=float(position),
                             head=None, effect=effect_of(layer, role)))
    return pd.DataFrame(rows)


def test_layers_of_two_depths_land_in_the_same_relative_bins():
    # a 30-layer and an 18-layer model each act only in their top fifth, at S1
    deep = where_matrix(_cells(30, lambda layer, role: 1.0 if role == "S1" and layer / 29 >= 0.8 else 0.0))
    shallow = where_matrix(_cells(18, lambda layer, role: 1.0 if role == "S1" and layer / 17 >= 0.8 else 0.0))
    assert list(deep.index) == list(shallow.index) == [b / DEPTH_BINS for b in range(DEPTH_BINS)]
    for grid in (deep, shallow):
        assert grid.loc[0.9, "S1"] == 1.0 and grid.loc[0.0, "S1"] == 0.0 and grid["IO"].max() == 0.0
        assert list(grid.columns) == ["IO", "S1", "After|When", "END"]  # prompt order, joined words sorted
    # bin 0.8 holds layers 24-26 of 30 (depths 0.83, 0.86, 0.90 -> 0.9 is the next bin) and layers 14-15 of 18
    assert deep.loc[0.8, "S1"] == 1.0 and shallow.loc[0.8, "S1"] == 1.0


def test_a_bin_is_the_mean_of_its_layers_and_heads():
    cells = _cells(11, lambda layer, role: float(layer))  # depths 0, 0.1, ..., 1: one layer per bin, 1.0 in the top
    heads = pd.concat([cells.assign(head=0), cells.assign(head=1, effect=cells.effect + 2)])
    grid = where_matrix(heads)
    assert grid.loc[0.3, "IO"] == pytest.approx(3 + 1)  # mean of heads 0 and 1 (3 and 5)
    assert grid.loc[0.9, "END"] == pytest.approx((9 + 10) / 2 + 1)  # layers 9 and 10 share the top bin


def test_a_model_without_a_layer_in_a_bin_shows_nothing_there():
    grid = where_matrix(_cells(4, lambda layer, role: 0.5))
    assert math.isnan(grid.loc[0.1, "IO"]) and grid.loc[0.3, "IO"] == 0.5


def test_selected_maps_of_a_run_with_two_models(tmp_path):
    run = make_sample_run(tmp_path / "run")
    maps = selected_where([run], "ioi", "mlp_out", "activscalar")
    assert set(maps) == {"tiny-gpt2", "tiny-llama"}
    together = aligned(maps)
    assert len({tuple(m.columns) for m in together.values()}) == 1
    path = draw_where(maps, "sample", tmp_path / "where.png")
    assert path.stat().st_size > 10_000
    with pytest.raises(StorageError, match="no selected trial"):
        selected_where([run], "ioi", "mlp_out", "no_such_method")
