"""Curves and strength of a trained trial (workers/analysis.py): the ends of every curve are the
trial itself and the model itself, for every method, site and prompt shape."""
from __future__ import annotations

import pytest
import torch

from orchestrator.costs import analysis_points, k90_rounds
from workers.analysis import _keep_masks, analyze_trial, k90_bracket, k_grid, split_point
from workers.interventions import DynScalarBias, build_intervention, method_class
from workers.k90 import k90_of
from workers.names import STRENGTHS
from workers.prepare import prepare_unit
from workers.sites import resolve_site
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

METRICS = ("flip_rate", "ld_after", "kl_other")
CASES = [("activscalar", "mlp_out", {}), ("steervec", "mlp_out", {}), ("dynscalar", "mlp_out", {}),
         ("dynscalar_bias", "attn_out", {}), ("activscalar", "head", {}), ("steervec", "head", {}),
         ("dynscalar", "mlp_out", {"heldout_templates": ["longer"]}), ("diffmeans", "resid_post", {}),
         ("diffmeans", "head", {}), ("activscalar_role", "mlp_out", {"heldout_templates": ["longer"]}),
         ("activscalar_role", "head", {})]


def _trained(tiny_models, method: str, site: str, options: dict, trains_in: str = "fp32", **analysis):
    """A unit and one trial trained hard enough to move the model (tiny-llama, fp32 unless `trains_in`), and its
    analysis (every val point: val_all)."""
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 40, **options}), site, (0, 1, 2, 3), method,
                    TrainSettings(steps=8, batch_size=16, filter="none", precision=trains_in))
    unit = prepare_unit(tiny_models["tiny-llama"], spec)
    # diffmeans' L1 is |c| sum|v| over every cell: a weight the others take would keep c at 0
    lambda_min = 1e-6 if method_class(method).needs_direction else 0.001
    (result,) = train_trials(tiny_models["tiny-llama"], unit, [Hyper(lr=0.2, lambda_min=lambda_min, seed=3)])
    assert result.ok, result.error
    tensors = {k: torch.as_tensor(v) for k, v in result.tensors.items()}
    return unit, result, analyze_trial(tiny_models["tiny-llama"], unit, tensors, **{"val_all": True, **analysis})


def _row(rows, kind, split, k=None, beta=None):
    (row,) = [r for r in rows if r["kind"] == kind and r["split"] == split and r["k"] == k and r["beta"] == beta]
    return row


def _is_model(row) -> None:
    """The unintervened model: LD' is LD, nothing flips, nothing else moves."""
    assert row["flip_rate"] == 0.0
    assert row["kl_other"] <= 1e-6
    assert abs(row["ld_after"] - row["ld_before"]) <= 1e-5 * (1 + abs(row["ld_before"]))


def _is_trial(row, result, split) -> None:
    for name in METRICS:
        want = result.metrics[split][name]
        assert abs(row[name] - want) <= 1e-4 * (1 + abs(want)), (split, name, row[name], want)


@pytest.mark.parametrize("method,site,options", CASES, ids=[f"{m}-{s}{'-heldout' if o else ''}" for m, s, o in CASES])
def test_curve_ends_are_the_trial_and_the_model(tiny_models, method, site, options):
    unit, result, rows = _trained(tiny_models, method, site, options)
    n = rows[0]["n_cells"]
    assert n == result.sites_total  # the cells ranked are the cells of the scalars table
    assert set(k_grid(n)) <= {r["k"] for r in rows if r["kind"] == "sufficiency" and r["split"] == "test"}
    assert any(result.metrics[s]["flip_rate"] > 0 or result.metrics[s]["kl_other"] > 1e-3 for s in ("val", "test"))
    for split in ("val", "test"):
        _is_trial(_row(rows, "sufficiency", split, k=n), result, split)
        _is_model(_row(rows, "sufficiency", split, k=0))
        _is_model(_row(rows, "necessity", split, k=n))
        _is_trial(_row(rows, "necessity", split, k=0), result, split)
        _is_trial(_row(rows, "strength", split, beta=1.0), result, split)
        _is_model(_row(rows, "strength", split, beta=0.0))
        for row in rows:
            assert row["flip_rate_lo"] <= row["flip_rate"] <= row["flip_rate_hi"]
            assert row["n_prompts"] == len(unit.splits[row["split"]])


def test_k90_is_found_to_within_ten_percent_on_val_and_scored_on_test(tiny_models):
    """The grid brackets k90 within a factor 2; the narrowing rounds pin it to neighbouring k or a ratio <= 1.1,
    the k found is scored as necessity on val and both ways on test, and the plan's count of its points holds."""
    unit, result, rows = _trained(tiny_models, "activscalar", "mlp_out", {})
    n = rows[0]["n_cells"]
    grid_only = [r for r in rows if r["kind"] == "strength" or r["k"] in set(k_grid(n))]
    coarse, fine = k90_bracket(grid_only, n), k90_bracket(rows, n)
    assert coarse is not None and fine is not None
    assert coarse[1] - coarse[0] > 1 and coarse[1] > 1.1 * coarse[0]  # the grid alone does not pin it down
    k_lo, k_hi = fine
    assert k_hi - k_lo <= 1 or k_hi <= 1.1 * k_lo, fine
    assert coarse[0] <= k_lo < k_hi <= coarse[1]
    flips = {r["k"]: r["flip_rate"] for r in rows if r["kind"] == "sufficiency" and r["split"] == "val"}
    assert flips[k_hi] >= 0.9 * flips[n] > flips[k_lo]
    for kind, split in (("necessity", "val"), ("sufficiency", "test"), ("necessity", "test")):
        assert _row(rows, kind, split, k=k_hi)["n_prompts"] == len(unit.splits[split])
    for row in rows:
        assert row["ld_shift_lo"] <= row["ld_shift"] <= row["ld_shift_hi"]  # every curve carries the shift
    expected_rows, _, _ = analysis_points(n, True, list(STRENGTHS), 2, 0.1, val_all=True)
    assert len(rows) <= expected_rows  # three bisections narrow a factor-2 bracket


def test_val_gets_only_what_a_decision_reads(tiny_models):
    """By default val holds the sufficiency curve (k90 is decided on it) and test every point: the same k90 and the
    same test rows as with val_all, and the plan counts the rows."""
    unit, result, every = _trained(tiny_models, "activscalar", "mlp_out", {})
    _, _, decided = _trained(tiny_models, "activscalar", "mlp_out", {}, val_all=False)
    n = every[0]["n_cells"]
    assert {(r["kind"], r["split"]) for r in decided} == {("sufficiency", "val"), ("sufficiency", "test"),
                                                          ("necessity", "test"), ("strength", "test")}
    assert k90_bracket(decided, n) == k90_bracket(every, n)
    key = lambda r: (r["kind"], r["k"], r["beta"])  # noqa: E731
    assert sorted(map(key, (r for r in decided if r["split"] == "test"))) == \
        sorted(map(key, (r for r in every if r["split"] == "test")))
    assert [r for r in decided if r["split"] == "val"] == [r for r in every if r["split"] == "val"
                                                          and r["kind"] == "sufficiency"]
    full, _, _ = analysis_points(n, True, list(STRENGTHS), 2, 0.1, val_all=True)
    lean, on_val, on_test = analysis_points(n, True, list(STRENGTHS), 2, 0.1)
    assert len(decided) <= lean < full and on_val < on_test


def test_bf16_analysis_lies_inside_fp32_intervals(tiny_models):
    """A unit trained in bf16 is analysed on the bf16 model against its own logits (analysis.precision: train):
    the model and the trial are exact at the curves' ends, and every point lies inside the fp32 analysis'
    95% interval over prompts."""
    unit, result, fp32 = _trained(tiny_models, "activscalar", "mlp_out", {}, "bf16", precision="fp32")
    tensors = {k: torch.as_tensor(v) for k, v in result.tensors.items()}
    bf16 = analyze_trial(tiny_models["tiny-llama"], unit, tensors, val_all=True, precision="train")
    assert unit.precision == "bf16"
    n = fp32[0]["n_cells"]
    for split in ("val", "test"):
        _is_model(_row(bf16, "sufficiency", split, k=0))
        _is_model(_row(bf16, "strength", split, beta=0.0))
    ref = {(r["kind"], r["split"], r["k"], r["beta"]): r for r in fp32}
    grid = set(k_grid(n))
    compared = 0
    for row in bf16:
        twin = ref.get((row["kind"], row["split"], row["k"], row["beta"]))
        if twin is None or (row["k"] is not None and row["k"] not in grid):
            continue  # a bisection point of one precision only
        for name in ("flip_rate", "ld_after", "kl_other"):
            assert twin[f"{name}_lo"] - 1e-6 <= row[name] <= twin[f"{name}_hi"] + 1e-6, (row, name, twin)
        compared += 1
    assert compared >= 2 * len(grid) + len(STRENGTHS)


def test_narrowing_rounds_and_points():
    assert k90_rounds(2.0, 0.1) == 3 and k90_rounds(4.0, 0.1) == 4 and k90_rounds(1.05, 0.1) == 0
    assert split_point(16, 64) == 32 and split_point(16, 32) == 23  # the geometric middle
    assert split_point(4, 6) == 5 and split_point(0, 2) == 1 and split_point(1, 2) is None
    rows = [{"kind": "sufficiency", "split": "val", "k": k, "flip_rate": f}
            for k, f in ((0, 0.0), (1, 0.1), (2, 0.5), (4, 0.95), (8, 1.0))]
    assert k90_bracket(rows, 8) == (2, 4)
    assert k90_bracket([dict(r, flip_rate=0.0) for r in rows], 8) is None  # a trial that flips nothing
    # 18 of 20 prompts as a float32 mean is 0.89999998: it reaches 90%, as the page and the controls read it
    rows[2]["flip_rate"] = float(torch.tensor(18 / 20, dtype=torch.float32))
    assert k90_bracket(rows, 8) == (1, 2) and k90_of({r["k"]: r["flip_rate"] for r in rows}, 8) == 2


def test_strength_moves_ld_monotonically_on_a_scale(tiny_models):
    """For a single scaled cell the logit difference is a smooth function of beta; with
    alpha = 1 + beta(alpha - 1) the sweep passes through the model at 0 and the trial at 1."""
    _, result, rows = _trained(tiny_models, "activscalar", "mlp_out", {})
    lds = [r["ld_after"] for r in sorted((r for r in rows if r["kind"] == "strength" and r["split"] == "val"),
                                         key=lambda r: r["beta"])]
    assert len(lds) == 9 and len(set(lds)) == 9  # every strength changes LD'


def test_keep_masks_rank_cells_by_effect():
    effects = torch.tensor([[0.5, 0.0, 2.0], [1.0, 0.1, 0.0]])  # [L=2, C=3]
    sufficiency, necessity = _keep_masks(effects, 2)
    assert sufficiency.shape == (2, 4)  # one extra column: roles val does not have
    assert sufficiency[:, :3].tolist() == [[False, False, True], [True, False, False]]
    assert (necessity[:, :3] == ~sufficiency[:, :3]).all()
    assert not sufficiency[:, 3].any() and necessity[:, 3].all()
    full, none = _keep_masks(effects, 6)
    assert full.all() and not none.any()
    assert k_grid(6) == [0, 1, 2, 4, 6] and k_grid(1) == [0, 1] and k_grid(8) == [0, 1, 2, 4, 8]


def test_bias_only_dynscalar_has_no_w_parameters(tiny_models):
    loaded = tiny_models["tiny-llama"]
    refs = resolve_site(loaded.model, "mlp_out", [0, 1])
    control = build_intervention("dynscalar_bias", refs, 2, None)
    assert isinstance(control, DynScalarBias) and method_class("dynscalar_bias") is DynScalarBias
    names = [name for name, _ in control.named_parameters()]
    assert names and all(name.startswith("biases.") for name in names), names
    assert not hasattr(control, "weights")
    assert control.n_params == 2  # one scale per layer
    assert set(control.artifact_tensors(0)) == {"bias"}
