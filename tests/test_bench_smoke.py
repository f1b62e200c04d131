"""Smoke runs of the benchmarks' --quick modes: each runs and ends with one TARGET line per target."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Timeouts catch hangs only: sized for a 2-core machine with another CPU-heavy process on it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_throughput_quick_prints_targets(tmp_path):
    result = subprocess.run([sys.executable, "bench/throughput.py", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = [line for line in result.stdout.splitlines() if line.startswith("TARGET ")]
    assert [t.split(":")[0] for t in targets] == ["TARGET per_layer_speedup", "TARGET trainer_matmul_fraction",
                                                  "TARGET cpu_bf16_step", "TARGET orchestration_overhead"]
    pattern = re.compile(r"^TARGET [a-z0-9_]+: (\S+ \(target [^)]+\) (ok|short)|skipped \(.+\))$")
    assert all(pattern.match(t) for t in targets), targets
    assert (tmp_path / "results.json").exists()


def test_models_quick_prints_step_ratios():
    """bench/models.py: both embedded models' trainer steps side by side, fp32 and bf16, with the unembedding's share."""
    result = subprocess.run([sys.executable, "bench/models.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    targets = [line for line in lines if line.startswith("TARGET ")]
    assert [t.split(":")[0] for t in targets] == ["TARGET gemma_step_ratio_fp32", "TARGET gemma_step_ratio_bf16"]
    assert all(re.match(r"^TARGET [a-z0-9_]+: \S+x \(target <= 1.5x\) (ok|short)$", t) for t in targets), targets
    rows = [line for line in lines if re.match(r"^(smollm2-135m|gemma3-270m) ", line)]
    assert len(rows) == 4 and all("unembedding at the last position" in row for row in rows)


def test_pruning_wide_quick_prints_its_targets(tmp_path):
    """bench/pruning.py's wide case on a tiny model: the unpruned search with replicates beside the ASHA search."""
    out = tmp_path / "pruning.json"
    result = subprocess.run([sys.executable, "bench/pruning.py", "--quick", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = [line for line in result.stdout.splitlines() if line.startswith("TARGET ")]
    assert [t.split(":")[0] for t in targets] == ["TARGET pruning_steps", "TARGET pruning_quality"]
    assert re.match(r"^TARGET pruning_steps: [0-9.]+ \(target <= 0.40\) (ok|short)$", targets[0]), targets
    assert re.match(r"^TARGET pruning_quality: (within|outside) .* \(target within\) (ok|short)$", targets[1]), targets
    figures = json.loads(out.read_text())
    assert 0 < figures["ratio"] < 1 and set(figures["units"]) == {"mlp_out", "attn_out"}
    assert all(s["trials"] == 16 for s in figures["steps_asha"].values())
    # the unpruned search observed its rungs and pruned nothing; both orders were replayed on each unit
    assert all(s["pruned"] == 0 for s in figures["steps_full"].values())
    assert set(figures["replays"]) == {"mlp_out", "attn_out"}
    for replays in figures["replays"].values():
        assert set(replays) == {"front", "selection"}
        assert all(0 < r["share"] < 1 for r in replays.values())


def test_pruning_replay_on_the_committed_observed_searches(tmp_path):
    """bench/pruning.py --case replay on bench/data/pruning-observed (the unpruned searches of --seed 0 and 1, their
    rungs observed): the benchmark's ASHA keeps the unpruned winner in all 4 units within 0.40 of the trial-steps,
    and no setting of the selection rule's order does (the reason for the 'front' order)."""
    out = tmp_path / "replay.json"
    result = subprocess.run([sys.executable, "bench/pruning.py", "--case", "replay", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    spec = importlib.util.spec_from_file_location("pruning_bench", ROOT / "bench" / "pruning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    asha = bench.ASHA
    (mine,) = [r for r in rows if all(r[k] == asha[k] for k in ("min_steps", "eta", "min_kept", "rank"))]
    assert mine["same"] == mine["units"] == 4 and max(mine["shares"]) <= 0.40, mine
    affordable = [r for r in rows if r["rank"] == "selection" and max(r["shares"]) <= 0.40]
    assert affordable and all(r["same"] < r["units"] for r in affordable)


def test_plan_accuracy_quick_prints_its_target():
    result = subprocess.run([sys.executable, "bench/plan_accuracy.py", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = [line for line in result.stdout.splitlines() if line.startswith("TARGET ")]
    assert len(targets) == 1 and re.match(
        r"^TARGET plan_accuracy: predicted/measured = [0-9.]+ \(target within \+-35%\) (ok|short)$", targets[0])
    counts = [re.match(r"^  (\w+): plan (\d+)(?: \(grid alone (\d+)\))?, run (\d+)$", line)
              for line in result.stdout.splitlines() if ": plan " in line]
    assert len(counts) == 4 and all(counts), result.stdout
    for match in counts:
        name, plan, grid, run = match.groups()
        if name == "analysis_points":  # k90's bisection: at most the plan's full bisections, at least the grid
            assert grid is not None and int(grid) <= int(run) <= int(plan), match.group(0)
        else:
            assert plan == run, match.group(0)


def test_gpu_calibration_runs_on_a_model_built_from_its_config(tmp_path):
    """bench/gpu_calibrate.py (what bench/gpu.sh runs on a GPU machine without the weights): a model of a
    config's shape with random weights, timed by actscale's own calibration; the file it writes is one
    `actscale plan --calibration` reads."""
    from orchestrator.calibration import read_speed
    from workers.models import build_tiny

    model, tokenizer = build_tiny("llama")
    model.config.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "calibration.json"
    result = subprocess.run([sys.executable, "bench/gpu_calibrate.py", str(tmp_path / "model"), "tiny-llama",
                             "--out", str(out), "--device", "cpu", "--shapes", "4x1,4x2"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_speed(out, "tiny-llama")
    assert set(record.steps) == {"4x1", "4x2"} and all(s > 0 for s in record.steps.values())
    assert record.n_layers == 4 and "random weights" in record.host and record.eval_row_s > 0


def test_analysis_share_quick_prints_its_targets(tmp_path):
    """bench/analysis_share.py: the lean analysis beside the old one on the embedded model, and a run's recorded
    share (here a run directory with a phase_seconds.json written as a coordinator writes it)."""
    from storage.run_dir import RunDir

    RunDir(tmp_path).add_phase_seconds({"search": 70.0, "analyse": 30.0})
    result = subprocess.run([sys.executable, "bench/analysis_share.py", "--quick", "--run", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = [line for line in result.stdout.splitlines() if line.startswith("TARGET ")]
    assert [t.split(":")[0] for t in targets] == ["TARGET analysis_time_ratio", "TARGET analysis_share"]
    assert re.match(r"^TARGET analysis_time_ratio: [0-9.]+x \(target <= 0.32x\) (ok|short)$", targets[0]), targets
    assert targets[1] == "TARGET analysis_share: 0.300 of 100 worker seconds (target <= 0.2) short", targets
