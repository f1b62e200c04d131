"""Retrained mask controls (`controls:`, orchestrator/controls.py, workers/masks.py): a masked trial moves only
its mask's cells (every other cell stays exactly identity), a sweep with controls writes top-k, random-k and
structured control rows of each selected trial, exactly once across a resume, never selected, and the findings
page reads them; bad `controls:` values are refused by name."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from orchestrator.controls import ControlPlan, k_values, mask_cells, mask_count, mask_names
from orchestrator.units import Phase, Step, Tally, Targets, unit_left
from search_spaces.config import parse_config
from tests.sweeps import check_run, tiny_config
from workers.errors import UsageError
from workers.k90 import k90_of
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

LAYERS = (1, 2, 3)


def _unit(tiny_models, method: str = "activscalar", site: str = "mlp_out"):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 60}), site, LAYERS, method,
                    TrainSettings(steps=8, batch_size=16, filter="none", precision="fp32"))
    return prepare_unit(tiny_models["tiny-llama"], spec)


@pytest.mark.parametrize("method, identity, site", [("activscalar", 1.0, "mlp_out"), ("activscalar", 1.0, "head"),
                                                    ("steervec", 0.0, "mlp_out")])
def test_a_masked_trial_moves_only_its_cells(tiny_models, method, identity, site):
    unit = _unit(tiny_models, method, site)
    last = unit.n_positions - 1
    head = 0 if site == "head" else -1
    cells = ((2, last, head), (3, last, head), (1, 0, head))
    free = Hyper(lr=0.2, lambda_min=1e-4, seed=0)
    masked = Hyper(lr=0.2, lambda_min=1e-4, seed=0, mask="some", mask_cells=cells, control_of="x")
    unmasked, control = train_trials(tiny_models["tiny-llama"], unit, [free, masked])  # one batched forward
    assert unmasked.ok and control.ok
    inside = {c for c in cells}
    for row in control.scalars:
        at = (row["layer"], row["position"], -1 if row["head"] is None else row["head"])
        if at not in inside:
            assert row["value"] == identity and row["effect"] == 0.0, row  # exactly identity
    moved = [r for r in control.scalars if (r["layer"], r["position"], -1 if r["head"] is None else r["head"]) in inside]
    assert any(r["value"] != identity for r in moved)  # the mask's cells can move
    assert sum(r["value"] != identity for r in unmasked.scalars) > len(cells)  # the unmasked trial moves more
    if method == "activscalar":  # the stored tensor: 1 outside the mask, bit for bit
        alpha = control.tensors["alpha"]
        keep = torch.zeros_like(alpha, dtype=torch.bool)
        for layer, pos, h in cells:
            keep[(LAYERS.index(layer), pos) + ((h,) if site == "head" else ())] = True
        assert torch.equal(alpha[~keep], torch.ones_like(alpha[~keep]))
        l1 = float((alpha - 1).abs().sum())
        assert abs(control.metrics["val"]["l1"] - l1) < 1e-5  # minimality: only the masked cells count


def test_a_mask_off_the_grid_or_on_a_method_of_any_length_is_refused(tiny_models):
    unit = _unit(tiny_models)
    bad = Hyper(mask="bad", mask_cells=((9, 0, -1),), control_of="x")
    with pytest.raises(UsageError, match="not in the unit's grid"):
        train_trials(tiny_models["tiny-llama"], unit, [bad])
    with pytest.raises(UsageError, match="cannot be masked"):
        train_trials(tiny_models["tiny-llama"], _unit(tiny_models, "dynscalar"),
                     [Hyper(mask="m", mask_cells=((1, 0, -1),), control_of="x")])


def _cells(n_layers: int = 2, roles=("A", "IO", "B", "S1", "END")) -> list[dict]:
    return [dict(layer=layer, position=p, head=None, role=r, effect=float((layer * 7 + p * 3) % 5))
            for layer in range(n_layers) for p, r in enumerate(roles)]


def test_masks_are_named_from_the_config_and_drawn_reproducibly():
    plan = ControlPlan(ks=(2,), k_fractions=(0.1, 0.5), random_masks=3, structured=("final_position",
                                                                                    "names_and_final"),
                       methods=("activscalar",))
    assert k_values(plan, 10) == [1, 2, 5]
    assert k_values(ControlPlan(ks=(3, 10, 12)), 10) == [3]  # k = all cells: every random draw is the top-k mask
    names = mask_names(plan, 10)
    assert names[:4] == ["top-1", "random-1-s0", "random-1-s1", "random-1-s2"] and names[-1] == "names_and_final"
    assert len(names) == 3 * 4 + 2 and len(set(names)) == len(names)
    cells = _cells()
    top = mask_cells("top-2", cells, "t")
    ranked = sorted(cells, key=lambda c: -c["effect"])  # stable: ties in grid order, as the analysis ranks
    assert top == sorted((c["layer"], c["position"], -1) for c in ranked[:2])
    draws = [mask_cells(f"random-5-s{i}", cells, "t") for i in range(3)]
    assert all(len(d) == 5 for d in draws) and len({tuple(d) for d in draws}) == 3
    assert draws[0] == mask_cells("random-5-s0", cells, "t")  # the same draw again after a crash
    assert draws[0] != mask_cells("random-5-s0", cells, "other")
    assert mask_cells("final_position", cells, "t") == [(0, 4, -1), (1, 4, -1)]
    assert mask_cells("names_and_final", cells, "t") == [(0, 1, -1), (0, 3, -1), (0, 4, -1), (1, 1, -1), (1, 3, -1),
                                                          (1, 4, -1)]


def test_controls_are_the_phase_after_the_analysis():
    """Replicates, then the analysis (controls at k90 read its curves), then the controls."""
    targets = Targets(n_trials=2, replicates=2, analysis=True)
    assert unit_left(targets, Tally(search_finished=2, selected="t1", replicates_done=1, controls_wanted=6,
                                    controls_done=2, to_analyse=("t1",))).phase is Phase.ANALYSE
    left = unit_left(targets, Tally(search_finished=2, selected="t1", replicates_done=1, controls_wanted=6,
                                    controls_done=2, in_flight={Phase.CONTROLS: 3}))
    assert left.phase is Phase.CONTROLS and left.steps[Phase.CONTROLS] == Step(4, 1) and left.trials == 4
    assert unit_left(targets, Tally(search_finished=2, selected="t1", replicates_done=0, controls_wanted=6,
                                    to_analyse=("t1",))).phase is Phase.REPLICATES


def test_controls_at_k90_take_the_trials_own_k90():
    """k90 as the page reads it (the smallest scored k reaching 90% of the full val flip_rate, float32 slack);
    at_k90 adds a top-k and the random-k masks there, once where k90 is another control's k."""
    flips = {0: 0.0, 1: 0.2, 4: 0.5, 7: 0.89999997, 16: 1.0, 64: 1.0}
    assert k90_of(flips, 64) == 7 and k90_of({0: 0.0, 64: 0.0}, 64) is None and k90_of({4: 0.5}, 64) is None
    plan = ControlPlan(ks=(4,), random_masks=2, structured=("final_position",), methods=("activscalar",), at_k90=True)
    assert mask_names(plan, 64, 7) == ["top-4", "random-4-s0", "random-4-s1", "top-7", "random-7-s0", "random-7-s1",
                                       "final_position"]
    assert mask_names(plan, 64, 4) == mask_names(plan, 64, None) == mask_names(plan, 64)  # k90 already a k: once
    assert mask_count(plan, 64) == 7 and mask_count(ControlPlan(ks=(4,), random_masks=2), 64) == 3
    assert mask_names(ControlPlan(ks=(4,), random_masks=2), 64, 7) == ["top-4", "random-4-s0", "random-4-s1"]


@pytest.mark.parametrize("controls, message", [
    ({"enabled": True, "ks": [2], "random_masks": 0}, "random_masks"),
    ({"enabled": True, "structured": ["everything"]}, "unknown structured mask 'everything'; accepted: final_position"),
    ({"enabled": True, "ks": [2], "methods": ["dynscalar"]}, "method 'dynscalar' cannot be masked"),
    ({"enabled": True, "ks": [0]}, "each k must be at least 1"),
    ({"enabled": True, "k_fractions": [1.5]}, r"k_fractions \[1.5\]"),
    ({"enabled": True}, "needs ks, k_fractions, at_k90 or structured"),
    ({"enabled": True, "at_k90": True}, None),
    ({"enabled": True, "ks": [2], "mask": "x"}, "controls.mask: unknown key"),
])
def test_bad_controls_are_refused_by_name(controls, message):
    if message is None:  # at_k90 alone is a plan; without the analysis' curves it is refused by name
        parse_config(tiny_config(controls=controls))
        with pytest.raises(UsageError, match=r"controls.at_k90 needs the analysis' curves \(analysis.enabled: False"):
            parse_config(tiny_config(controls=controls, analysis={"enabled": False}))
        return
    with pytest.raises(UsageError, match=message) as info:
        parse_config(tiny_config(controls=controls))
    assert "controls" in str(info.value)


def test_accepted_methods_are_named():
    with pytest.raises(UsageError, match="accepted: activscalar, steervec"):
        parse_config(tiny_config(controls={"enabled": True, "ks": [2], "methods": ["dynscalar"]}))


CONTROLS = {"enabled": True, "ks": [2, 4], "random_masks": 5, "structured": ["final_position", "names_and_final"]}
PLAN = ControlPlan(tuple(CONTROLS["ks"]), (), 5, tuple(CONTROLS["structured"]), ("activscalar",))


def _check_controls(run, seeds: bool) -> list[dict]:
    """Each selected trial (with `seeds`, and each of its replicates) has a complete control per mask (top-k and
    random_masks random-k per k, the structured ones), exactly once, with its hyper-parameters and seed; no control
    is selected or counted twice."""
    from storage.query import run_sql
    from storage.store import read_table

    rows = read_table(run, "trials").table.to_pylist()
    assert not [i for i, c in Counter(r["trial_id"] for r in rows).items() if c > 1], "a trial id appears twice"
    controls = [r for r in rows if r["control_of"] is not None and r["status"] == "complete"]
    selected, _ = run_sql([run], "SELECT s.unit_id, s.trial_id, u.method FROM selected s JOIN units u USING (unit_id)")
    assert not set(selected.trial_id) & {r["trial_id"] for r in controls}  # never selected
    by_id = {r["trial_id"]: r for r in rows}
    for unit_id, chosen, method in zip(selected.unit_id, selected.trial_id, selected.method):
        if method != "activscalar":  # controls.methods: only activscalar
            assert not [r for r in controls if r["unit_id"] == unit_id]
            continue
        controlled = [chosen] + ([r["trial_id"] for r in rows if r["replicate_of"] == chosen
                                  and r["status"] == "complete"] if seeds else [])
        assert {r["control_of"] for r in controls if r["unit_id"] == unit_id} == set(controlled)
        for tid in controlled:
            _check_controls_of(by_id[tid], [r for r in controls if r["control_of"] == tid])
    return controls


def _check_controls_of(sel: dict, mine: list[dict]) -> None:
    names = Counter(r["mask"] for r in mine)
    assert set(names.values()) == {1}, names  # no mask trained twice
    assert sorted(names) == sorted(mask_names(PLAN, sel["sites_total"]))
    for r in mine:
        assert (r["lambda_faith"], r["lambda_min"], r["lr"], r["seed"], r["steps"], r["fold"], r["resample_train"]) == (
            sel["lambda_faith"], sel["lambda_min"], sel["lr"], sel["seed"], sel["steps"], sel["fold"],
            sel["resample_train"])  # the controlled trial's hyper-parameters, seed and data
        assert r["replicate_of"] is None and not r["pilot"]
        if r["mask"].startswith(("top-", "random-")):
            assert r["mask_cells"] == int(r["mask"].split("-")[1])
        assert r["sites_moved"] <= r["mask_cells"]
    for k in CONTROLS["ks"]:
        assert sum(r["mask"].startswith(f"random-{k}-") for r in mine) == 5


def _random_cells_differ(run) -> None:
    from storage.store import read_table

    scalars = read_table(run, "scalars").table.to_pandas()
    trials = read_table(run, "trials").table.to_pandas()
    randoms = trials[trials["mask"].fillna("").str.startswith("random-4-")]
    for _, group in randoms.groupby("control_of"):
        assert len(group) == 5
        for t in group.trial_id:  # each moved only cells of its own 4
            assert (scalars[scalars.trial_id == t].value != 1.0).sum() <= 4
    # the masks themselves: the draws differ (their cells are in Optuna's user attributes; here: the cells free)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from storage.run_dir import RunDir

    storage = JournalStorage(JournalFileBackend(str(RunDir(run).journal)))
    for unit_id in set(randoms.unit_id):
        study = optuna.load_study(study_name=unit_id, storage=storage)
        by_trial: dict[str, list[tuple]] = {}
        for t in study.get_trials():
            if str(t.user_attrs.get("mask", "")).startswith("random-4-"):
                by_trial.setdefault(t.user_attrs["control_of"], []).append(tuple(map(tuple, t.user_attrs["mask_cells"])))
        for draws in by_trial.values():
            assert len(set(draws)) == 5 and all(len(d) == 4 for d in draws)


@pytest.mark.slow
def test_a_sweep_with_controls_writes_each_control_once_and_resumes(tmp_path, ray_session):
    from orchestrator.coordinator import Coordinator
    from reports.claims.c3 import _controls, top_vs_random
    from reports.run import load_run

    config = parse_config(tiny_config(methods=["activscalar", "dynscalar"], search={"replicates": 2},
                                      controls=dict(CONTROLS, replicates=True), analysis={"enabled": False}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    check_run(run, n_trials=4, n_units=2, replicates=2)
    first = _check_controls(run, seeds=True)
    assert len({r["unit_id"] for r in first}) == 1  # only the activscalar unit has controls
    assert len(first) == 2 * (2 * 6 + 2)  # the selected trial's and its replicate's
    _random_cells_differ(run)
    Coordinator(config, run).run()  # a resume: every control is there, none runs again
    again = _check_controls(run, seeds=True)
    assert sorted(r["trial_id"] for r in again) == sorted(r["trial_id"] for r in first)
    check_run(run, n_trials=4, n_units=2, replicates=2)
    from orchestrator.sweep_cmds import unit_status

    status = unit_status(run)  # actscale status: the controls are neither search trials nor left
    assert all(r["phase"] == "done" and r["pending"] == 0 and r["done"] == 4 for r in status), status
    report = load_run(run)  # the findings page reads them
    row = next(r for r in report.selected.itertuples(index=False) if r.method == "activscalar")
    c = _controls(report, row)
    assert len(c) == len(first) and set(c.mask_cells[c["mask"].str.startswith("top-")]) == {2, 4}
    condition, k = top_vs_random(report, row, 3)  # (a) of claim C3: top-k against the random-k at the k nearest k90
    assert k in (2, 4) and "retrained top-k and random-k control trials" not in str(condition)


@pytest.mark.slow
def test_controls_at_k90_train_at_the_k_the_page_reads(tmp_path, ray_session):
    """controls.at_k90 on a sweep: the analysis runs first, the controls train top-k90 and random-k90 masks at the
    selected trial's own k90, and the page's C3 compares top-k with random-k at exactly k90 (its (b) can then be
    justified by (a)); a resume trains nothing more."""
    from orchestrator.coordinator import Coordinator
    from orchestrator.sweep_cmds import unit_status
    from reports.claims.c3 import top_vs_random
    from reports.claims.common import reach
    from reports.curves import FRACTION
    from reports.run import load_run
    from storage.store import read_table

    controls = {"enabled": True, "at_k90": True, "random_masks": 5}
    config = parse_config(tiny_config(methods=["activscalar"], controls=controls, train={"steps": 12}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    report = load_run(run)
    (row,) = list(report.selected.itertuples(index=False))
    k90 = reach(report.curves, [row.trial_id], FRACTION).k
    rows = read_table(run, "trials").table.to_pylist()
    masks = sorted(r["mask"] for r in rows if r["control_of"] == row.trial_id and r["status"] == "complete")
    n_cells = next(r["sites_total"] for r in rows if r["trial_id"] == row.trial_id)
    assert k90 is not None and 1 <= k90 < n_cells, (k90, n_cells)  # this sweep's trial has a k90 to control at
    assert masks == sorted([f"top-{k90}"] + [f"random-{k90}-s{i}" for i in range(5)])
    condition, k = top_vs_random(report, row, k90)
    assert k == k90 and "retrained top-k and random-k control trials" not in str(condition)
    Coordinator(config, run).run()  # a resume: every control is there, none runs again
    again = [r for r in read_table(run, "trials").table.to_pylist() if r["control_of"] is not None]
    assert sorted(r["mask"] for r in again) == masks
    status = unit_status(run)
    assert all(r["phase"] == "done" and r["pending"] == 0 for r in status), status


def _control_count(run) -> int:
    from storage.store import read_table

    try:
        rows = read_table(run, "trials").table.select(["status", "control_of"]).to_pylist()
    except Exception:  # noqa: BLE001 - directory not there yet
        return 0
    return sum(r["status"] == "complete" and r["control_of"] is not None for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_controls_exactly_once_after_sigkills_while_training_them(tmp_path):
    """One control at a time, the coordinator SIGKILLed while they train, then resumed: each mask has exactly
    one complete control, the ones cut off are `interrupted` rows that still name their mask and trial."""
    import random
    import time

    from storage.store import read_table
    from tests.procs import kill_session, start_coordinator, wait_for
    from tests.sweeps import write_config

    controls = {"enabled": True, "ks": [2], "random_masks": 5, "structured": ["final_position"]}
    cfg = write_config(tmp_path / "sweep.yaml", tiny_config(
        analysis={"enabled": False}, controls=controls, search={"n_trials": 2, "batch": 1},
        train={"steps": 60, "batch_size": 8, "filter": "none"}))
    run = tmp_path / "run"
    rng = random.Random(5)
    for _ in range(3):
        before = _control_count(run)
        proc = start_coordinator(["run", str(cfg), "--out", str(run), "--quiet"], tmp_path / "out.log")
        assert wait_for(lambda: _control_count(run) > before or proc.poll() is not None,  # noqa: B023
                        timeout=900)
        time.sleep(rng.uniform(0.1, 1.0))
        kill_session(proc)
    proc = start_coordinator(["resume", str(run), "--quiet"], tmp_path / "out.log")
    assert proc.wait(timeout=1500) == 0, (tmp_path / "out.log").read_text()[-3000:]
    check_run(run, n_trials=2, n_units=1)
    rows = read_table(run, "trials").table.to_pylist()
    done = Counter(r["mask"] for r in rows if r["control_of"] is not None and r["status"] == "complete")
    assert sorted(done) == sorted(["top-2", *[f"random-2-s{i}" for i in range(5)], "final_position"])
    assert set(done.values()) == {1}, done  # no mask trained twice
    cut = [r for r in rows if r["status"] == "interrupted" and r["pilot"] is False and r["control_of"] is not None]
    assert all(r["mask"] for r in cut) and not [r for r in rows if r["status"] == "failed"]
    assert cut, "no kill landed on a control"  # ... and each cut-off mask was trained again, once


def test_the_plan_counts_the_controls_trial_steps():
    from orchestrator.costs import Costing, Speed, UnitFacts, unit_cost
    from orchestrator.plan import plan_units

    config = parse_config(tiny_config(methods=["activscalar", "dynscalar"], controls=CONTROLS))
    speed = Speed({(8, 1): 1.0, (8, 4): 2.5}, eval_row_s=0.01, prepare_prompt_s=0.0, start_s=0.0, load_s=0.0,
                  n_layers=2)
    facts = UnitFacts(total=60, n_train=18, n_val=8, n_test=8, n_cells=56)
    for unit in plan_units(config, lambda model: 2):
        pieces = unit_cost(Costing(config, unit, facts, speed)).phases[Phase.CONTROLS]
        if unit.spec.method != "activscalar":
            assert pieces == []
            continue
        assert sum(p.trials for p in pieces) == 2 * 6 + 2  # per k: top and 5 random; 2 structured
        assert sum(p.trial_steps for p in pieces) == (2 * 6 + 2) * 3 and all(p.trials <= 2 for p in pieces)


@pytest.mark.slow
def test_a_fold_replicates_controls_train_on_its_fold(tmp_path, ray_session):
    from orchestrator.coordinator import Coordinator
    from storage.store import read_table

    config = parse_config(tiny_config(
        search={"n_trials": 2, "replicates": 2, "replicate_data": "folds"}, analysis={"enabled": False},
        train={"folds": 2, "filter": "none"},
        controls={"enabled": True, "ks": [3], "random_masks": 1, "replicates": True}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    check_run(run, n_trials=2, n_units=1, replicates=2)  # with check_folds
    rows = read_table(run, "trials").table.to_pylist()
    by_id = {r["trial_id"]: r for r in rows}
    controls = [r for r in rows if r["control_of"] is not None]
    assert sorted((by_id[r["control_of"]]["fold"], r["mask"]) for r in controls) == [
        (0, "random-3-s0"), (0, "top-3"), (1, "random-3-s0"), (1, "top-3")]
    assert all(r["fold"] == by_id[r["control_of"]]["fold"] and r["replicate_kind"] is None for r in controls)
    tested = Counter(p["trial_id"] for p in read_table(run, "predictions").table.to_pylist())
    assert all(tested[r["trial_id"]] == tested[r["control_of"]] for r in controls)  # tested on its trial's fold
