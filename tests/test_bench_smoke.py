"""Smoke run of the benchmark's --quick mode: it runs and ends with one TARGET line per target."""
from __future__ import annotations

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
