"""`actscale plan` (orchestrator/plan_cmd.py, costs.py, calibration.py): its counts are what a sweep then
runs, its calibration is cached per host and model, and it imports no torch until it measures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.costs import Piece, Speed, UnitCost, asha_schedule, batches, model_wall
from orchestrator.units import Phase
from tests.sweeps import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def calibration_dir(tmp_path, monkeypatch):
    path = tmp_path / "calibration"
    monkeypatch.setenv("ACTSCALE_CALIBRATION", str(path))
    return path


def _plan(args: list[str], capsys) -> dict:
    from orchestrator.cli import main

    assert main(["plan", *args, "--json"]) == 0
    out = capsys.readouterr()
    return dict(json.loads(out.out), stderr=out.err)


def _counting_sweep(tmp_path: Path, **search) -> Path:
    return write_config(tmp_path / "sweep.yaml", tiny_config(
        models=["tiny-llama"], tasks=[{"name": "ioi", "options": {"n": 60}}], layers=[[1, 2]],
        methods=["activscalar", "dynscalar"], train={"steps": 4, "batch_size": 8, "filter": "none"},
        search={"n_trials": 3, "batch": 2, "replicates": 2, **search}, analysis={"k_step": 2, "k90_within": None}))


# ----------------------------------------------------------------- the pure parts
def test_asha_with_the_whole_search_in_one_batch_is_exactly_successive_halving():
    (segments,) = asha_schedule([16], steps=60, min_steps=6, eta=3)
    assert [(n, live, alive) for n, live, alive in segments] == [(6, 16, 1), (12, 5, 1), (36, 1, 1), (6, 1, 1)]
    several = asha_schedule(batches(16, 4), steps=60, min_steps=6, eta=3)
    trial_steps = sum(n * live for batch in several for n, live, _ in batch)
    assert 16 * 6 < trial_steps < 0.4 * 16 * 60  # every trial reaches the first rung; few go on


def test_asha_with_min_kept_prices_the_floor_of_complete_trials():
    """16 trials in batches of 8, rungs at 5 and 20 of 40 steps, eta 4 (paper.yaml's search until 2026-12-07)."""
    def priced(min_kept: int) -> tuple[float, float]:
        schedule = asha_schedule(batches(16, 8), steps=40, min_steps=5, eta=4, min_kept=min_kept)
        return (sum(n * live for batch in schedule for n, live, _ in batch),
                sum(batch[-1][1] for batch in schedule))  # trial-steps, trials live after the last rung
    (steps_1, complete_1), (steps_5, complete_5) = priced(1), priced(5)
    assert complete_1 < 2 <= 5 <= complete_5
    assert 16 * 5 < steps_1 < steps_5 < 0.6 * 16 * 40


def test_the_schedule_hands_out_a_phases_pieces_to_every_worker_and_waits_for_the_phase():
    def unit(search: list[float]) -> UnitCost:
        return UnitCost(None, {Phase.DESCRIBE: [Piece(Phase.DESCRIBE, seconds=1)],  # type: ignore[arg-type]
                               Phase.SEARCH: [Piece(Phase.SEARCH, 2, seconds=s) for s in search],
                               Phase.REPLICATES: [Piece(Phase.REPLICATES, 1, seconds=3)]})
    assert model_wall([unit([10, 10, 10, 10])], workers=1) == 1 + 40 + 3
    assert model_wall([unit([10, 10, 10, 10])], workers=2) == 1 + 20 + 3
    # two units on two workers: both described (1), the first unit's search on both (11), its replicate beside
    # the second unit's first search piece (14, 21), its second piece (24), then its replicate (27)
    assert model_wall([unit([10, 10]), unit([10, 10])], workers=2) == 27


def test_a_step_time_is_linear_in_the_live_trials_and_scales_with_the_layers_run():
    speed = Speed({(32, 1): 1.0, (32, 4): 2.5}, eval_row_s=0.01, prepare_prompt_s=0.0, start_s=0.0, load_s=0.0,
                  n_layers=9)
    assert speed.step(32, 1) == 1.0 and speed.step(32, 4) == 2.5 and speed.step(32, 2) == 1.5
    assert speed.step(32, 0) == 0.0
    assert speed.step(32, 1, first_layer=5) == pytest.approx(0.5)  # from layer 5: 5 of the 10 "layers"
    assert speed.step(64, 2) == pytest.approx(2.5)  # twice the prompts: as twice the trials


def test_a_unit_trained_in_fp32_is_not_priced_for_its_own_logits():
    """bf16 training scores the analysis' points against the training model's own logits of val and test
    (one forward per prompt and replicate); fp32 training reads the evaluation's logits, so the plan counts
    no such rows (workers/prepare.py give_own_logits only runs where the models differ)."""
    from orchestrator.calibration import SpeedRecord
    from orchestrator.costs import Costing, UnitFacts, analysis_work
    from orchestrator.plan import plan_units
    from search_spaces.config import parse_config

    config = parse_config(tiny_config(search={"n_trials": 2, "replicates": 3}))
    unit = next(iter(plan_units(config, lambda model: 2)))
    facts = UnitFacts(total=60, n_train=18, n_val=10, n_test=12, n_cells=56)
    record = dict(model="m", host="h", device="cpu", threads=2, measured_at="2026-12-06T00:00:00", start_s=0.0,
                  load_s=0.0, prepare_prompt_s=0.0, eval_row_s=0.01, n_layers=2, first_layer=0,
                  steps={"8x1": 1.0}, analysis_row_s=0.01)
    fp32 = SpeedRecord(precision="fp32", **record).speed()  # type: ignore[arg-type]
    bf16 = SpeedRecord(precision="bf16", **record).speed()  # type: ignore[arg-type]
    assert fp32.trains_fp32 and not bf16.trains_fp32
    (piece32,) = analysis_work(Costing(config, unit, facts, fp32))
    (piece16,) = analysis_work(Costing(config, unit, facts, bf16))
    own_rows = 3 * (10 + 12)  # replicates x (val + test)
    assert piece16.seconds - piece32.seconds == pytest.approx(own_rows * 0.01)
    assert piece16.prompt_forwards == piece32.prompt_forwards


# ----------------------------------------------------------------- against a real sweep
@pytest.mark.slow
def test_the_plans_counts_are_what_the_sweep_then_runs(tmp_path, calibration_dir, capsys, ray_session):
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import load_config
    from storage.query import load

    sweep = _counting_sweep(tmp_path)
    plan = _plan([str(sweep)], capsys)
    assert "calibrating tiny-llama" in plan["stderr"]
    Coordinator(load_config(sweep), tmp_path / "run", quiet=True).run()
    trials, curves = load(tmp_path / "run", "trials"), load(tmp_path / "run", "curves")
    rows = {r["unit_id"]: r for r in plan["units"]}
    assert set(rows) == set(trials.unit_id)
    for unit_id, row in rows.items():
        mine = trials[trials.unit_id == unit_id]
        assert row["search_trials"] == mine.replicate_of.isna().sum() == 3
        assert row["replicates_trials"] == mine.replicate_of.notna().sum() == 1
        assert row["trial_steps"] == mine.steps_done.sum() == 4 * 4
        assert row["analysis_points"] == (curves.unit_id == unit_id).sum() > 0
    assert plan["totals"]["trial_steps"] == trials.steps_done.sum()
    assert plan["wall_s"]["this_machine"] > 0


@pytest.mark.slow
def test_with_asha_the_plan_expects_fewer_trial_steps_and_the_run_prunes(tmp_path, calibration_dir, capsys, ray_session):
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import load_config
    from storage.query import load

    config = tiny_config(
        models=["tiny-llama"], tasks=[{"name": "ioi", "options": {"n": 120}}], layers=[[1, 2, 3]],
        search={"n_trials": 8, "batch": 4, "pruner": {"kind": "asha", "min_steps": 2, "eta": 3},
                "space": {"lr": {"low": 1e-7, "high": 0.3, "log": True}}},
        train={"steps": 20, "batch_size": 16, "filter": "none", "check_prompts": 24}, analysis={"enabled": False})
    sweep = write_config(tmp_path / "sweep.yaml", config)
    plan = _plan([str(sweep)], capsys)
    (row,) = plan["units"]
    assert row["search_trials"] == 8 and 8 * 2 <= row["trial_steps"] < 0.5 * 8 * 20
    Coordinator(load_config(sweep), tmp_path / "run", quiet=True).run()
    trials = load(tmp_path / "run", "trials")
    measured = trials.steps_done.sum()
    assert 8 * 2 <= measured < 8 * 20 and (trials.status == "pruned").sum() >= 3
    print(f"asha on a tiny sweep: plan {row['trial_steps']:.1f} trial-steps, measured {measured}")


# ----------------------------------------------------------------- the calibration cache
def test_the_calibration_is_cached_reused_and_measured_again_on_request(tmp_path, calibration_dir, capsys):
    sweep = _counting_sweep(tmp_path)
    first = _plan([str(sweep)], capsys)
    assert "calibrating tiny-llama" in first["stderr"]
    (speed_file,) = [p for p in calibration_dir.rglob("tiny-llama.json") if p.parent.name != "facts"]
    facts = calibration_dir / "facts" / "tiny-llama.json"
    assert facts.is_file() and len(json.loads(facts.read_text())["units"]) == 2  # fixed length, any length
    stamp = json.loads(speed_file.read_text())["measured_at"]
    again = _plan([str(sweep)], capsys)
    assert again["stderr"] == "" and json.loads(speed_file.read_text())["measured_at"] == stamp
    assert again["units"] == first["units"]
    renewed = _plan([str(sweep), "--calibrate"], capsys)
    assert "calibrating tiny-llama" in renewed["stderr"]
    assert json.loads(speed_file.read_text())["measured_at"] != stamp
    wider = _counting_sweep(tmp_path, batch=3)  # a K not measured yet: its steps are measured
    assert "calibrating tiny-llama on this machine: its speed" in _plan([str(wider)], capsys)["stderr"]


def test_a_calibration_from_another_machine_is_used_and_a_bad_one_refused(tmp_path, calibration_dir, capsys):
    from orchestrator.cli import main

    sweep = _counting_sweep(tmp_path)
    here = _plan([str(sweep), "--workers", "2"], capsys)
    (speed_file,) = [p for p in calibration_dir.rglob("tiny-llama.json") if p.parent.name != "facts"]
    record = json.loads(speed_file.read_text())
    record.update(host="gpu-node", device="cuda", steps={k: v / 10 for k, v in record["steps"].items()},
                  eval_row_s=record["eval_row_s"] / 10)
    other = tmp_path / "gpu.json"
    other.write_text(json.dumps(record))
    there = _plan([str(sweep), "--calibration", str(other)], capsys)
    assert there["stderr"] == "" and "on gpu-node (cuda" in there["calibrations"]["tiny-llama"]
    assert sum(r["seconds"] for r in there["units"]) < sum(r["seconds"] for r in here["units"])
    assert here["wall_s"]["2_workers"] <= here["wall_s"]["this_machine"]
    other.write_text("{}")
    assert main(["plan", str(sweep), "--calibration", str(other)]) == 2
    assert "not a calibration file" in capsys.readouterr().err


def test_plan_imports_no_torch_until_it_has_to_measure(tmp_path, calibration_dir, capsys):
    sweep = _counting_sweep(tmp_path)
    code = ("import sys; from orchestrator.cli import main; main(['plan', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACTSCALE_CALIBRATION": str(calibration_dir)}

    def plan_imports() -> str:
        done = subprocess.run([sys.executable, "-c", code, str(sweep)], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]
    assert plan_imports() == "TORCH"  # nothing cached: it measures
    assert plan_imports() == "NO TORCH"  # cached: plain arithmetic


def test_the_full_studys_shape_is_planned(tmp_path, calibration_dir, capsys):
    """A stand-in of search_spaces/study.yaml's shape on tiny models: both models, >= 16 search trials with
    ASHA, 5 replicates, 300 steps, every site and method, analyses."""
    config = tiny_config(
        models=["tiny-llama", "tiny-gemma3"],
        tasks=[{"name": "ioi", "options": {"n": 60}}, {"name": "ccc", "options": {"n": 60},
                                                        "sites": ["mlp_out", "attn_out"]}],
        sites=["mlp_out", "attn_out", "head"], methods=["activscalar", "steervec", "dynscalar"],
        search={"sampler": "nsga2", "n_trials": 16, "batch": 4, "replicates": 5,
                "pruner": {"kind": "asha", "min_steps": 20, "eta": 3}},
        train={"steps": 300, "batch_size": 16, "filter": "none"}, analysis={"k_step": 4})
    plan = _plan([str(write_config(tmp_path / "study.yaml", config)), "--workers", "8"], capsys)
    units = plan["units"]
    assert len(units) == 2 * (3 * 3 + 2 * 3)
    assert all(u["search_trials"] == 16 and u["replicates_trials"] == 4 for u in units)
    assert all(4 * 300 < u["trial_steps"] < 0.5 * 20 * 300 for u in units)  # replicates in full, search pruned
    assert Counter(u["unit"].split("/")[0] for u in units) == {"tiny-llama": 15, "tiny-gemma3": 15}
    assert plan["wall_s"]["8_workers"] < plan["wall_s"]["this_machine"]
