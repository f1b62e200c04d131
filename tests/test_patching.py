"""The patching baseline (workers/patching.py, `actscale patch`): a cell patched with its own activation changes
nothing; the last layer's resid_post at the last token is the whole swap and every other token there none;
attribution patching matches exact patching for a small perturbation (the gradient's sign and the cells' tokens);
rows keyed like a trained trial's scalars rows; the command writes a table the readers and the report read, once."""
from __future__ import annotations

import pytest
import torch

from workers.errors import UsageError
from workers.patching import Patch, attributed_ld_change, entering_states, patch_unit, patched_ld, run_clean, unit_prompts
from workers.precision import evaluation_model
from workers.prepare import prepare_unit
from workers.sites import resolve_site
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec


def _unit(loaded, model: str, site: str = "resid_post", method: str = "activscalar", layers="all"):
    spec = UnitSpec(model, TaskSpec.make("ioi", {"n": 40}), site, layers, method,
                    TrainSettings(steps=2, batch_size=8, filter="none", precision="fp32"))
    return prepare_unit(loaded, spec)


def _every_cell(unit, refs) -> list[Patch]:
    n_columns = len(unit.cell_columns("val")[0])
    heads = list(range(refs[0].n_heads)) if refs[0].n_heads else [None]
    return [Patch(li, (c,), h) for li in range(len(refs)) for c in range(n_columns) for h in heads]


@pytest.mark.parametrize(("model", "site"), [("tiny-gpt2", "mlp_out"), ("tiny-llama", "head")])
def test_patching_a_cell_with_its_own_activation_changes_nothing(tiny_models, model, site):
    loaded = evaluation_model(tiny_models[model])
    unit = _unit(loaded, model, site)
    refs = resolve_site(loaded.model, site, unit.layers)
    prompts = unit_prompts(loaded, unit, "val")
    h, ld = run_clean(loaded, refs, prompts.ids, prompts.lengths, prompts.a_ids, prompts.b_ids, 16)
    patches = _every_cell(unit, refs)
    same = patched_ld(loaded, refs, prompts, h, patches, 64)  # the "counterfactual" is the prompt itself
    torch.testing.assert_close(same, ld.cpu()[None].expand_as(same), rtol=0, atol=1e-5)
    change = attributed_ld_change(loaded, refs, prompts, h, patches, 16)
    assert change.abs().max() == 0.0


@pytest.mark.parametrize(("model", "site"), [("tiny-gpt2", "mlp_out"), ("tiny-gemma3", "head"),
                                             ("tiny-neox", "resid_post")])
def test_starting_at_the_first_patched_layer_gives_the_full_forwards_ld(tiny_models, model, site):
    """Layers before a forward's first patched layer are unchanged, so their output is taken from the clean run."""
    loaded = evaluation_model(tiny_models[model])
    unit = _unit(loaded, model, site, layers=(1, 2, 3))
    refs = resolve_site(loaded.model, site, unit.layers)
    prompts = unit_prompts(loaded, unit, "val")
    h_cf, _ = run_clean(loaded, refs, prompts.cf_ids, prompts.lengths, prompts.a_ids, prompts.b_ids, 16)
    patches = _every_cell(unit, refs)
    full = patched_ld(loaded, refs, prompts, h_cf, patches, 48)
    cut = patched_ld(loaded, refs, prompts, h_cf, patches, 48, entering_states(loaded, unit.layers, prompts, 16))
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model", "method"), [("tiny-gpt2", "activscalar"), ("tiny-llama", "dynscalar")])
def test_the_last_layers_output_at_the_last_token_is_the_whole_swap(tiny_models, model, method):
    """The last token's logits depend on the last layer's output only at that token: patching it there gives the
    counterfactual's LD exactly (effect 1), and patching any other token there changes nothing (effect 0)."""
    loaded = tiny_models[model]
    unit = _unit(loaded, model, "resid_post", method)
    rows = [r for r in patch_unit(loaded, unit, kinds=("activation",)) if r["layer"] == unit.layers[-1]]
    last = [r for r in rows if r["role"] == "END"]
    assert len(last) == 1 and last[0]["n_prompts"] > 10
    assert last[0]["effect"] == pytest.approx(1.0, abs=1e-5)
    assert last[0]["effect_lo"] == pytest.approx(1.0, abs=1e-5) and last[0]["effect_hi"] == pytest.approx(1.0, abs=1e-5)
    others = [r for r in rows if r["role"] != "END"]
    assert others and all(abs(r["effect"]) < 1e-5 for r in others)


@pytest.mark.parametrize(("model", "site"), [("tiny-gpt2", "attn_out"), ("tiny-llama", "head"),
                                             ("tiny-neox", "resid_post")])
def test_attribution_matches_exact_patching_for_a_small_perturbation(tiny_models, model, site):
    """With h_cf = h + eps noise, LD_patched - LD is linear in eps to first order: the attribution estimate agrees
    with exact patching cell by cell and prompt by prompt (a wrong sign or wrong tokens would not)."""
    loaded = evaluation_model(tiny_models[model])
    unit = _unit(loaded, model, site, layers=(0, 1, 2))
    refs = resolve_site(loaded.model, site, unit.layers)
    prompts = unit_prompts(loaded, unit, "val")
    h, ld = run_clean(loaded, refs, prompts.ids, prompts.lengths, prompts.a_ids, prompts.b_ids, 16)
    gen = torch.Generator().manual_seed(0)
    near = [x + 1e-3 * x.abs().mean() * torch.randn(x.shape, generator=gen) for x in h]  # L x [N, T, W]
    patches = _every_cell(unit, refs)
    exact = patched_ld(loaded, refs, prompts, near, patches, 64) - ld.cpu()[None]  # [P, N]
    estimate = attributed_ld_change(loaded, refs, prompts, near, patches, 16)  # [P, N]
    scale = exact.abs().max()
    assert scale > 1e-6
    assert (estimate - exact).abs().max() < 0.05 * scale
    corr = torch.corrcoef(torch.stack([exact.flatten(), estimate.flatten()]))[0, 1]
    assert corr > 0.99


@pytest.mark.parametrize(("model", "site", "method"), [("tiny-gpt2", "mlp_out", "activscalar"),
                                                       ("tiny-llama", "head", "activscalar"),
                                                       ("tiny-gpt2", "attn_out", "dynscalar")])
def test_rows_have_the_scalars_cells_of_the_unit(tiny_models, model, site, method):
    loaded = tiny_models[model]
    unit = _unit(loaded, model, site, method, layers=(1, 2))
    (trial,) = train_trials(loaded, unit, [Hyper(seed=0)])
    assert trial.ok, trial.error
    keys = {(s["layer"], s["position"], s["role"], s["head"]) for s in trial.scalars}
    rows = patch_unit(loaded, unit)
    for kind in ("activation", "attribution"):
        mine = [(r["layer"], r["position"], r["role"], r["head"]) for r in rows if r["kind"] == kind]
        assert len(mine) == len(set(mine)) and set(mine) == keys
    assert {r["rel_depth"] for r in rows} == {1 / 3, 2 / 3}
    assert all(r["effect_lo"] <= r["effect"] <= r["effect_hi"] for r in rows)


def _stored_run(path, config: dict):
    """A run directory with its stored sweep and run id only (no trial yet): what `actscale patch` needs."""
    from search_spaces.config import parse_config
    from storage.run_dir import RunDir

    run = RunDir(path)
    run.start_run()
    run.store_sweep(parse_config(config).to_yaml())
    return path


def test_patch_run_names_a_task_without_counterfactuals_and_patches_once(tmp_path):
    import json

    from orchestrator.patch_cmd import patch_run
    from storage.store import read_table
    from tests.sweeps import tiny_config

    lines = [dict(prompt=f"When Mary and John went to the store, John gave a {o} to", answer_a=" Mary",
                  answer_b=" John", template="t", entities=[o])
             for o in ["drink", "book", "ball", "ring", "bag", "key", "cup", "pen", "hat", "box", "map", "car"]]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = _stored_run(tmp_path / "run", tiny_config(tasks=[{"name": "ioi", "options": {"n": 30}}, {"name": str(plain)}],
                                                    layers=[[2, 3]], train={"filter": "none"}))
    said: list[str] = []
    written = patch_run(run, say=said.append)
    assert len(written) == 2 and sorted(written.values())[0] == 0
    (skipped,) = [s for s in said if "skipped" in s]
    assert "plain.jsonl" in skipped and "counterfactual" in skipped
    (done,) = [s for s in said if "top cells" in s]
    assert "28 cells" in done and done.count("=") == 3  # 2 layers x 14 positions; the top 3 cells
    rows = read_table(run, "patching").table.to_pylist()
    assert len(rows) == max(written.values()) == 2 * 28 and {r["split"] for r in rows} == {"val"}
    assert len({r["run_id"] for r in rows}) == 1 and rows[0]["run_id"] is not None
    said.clear()
    again = patch_run(run, splits=("val", "test"), say=said.append)  # val is there: only test is added
    assert max(again.values()) == 2 * 28
    (line,) = [s for s in said if "top cells" in s]
    assert "prompts test" in line and "(activation, test)" in line
    assert patch_run(run, splits=("val", "test"), say=said.append) == dict.fromkeys(written, 0)
    assert any("already patched" in s for s in said)
    assert len(read_table(run, "patching").table) == 4 * 28
    with pytest.raises(UsageError, match="no unit u-nope"):
        patch_run(run, ["u-nope"])
    with pytest.raises(UsageError, match="no unit of method steervec in this run; its methods: activscalar"):
        patch_run(run, methods=["steervec"])
    assert patch_run(run, splits=("val",), say=said.append, methods=["activscalar"]) == dict.fromkeys(written, 0)


@pytest.mark.slow
def test_actscale_patch_writes_the_table_once(tmp_path, ray_session, capsys):
    from orchestrator.cli import main
    from orchestrator.coordinator import Coordinator
    from reports.run import load_run
    from search_spaces.config import parse_config
    from storage.store import read_table
    from tests.sweeps import tiny_config

    config = parse_config(tiny_config(methods=["activscalar"], sites=["mlp_out", "head"], layers=[[0, 1]],
                                      search={"n_trials": 2, "batch": 2}, train={"steps": 2, "batch_size": 8},
                                      tasks=[{"name": "ioi", "options": {"n": 40}}]))
    run = tmp_path / "run"
    Coordinator(config, run, quiet=True).run()
    assert main(["patch", str(run)]) == 0
    out = capsys.readouterr().out
    assert "top cells (activation, val): L" in out and "patching rows written" in out
    table = read_table(run, "patching")
    assert not table.problems
    rows = table.table.to_pylist()
    units = {r["unit_id"] for r in read_table(run, "units").table.to_pylist()}
    assert {r["unit_id"] for r in rows} == units
    for uid in units:  # head units carry the head diagnostics beside the two effect kinds
        kinds = {r["kind"] for r in rows if r["unit_id"] == uid}
        heads = {r["site"] for r in rows if r["unit_id"] == uid} == {"head"}
        assert kinds == ({"activation", "attribution", "attn_to_io", "attn_to_s2", "dla"} if heads
                         else {"activation", "attribution"}), (uid, kinds)
    scalars = read_table(run, "scalars").table.to_pylist()
    for uid in units:
        keys = {(s["layer"], s["position"], s["role"], s["head"]) for s in scalars if s["unit_id"] == uid}
        assert {(r["layer"], r["position"], r["role"], r["head"]) for r in rows
                if r["unit_id"] == uid and r["kind"] == "activation"} == keys
    n = len(rows)
    report = load_run(run)
    assert report.patching.shape[0] == n
    from reports.claims.c3 import head_roles, patching_rho

    for row in report.selected.itertuples():  # the page finds each unit's cells in both tables
        assert patching_rho(report, row).why != "not measured"
        note = head_roles(report, row)  # and lists a head unit's top heads with their attention and dla
        assert (note is not None and "look like name movers" in note) == (row.site == "head"), (row.site, note)
    assert main(["patch", str(run)]) == 0
    assert "already patched" in capsys.readouterr().out
    assert len(read_table(run, "patching").table) == n
