"""bf16 training on the embedded model lands within the fp32 run's intervals: per seed, the bf16
trial's test flip_rate and kl_other lie in the fp32 trial's bootstrap interval over test prompts,
and its moved cells overlap the fp32 trial's at least as much as two fp32 seeds overlap."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from storage.report import bootstrap_ci
from storage.seeds import jaccard
from workers.interventions import ActivScalar
from workers.precision import cpu_has_native_bf16
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)


def _trials(loaded, precision: str):
    spec = UnitSpec("smollm2-135m", TaskSpec.make("ioi", {"n": 160}), "mlp_out", tuple(range(18, 30)),
                    ActivScalar.method, TrainSettings(steps=40, batch_size=16, precision=precision))
    unit = prepare_unit(loaded, spec)
    return unit, train_trials(loaded, unit, [Hyper(lr=0.05, lambda_min=0.01, seed=s) for s in SEEDS])


def _moved(result) -> set:
    return {(r["layer"], r["position"]) for r in result.scalars if r["moved"]}


def test_bf16_stays_within_the_fp32_intervals(embedded_model):
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: auto trains in fp32 here")
    unit32, fp32 = _trials(embedded_model, "fp32")
    unit16, bf16 = _trials(embedded_model, "bf16")
    assert unit16.precision == "bf16" and [p.example.prompt for p in unit16.splits["test"].examples] == \
        [p.example.prompt for p in unit32.splits["test"].examples]
    for a, b in zip(fp32, bf16):
        assert a.ok and b.ok and b.precision == "bf16"
        for metric, key in (("flip_rate", "flipped"), ("kl_other", "kl_other")):
            low, high = bootstrap_ci(np.array([float(p[key]) for p in a.predictions]))
            value = b.metrics["test"][metric]
            print(f"seed {a.hyper.seed} test {metric}: fp32 {a.metrics['test'][metric]:.4f} [{low:.4f}, {high:.4f}], "
                  f"bf16 {value:.4f}")
            assert low <= value <= high, (metric, value, low, high)
    across_precision = [jaccard(_moved(a), _moved(b)) for a, b in zip(fp32, bf16)]
    across_seeds = [jaccard(_moved(a), _moved(b)) for a, b in itertools.combinations(fp32, 2)]
    print(f"moved-cell overlap: bf16 vs fp32 (same seed) {across_precision}, fp32 seed vs seed {across_seeds}")
    assert np.mean(across_precision) >= min(across_seeds)
