"""The claims' rules proven on known truth: runs built by hand (tests/findings_truth.py) where each claim C1-C6 is
true, false, or underpowered by construction, and the engine must say supported, not supported or inconclusive."""
from __future__ import annotations

import numpy as np
import pytest

from reports.claims import c1, c2, c3, c4, c5, c6
from reports.engine import Outcome, claim_outcome
from tests.findings_truth import GRID, Outcomes, Tables, prompts, seeds

SUP, NOT, INC = Outcome.SUPPORTED, Outcome.NOT_SUPPORTED, Outcome.INCONCLUSIVE


def verdict(result) -> Outcome:
    (model,) = result.models()
    return result.verdict(model)


# --- C1 ------------------------------------------------------------------------------------------------------------

def c1_run(n: int, kl_ratio: float, spread: float = 20.0, base_accuracy: float = 1.0):
    """ActivScalar and SteerVec flip every prompt; ActivScalar's kl_other is kl_ratio times SteerVec's."""
    t, rng = Tables(), np.random.default_rng(1)
    test = prompts("ioi", n)
    for method, kl in (("activscalar", 0.2 * kl_ratio), ("steervec", 0.2)):
        u = t.unit(method, test, base_accuracy=base_accuracy)
        ids = seeds(t, u, test, rng, 1.0, kl)
        for trial_id in ids:  # the rows' kl_other exactly kl on average, so that the ratio is known
            rows = [p for p in t.rows["predictions"] if p["trial_id"] == trial_id]
            draws = rng.gamma(spread, 1 / spread, len(rows))
            for p, d in zip(rows, draws / draws.mean()):
                p["kl_other"] = kl * d
    return t.run()


@pytest.mark.parametrize("n, ratio, spread, expected", [(200, 1.0, 20.0, SUP), (200, 2.0, 20.0, NOT), (12, 1.2, 2.0, INC)])
def test_c1_known_truth(n, ratio, spread, expected):
    result = c1.evaluate(c1_run(n, ratio, spread))
    assert verdict(result) == expected, [(c.name, c.shown, c.outcome) for u in result.units for c in u.conditions]
    kl = result.units[0].conditions[1]
    assert kl.estimate.value == pytest.approx(ratio, rel=1e-9)
    if expected == INC:
        assert kl.outcome == INC and "prompt clusters" in kl.resolve, kl


def test_c1_says_when_the_matched_trial_is_not_a_replicated_one():
    """The trial within the KL budget can be a search trial other than the selected one: it has no replicates, and
    search.replicates would not give it any, so the page says what would (not 'more search.replicates')."""
    t, rng = Tables(), np.random.default_rng(4)
    test = prompts("ioi", 200)
    for method in ("activscalar", "steervec"):
        u = t.unit(method, test)
        seeds(t, u, test, rng, 1.0, 0.2)
        if method == "activscalar":  # as effective, fainter on val, but more sites moved: not selected
            t.trial(u, 1, test, Outcomes.draw(rng, len(test), 1.0, 0.2), val_kl=0.01, sites_moved=50)
    result = c1.evaluate(t.run())
    flip = result.units[0].conditions[0]
    assert flip.outcome == INC and "replicate(s)" in flip.why, flip
    assert "ActivScalar t00001" in flip.resolve and "selected trial" in flip.resolve, flip.resolve
    assert "SteerVec" not in flip.resolve  # SteerVec's matched trial is its selected one, replicated


def test_c1_keeps_a_unit_near_chance_apart():
    result = c1.evaluate(c1_run(200, 1.0, base_accuracy=0.55))
    assert not result.units and "near chance" in result.apart[0]
    assert claim_outcome([]) == INC  # no unit judged: inconclusive, not a failure


# --- C2 ------------------------------------------------------------------------------------------------------------

def c2_run(steer_per_cell: int, k_active: int, k_steer: int):
    """Sufficiency curves reaching 90% of the effect exactly at k_active (ActivScalar) and k_steer (SteerVec)."""
    t, rng = Tables(), np.random.default_rng(2)
    test = prompts("ioi", 40)
    for method, per_cell, k90 in (("activscalar", 1, k_active), ("steervec", steer_per_cell, k_steer)):
        u = t.unit(method, test, params_per_cell=per_cell)
        for trial_id in seeds(t, u, test, rng, 1.0, 0.2):
            t.sufficiency(trial_id, {k: (1.0 if k >= k90 else 0.5 * k / k90) for k in GRID + [420]}, 420)
    return t.run()


@pytest.mark.parametrize("per_cell, ka, ks, expected", [(576, 8, 8, SUP), (5, 8, 8, NOT), (30, 64, 16, INC)])
def test_c2_known_truth(per_cell, ka, ks, expected):
    result = c2.evaluate(c2_run(per_cell, ka, ks))
    assert verdict(result) == expected, [(c.name, c.shown, c.outcome) for u in result.units for c in u.conditions]


# --- C3 ------------------------------------------------------------------------------------------------------------

def c3_run(top_flip: float | None, random_flip: float = 0.1, patched: bool = True):
    """An ActivScalar unit whose top 8 cells carry the effect (k90 = 8 of 420); with top-8 / random-8 controls
    (unless top_flip is None) and patching effects that follow |alpha - 1| (if patched)."""
    t, rng = Tables(), np.random.default_rng(3)
    test = prompts("ioi", 300)
    u = t.unit("activscalar", test)
    effects = 0.5 * np.exp(-np.arange(420) / 20)  # |alpha - 1| falling over the cells
    selected = seeds(t, u, test, rng, 1.0, 0.2, sites_moved=8, effects=effects * rng.uniform(0.9, 1.1, 420))
    rivals = 0.5 * np.exp(-np.arange(420) / 200)  # a search trial moving more cells at every threshold
    t.trial(u, 1, test, Outcomes.draw(rng, 300, 1.0, 0.3), sites_moved=420, effects=rivals)
    for trial_id in selected:
        t.sufficiency(trial_id, {k: (1.0 if k >= 8 else 0.1) for k in GRID + [420]}, 420)
    if top_flip is not None:
        for r in range(3):
            t.trial(u, 20 + r, test, Outcomes.draw(rng, 300, top_flip, 0.2), mask="top-8", mask_cells=8,
                    control_of=0)
            t.trial(u, 30 + r, test, Outcomes.draw(rng, 300, random_flip, 0.2), mask=f"random-8#{r}", mask_cells=8,
                    control_of=0)
    if patched:
        t.patch(u, effects * rng.uniform(0.8, 1.2, 420))
    return t.run()


@pytest.mark.parametrize("top, patched, expected", [(1.0, True, SUP), (0.5, True, NOT), (None, False, INC)])
def test_c3_known_truth(top, patched, expected):
    result = c3.evaluate(c3_run(top, 0.5 if expected == NOT else 0.1, patched))
    assert verdict(result) == expected, [(c.name, c.shown, c.outcome, c.why) for u in result.units
                                         for c in u.conditions]
    few, moved = result.units[0].conditions[1], result.units[0].conditions[3]
    assert few.outcome == SUP and moved.outcome == SUP  # k90 = 8 of 420; the same trial at every moved threshold
    if expected == INC:
        assert {c.why for c in result.units[0].conditions if c.outcome == INC} == {"not measured"}


def test_c3_another_threshold_selecting_another_trial_is_not_the_same_result():
    """Two search trials that move as many cells at 0.1 but not at 0.05: the selection at 0.05 picks the other."""
    t, rng = Tables(), np.random.default_rng(4)
    test = prompts("ioi", 40)
    u = t.unit("activscalar", test)
    spread = np.r_[np.full(8, 0.5), np.full(412, 0.07)]  # moves 420 cells at 0.05, 8 at 0.1
    tight = np.r_[np.full(9, 0.5), np.full(411, 0.0)]  # moves 9 at every threshold
    seeds(t, u, test, rng, 1.0, 0.2, sites_moved=8, effects=spread)
    t.trial(u, 1, test, Outcomes.draw(rng, 40, 1.0, 0.3), sites_moved=9, effects=tight)
    moved = c3.moved_at(t.run(), t.run().selected.iloc[0])
    assert moved.outcome == INC and "0.05: t00001" in moved.shown and "t00001" in moved.resolve


# --- C4 ------------------------------------------------------------------------------------------------------------

def c4_run(betas: list[float], at_zero: float = 0.0):
    t, rng = Tables(), np.random.default_rng(5)
    test = prompts("ioi", 40)
    u = t.unit("activscalar", test)
    for trial_id in seeds(t, u, test, rng, 1.0, 0.2):
        t.strength(trial_id, betas + [1.5, 2.0], at_zero=at_zero)
    return t.run()


@pytest.mark.parametrize("betas, at_zero, expected", [
    (list(np.linspace(-1, 1, 13)), 0.0, SUP), (list(np.linspace(-1, 1, 13)), 0.5, NOT),
    ([-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0], 0.0, INC)])
def test_c4_known_truth(betas, at_zero, expected):
    result = c4.evaluate(c4_run([float(round(b, 6)) for b in betas], at_zero))
    assert verdict(result) == expected, [(c.name, c.shown, c.outcome) for u in result.units for c in u.conditions]
    assert any("beta 2" in line for line in result.extra)  # beyond 1: shown apart, not judged
    if expected == INC:
        assert "only 7 betas" in result.units[0].conditions[0].why


# --- C5 ------------------------------------------------------------------------------------------------------------

def c5_run(n_trials: int, slopes: dict[str, float]):
    """An ActivScalar unit per task whose search trials step up kl_other by 0.05 and sites moved by 10 and the
    flip_rate by slope * 0.05 (a negative slope: more effective AND more faithful, no trade-off)."""
    t, rng = Tables(), np.random.default_rng(6)
    for task, slope in slopes.items():
        test = prompts(task, 400)
        u = t.unit("activscalar", test, task=task)
        for j in range(n_trials):
            flip = 0.5 + slope * 0.05 * (j - n_trials / 2)
            t.trial(u, j, test, Outcomes.draw(rng, 400, flip, 0.05 + 0.05 * j), sites_moved=10 + 10 * j,
                    val_flip=1.0)
    return t.run()


@pytest.mark.parametrize("n_trials, slopes, expected", [
    (8, {"ioi": 1.8, "ccc": 0.6}, SUP), (8, {"ioi": -1.8, "ccc": -1.8}, NOT), (2, {"ioi": 1.8, "ccc": 0.6}, INC)])
def test_c5_known_truth(n_trials, slopes, expected):
    result = c5.evaluate(c5_run(n_trials, slopes))
    assert verdict(result) == expected, [(u.unit, c.name, c.shown, c.outcome) for u in result.units
                                         for c in u.conditions]
    if expected == SUP:  # the two tasks' slopes differ: one item beside the two fronts
        assert [u.unit for u in result.units][-1] == "ccc vs ioi / mlp_out / ActivScalar"  # tasks sorted by name


def test_c5_one_task_cannot_show_that_tasks_differ():
    result = c5.evaluate(c5_run(8, {"ioi": 1.8}))
    assert verdict(result) == INC and result.units[-1].conditions[0].why == "the run has one in-distribution task"


# --- C6 ------------------------------------------------------------------------------------------------------------

def c6_run(templates: tuple[str, ...], per_template: int, dyn_kl: float, bias_kl: float, folds: bool = False):
    """DynScalar and its bias-only control on held-out templates (the same flips), and DynScalar in distribution.
    `folds`: each of the 3 replicates tests its own third of the held-out prompts (fold replicates)."""
    t, rng = Tables(), np.random.default_rng(7)
    held = prompts("ioi", per_template * len(templates), templates=templates)
    indist = prompts("ioi", 300, seed=1)
    d = t.unit("dynscalar", indist)
    seeds(t, d, indist, rng, 0.95, 0.1)
    options = {"heldout_templates": list(templates)}
    dyn, bias = t.unit("dynscalar", held, options=options), t.unit("dynscalar_bias", held, options=options)
    tested = [held.iloc[r::3] if folds else held for r in range(3)]
    flips = [(rng.random(len(part)) < 0.9).astype(float) for part in tested]
    for unit_id, kl in ((dyn, dyn_kl), (bias, bias_kl)):
        for r, (part, f) in enumerate(zip(tested, flips)):
            t.trial(unit_id, 0 if r == 0 else 10 + r, part, Outcomes(f, kl * rng.gamma(20, 1 / 20, len(part))),
                    replicate_of=None if r == 0 else 0)
    return t.run()


@pytest.mark.parametrize("templates, per_template, dyn_kl, bias_kl, expected", [
    (("a", "b", "c"), 100, 0.1, 0.3, SUP), (("a", "b", "c"), 100, 0.3, 0.1, NOT), (("a",), 33, 0.1, 0.3, INC)])
def test_c6_known_truth(templates, per_template, dyn_kl, bias_kl, expected):
    result = c6.evaluate(c6_run(templates, per_template, dyn_kl, bias_kl))
    assert verdict(result) == expected, [(c.name, c.shown, c.outcome) for u in result.units for c in u.conditions]
    if expected == INC:
        assert "1 held-out template(s) of 33 test prompts" in result.units[0].conditions[0].shown


def test_c6_counts_the_held_out_prompts_its_fold_replicates_test_together():
    """Fold replicates each test a third of the 3 x 100 held-out prompts (about 33 per template): the unit is judged
    on their pool, 100 distinct prompts per template, not on its selected trial's share."""
    result = c6.evaluate(c6_run(("a", "b", "c"), 100, 0.1, 0.3, folds=True))
    assert verdict(result) == SUP, [(c.name, c.shown, c.outcome) for u in result.units for c in u.conditions]
    assert "3 held-out template(s) of 100, 100, 100 test prompts" in result.units[0].notes


# --- the engine --------------------------------------------------------------------------------------------------

def test_a_claim_is_mixed_only_when_units_disagree_and_inconclusive_never_fails():
    assert claim_outcome([SUP, SUP]) == SUP and claim_outcome([NOT, NOT]) == NOT
    assert claim_outcome([SUP, NOT, INC]) == Outcome.MIXED
    assert claim_outcome([SUP, INC]) == INC and claim_outcome([NOT, INC]) == INC and claim_outcome([INC]) == INC


def test_a_run_with_two_models_is_judged_per_model():
    t, rng = Tables(), np.random.default_rng(8)
    test = prompts("ioi", 200)
    for model, ratio in (("m1", 1.0), ("m2", 2.0)):
        for method, kl in (("activscalar", 0.2 * ratio), ("steervec", 0.2)):
            u = t.unit(method, test, model=model)
            seeds(t, u, test, rng, 1.0, kl)
    result = c1.evaluate(t.run())
    assert result.models() == ["m1", "m2"]
    assert result.verdict("m1") == SUP and result.verdict("m2") == NOT
    assert [u.unit for u in result.units] == ["m1 / ioi / mlp_out", "m2 / ioi / mlp_out"]


def test_c3_draws_its_controls_and_the_scalars_beside_the_patching_map(tmp_path):
    """The figure data: every control of the selected trial (top and random families at their k) and, per cell, the
    selected trial's |alpha - 1| beside the patching effect; the page links the maps, which are drawn."""
    from reports import findings
    run = c3_run(1.0, 0.1, True)
    result = c3.evaluate(run)
    controls, maps = result.figure["controls"], result.figure["maps"]
    assert sorted(controls.family.unique()) == ["random", "top"] and set(controls.k) == {8.0}
    assert len(controls) == 6 and controls[controls.family == "top"].test_flip_rate.mean() > 0.8
    assert maps.groupby("kind").size().to_dict() == {"patching": 420, "scalars": 420}
    by_cell = maps.pivot_table(index=["layer", "column"], columns="kind", values="value")
    assert by_cell.corr(method="spearman").loc["scalars", "patching"] > 0.9  # built to follow each other
    assert "maps" not in c3.evaluate(c3_run(1.0, 0.1, False)).figure  # nothing to compare: no maps
    page = findings.render_run(run, tmp_path / "findings.md", tmp_path / "figures", source="Built by hand.")
    assert "![C3: the scalars beside the patching map](figures/c3-maps.png)" in page
    assert (tmp_path / "figures" / "c3-maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_k90s_bracket_names_what_would_narrow_it():
    """A coarse grid near k90 asks for a finer one; a grid already within 10% names the val prompts' bands instead
    (the committed run's k90 brackets straddle C3's 5% because the bands over ~33 val prompts are wider than 10%)."""
    from reports.claims.common import FINE_GRID, Reach

    coarse = Reach(16, 5, 64, 270, (16,), grid_ratio=4.0)
    fine = Reach(14, 9, 270, 270, (14, 16), grid_ratio=14 / 13)
    assert coarse.resolve().startswith("a finer k grid near k90 (neighbouring k now up to 4 times apart)")
    assert fine.resolve().startswith("more val prompts") and "finer k grid" not in fine.resolve()
    assert Reach(14, 9, 20, 270, (14,), grid_ratio=FINE_GRID).resolve().startswith("more val prompts")
