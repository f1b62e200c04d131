"""`actscale patch` on both embedded models (SmolLM2-135M-Instruct, Gemma 3 270M), a unit of every site kind:
slow (the real models), about a minute. Each unit's rows cover its scalars cells for every kind it computes, the
head units add where their heads look and what they write, and the values are what they can be (an attention
weight in [0, 1]; a cell patched on its own moves LD by less than the whole swap, on average)."""
from __future__ import annotations

import pytest

from workers.names import SITES


@pytest.mark.slow
def test_actscale_patch_writes_a_table_for_each_site_kind_on_both_embedded_models(tmp_path, ray_session, capsys):
    from orchestrator.cli import main
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import parse_config
    from storage.store import read_table
    from tests.sweeps import tiny_config

    config = parse_config(tiny_config(models=["smollm2-135m", "gemma3-270m"], sites=list(SITES), layers=[[2, 9]],
                                      search={"n_trials": 1, "batch": 1}, train={"steps": 2, "batch_size": 8},
                                      tasks=[{"name": "ioi", "options": {"n": 20, "templates": ["when"]}}]))
    run = tmp_path / "run"
    Coordinator(config, run, quiet=True).run()
    assert main(["patch", str(run)]) == 0
    assert "patching rows written" in capsys.readouterr().out
    table = read_table(run, "patching")
    assert not table.problems
    rows = table.table.to_pandas()
    units = read_table(run, "units").table.to_pandas()
    assert sorted(units.model.unique()) == ["gemma3-270m", "smollm2-135m"]
    scalars = read_table(run, "scalars").table.to_pandas()
    for unit in units.itertuples():
        mine = rows[rows.unit_id == unit.unit_id]
        head = unit.site == "head"
        expected = {"activation", "attribution"} | ({"attn_to_io", "attn_to_s2", "dla"} if head else set())
        assert set(mine.kind) == expected, (unit.model, unit.site)
        cells = scalars[scalars.unit_id == unit.unit_id][["layer", "position", "head"]].drop_duplicates()
        for kind in expected:
            assert len(mine[mine.kind == kind]) == len(cells), (unit.model, unit.site, kind)
        assert set(mine.layer) == {2, 9}
        exact = mine[mine.kind == "activation"]
        assert exact.effect.notna().all() and exact.effect.abs().mean() < 1.0
        if head:
            attention = mine[mine.kind.isin(["attn_to_io", "attn_to_s2"])].effect
            assert attention.between(0.0, 1.0 + 1e-5).all()
            dla = mine[mine.kind == "dla"]
            final = dla[dla.role.str.split("|").apply(lambda roles: "END" in roles)]
            assert (dla.drop(final.index).effect == 0.0).all() and final.effect.abs().max() > 0
