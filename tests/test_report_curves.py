"""The report's curves, strength sweep and transfer table (reports/curves.py), from one real tiny sweep."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from orchestrator.coordinator import Coordinator
from reports.curves import TIED, curve_frame, full_effect, k_reaching, reach_summary, strength_frame, transfer_table
from reports.report import render, select_trials
from storage.query import load
from storage.seeds import group_of
from tests.sweeps import parsed, tiny_config

pytestmark = pytest.mark.slow  # renders whole pages from a run: make test runs them


BETAS = [-1.0, 0.0, 0.5, 1.0, 2.0]  # fewer than the default nine: the test needs 0 (the model) and 1 (the trial)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_session):
    """Two tiny models on ioi and on ioi with a held-out template (the methods for any length only),
    one search trial and one replicate per unit, the analysis on (the default) with five strengths."""
    run = tmp_path_factory.mktemp("curves") / "run"
    config = parsed(tiny_config(
        models=["tiny-gpt2", "tiny-llama"],
        tasks=[{"name": "ioi", "options": {"n": 12}},
               {"name": "ioi", "options": {"n": 12, "heldout_templates": ["longer"]},
                "methods": ["dynscalar", "dynscalar_bias"]}],
        methods=["activscalar", "dynscalar", "dynscalar_bias"],
        # a large lr and no filter: in 4 steps most trials move the answer on a few prompts, so k_reaching has values
        search={"n_trials": 1, "batch": 2, "replicates": 2, "space": {"lr": {"low": 0.2, "high": 0.4, "log": True}}},
        train={"steps": 4, "batch_size": 8, "min_split": 4, "filter": "none"},
        analysis={"betas": BETAS}, resources={"models_at_once": 2}))
    Coordinator(config, run, quiet=True).run()
    out = run.parent / "report"
    made = render([run], out)
    return run, out, made


def _tables(run):
    return {name: load(run, name) for name in ("curves", "trials", "units", "predictions", "scalars")}


def test_k_reaching_is_the_smallest_k_meeting_the_threshold():
    def rows(trial_id, flips, n_cells=8, split="val"):
        return [dict(trial_id=trial_id, run_id="r", kind="sufficiency", split=split, k=k, n_cells=n_cells, flip_rate=f)
                for k, f in flips.items()]
    curves = pd.DataFrame(rows("a", {0: 0.0, 1: 0.2, 2: 0.9, 4: 0.95, 8: 1.0})  # 0.9 of 1.0: exactly at k = 2
                          + rows("b", {0: 0.0, 1: 0.5, 2: 0.3, 4: 0.44, 8: 0.5})  # not monotone: the smallest k
                          + rows("c", {0: 0.0, 1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0})  # no effect: None
                          + rows("d", {0: 0.0, 1: 0.1, 2: 0.2, 4: 0.3, 8: 0.4})  # only all cells reach it
                          + rows("a", {0: 0.0, 1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}, split="test"))  # decided on val
    assert full_effect(curves, "a", "val") == 1.0 and full_effect(curves, "b", "val") == 0.5
    assert k_reaching(curves, "a") == 2
    assert k_reaching(curves, "a", fraction=0.5) == 2 and k_reaching(curves, "a", fraction=0.2) == 1
    assert k_reaching(curves, "a", split="test") == 1
    assert k_reaching(curves, "b") == 1
    assert k_reaching(curves, "c") is None
    assert k_reaching(curves, "d") == 8
    twice = pd.concat([curves, curves[curves.trial_id == "a"].assign(run_id="other")])
    with pytest.raises(ValueError, match="several runs"):
        k_reaching(twice, "a")


def test_curve_figures_show_the_curves_table(sweep):
    run, out, made = sweep
    t = _tables(run)
    curves, trials = t["curves"], t["trials"]
    chosen = select_trials([run], trials).merge(t["units"][["unit_id", "task_options", "method", "model"]],
                                                on="unit_id")
    assert set(curves.trial_id) == {tid for s in chosen.trial_id for tid in group_of(s, trials)}
    assert {m["file"] for m in made["curves"]} == {
        f"figures/curves-{model}-{task}-mlp_out.png" for model in ("tiny-gpt2", "tiny-llama")
        for task in ("ioi", "ioi+heldout_templates-longer")}
    shown = {(f["model"], f["task"], m["method"]): m for f in made["curves"] for m in f["methods"]}
    assert len(shown) == 10  # per model 3 methods in distribution, 2 on the held-out task
    reached = 0
    for row in chosen.itertuples():
        ids = group_of(row.trial_id, trials)
        assert len(ids) == 2
        c = curves[curves.run_id == row.run_id]
        # by hand from the table: the full effect on val, and the first k on the grid that reaches 90% of it
        suff = c[(c.trial_id == row.trial_id) & (c.kind == "sufficiency") & (c.split == "val")].sort_values("k")
        full = float(suff[suff.k == suff.n_cells].flip_rate.iloc[0])
        assert full == trials.set_index("trial_id").val_flip_rate[row.trial_id]  # all cells acting: the trial
        expected = next((int(k) for k, f in zip(suff.k, suff.flip_rate) if f >= 0.9 * full - 1e-9), None) \
            if full > 0 else None
        assert k_reaching(c, row.trial_id) == expected
        reached += expected is not None
        task = "ioi (heldout_templates: longer)" if "heldout" in row.task_options else "ioi"
        m = shown[(row.model, task, row.method)]
        assert m["k"] == expected and m["n_seeds"] == 2 and m["trial_id"] == row.trial_id
        # the drawn curve: per k, the mean over both seeds of the table's test rows
        for kind in ("sufficiency", "necessity"):
            frame = curve_frame(c, ids, kind, "test")
            table = c[c.trial_id.isin(ids) & (c.kind == kind) & (c.split == "test")]
            every_seed = set.intersection(*(set(table[table.trial_id == t].k) for t in ids))  # k90s lie off the grid
            by_k = table[table.k.isin(every_seed)].groupby("k").flip_rate.mean()
            assert frame.k.tolist() == [int(k) for k in by_k.index] and frame.k.iloc[0] == 0
            assert np.allclose(frame.flip_rate, by_k.to_numpy()) and (frame.n_seeds == 2).all()
            assert (frame.flip_lo <= frame.flip_rate + 1e-12).all() and (frame.flip_rate <= frame.flip_hi + 1e-12).all()
            assert np.allclose(frame.rel_k, frame.k / table.n_cells.iloc[0])
        if expected is not None:
            at_k = c[c.trial_id.isin(ids) & (c.kind == "sufficiency") & (c.split == "test") & (c.k == expected)]
            assert np.isclose(m["test_at_k"][0], at_k.flip_rate.mean())
            assert reach_summary(c, ids)["test_at_k"] == m["test_at_k"]
    assert reached >= 3  # the hand computation met real thresholds, not only "no effect"
    for f in (out / "figures").glob("*.png"):
        with Image.open(f) as image:
            assert len(np.unique(np.asarray(image.convert("L")))) > 20, f.name
    page, summary = (out / "index.html").read_text(), (out / "summary.md").read_text()
    for m in made["curves"] + made["strength"]:
        assert f'src="{m["file"]}"' in page and m["file"] in summary
    assert 'id="table-curves"' in page and "## What the cells do" in summary and "k reaching 90% (val)" in summary
    # across models: a figure per task, site and method, by the share of cells (k / n_cells)
    assert {m["file"] for m in made["relk"]} == {f"figures/relk-{task}-mlp_out-{method}.png" for task, method in
                                                 [("ioi", "activscalar"), ("ioi", "dynscalar"), ("ioi", "dynscalar_bias"),
                                                  ("ioi+heldout_templates-longer", "dynscalar"),
                                                  ("ioi+heldout_templates-longer", "dynscalar_bias")]}
    assert all(f'src="{m["file"]}"' in page for m in made["relk"] + made["across"])
    assert len(made["across"]) == 5  # the heatmaps side by side, held-out and in-distribution units apart


def test_strength_at_beta_0_is_the_model_itself(sweep):
    run, _, made = sweep
    t = _tables(run)
    assert len(made["strength"]) == 4
    for row in select_trials([run], t["trials"]).itertuples():
        ids = group_of(row.trial_id, t["trials"])
        assert strength_frame(t["curves"], ids, "val").empty  # val: only the sufficiency curve (analysis.val_all)
        for split in ("test",):
            frame = strength_frame(t["curves"], ids, split).set_index("beta")
            assert frame.index.tolist() == BETAS
            assert np.isclose(frame.ld_after[0.0], frame.ld_before[0.0], atol=1e-5)
            assert frame.flip_rate[0.0] == 0 and np.isclose(frame.kl_other[0.0], 0, atol=1e-6)
            # beta = 1 is the trial: its stored mean LD on the split, averaged over the seeds
            stored = t["trials"].set_index("trial_id").loc[ids, f"{split}_ld_after"].mean()
            assert np.isclose(frame.ld_after[1.0], stored, atol=1e-4)


def test_transfer_table_puts_dynscalar_beside_activscalar(sweep):
    run, out, made = sweep
    t = _tables(run)
    table = transfer_table(select_trials([run], t["trials"]), t["units"], t["trials"], t["predictions"], t["scalars"])
    assert len(table) == 6 and sorted(table.model.unique()) == ["tiny-gpt2", "tiny-llama"]
    rows = table[table.model == "tiny-gpt2"].set_index("method")
    assert sorted(rows.index) == ["activscalar", "dynscalar", "dynscalar_bias"]
    assert rows.heldout["activscalar"] == TIED and rows.heldout_kl["activscalar"] == TIED
    assert pd.isna(rows.heldout_test_flip_rate["activscalar"])
    assert rows.indist_test_flip_rate.notna().all() and (rows.heldout_templates == "longer").all()
    units = t["units"].set_index("unit_id")
    for method in ("dynscalar", "dynscalar_bias"):
        held = rows.heldout_trial_id[method]
        assert "heldout_templates" in units.task_options[held.rsplit("-t", 1)[0]]
        assert "heldout_templates" not in units.task_options[rows.indist_trial_id[method].rsplit("-t", 1)[0]]
        p = t["predictions"][t["predictions"].trial_id == held]
        assert rows.heldout_n_test[method] == len(p) and np.isclose(rows.heldout_test_flip_rate[method], p.flipped.mean())
        assert rows.heldout[method].startswith(f"{rows.heldout_test_flip_rate[method]:.3f} [")
        assert rows.heldout_seeds[method] == 2 and rows.heldout_flip_over_seeds[method] != "-"
    assert made["transfer"] == table.astype(object).where(table.notna(), None).to_dict("records")
    page, summary = (out / "index.html").read_text(), (out / "summary.md").read_text()
    assert 'id="table-transfer"' in page and TIED in page
    assert "## Transfer to held-out templates" in summary and summary.count(f"| {TIED} |") >= 1


def test_report_renders_without_curves(sweep, tmp_path):
    """A run whose analysis was off (or predates it): no curve figures, the rest as before."""
    run, _, _ = sweep
    bare = tmp_path / "run"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "tables" / "curves")
    assert load(bare, "curves").empty
    made = render([bare], tmp_path / "out")
    assert made["curves"] == made["strength"] == made["relk"] == []
    assert len(made["heatmaps"]) == 10 and made["transfer"]  # the transfer table needs no curves
    page = (tmp_path / "out" / "index.html").read_text()
    assert "No curves in these runs" in page and 'id="table-transfer"' in page
    assert "curves-" not in page and "strength-" not in page
