"""The analyses' share of a sweep's worker time, and what the lean analysis saves, on the embedded model.

  a. a run directory's record (RUN_DIR/phase_seconds.json, written by every coordinator that ends): the
     analyses' seconds over all worker seconds; by default the committed paper run. A run made before the
     record existed has none: the line says so and counts as short.
  b. one trial of paper.yaml's ioi / mlp_out / all layers ActivScalar unit on the embedded model, analysed in
     one process the old way (every point on val and test, fp32) and the new (val: the sufficiency curve that
     k90 is decided on; points in the unit's training precision, bf16 on a CPU with native bf16), timed side
     by side; and the share that ratio would give a run whose analyses were BASELINE_SHARE of its worker time.

Usage: python bench/analysis_share.py [--run RUN_DIR] [--quick]
Ends with `TARGET analysis_share: <share> (target <= 0.2) ok|short` and `TARGET analysis_time_ratio: <new / old>
(target <= 0.32) ok|short` (0.32: the ratio that takes a 44% share to 20%).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.run_dir import RunDir  # noqa: E402
from workers.analysis import analyze_trial  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402
from workers.models import load_model  # noqa: E402
from workers.prepare import prepare_unit  # noqa: E402
from workers.tasks.base import TaskSpec  # noqa: E402
from workers.trainer import train_trials  # noqa: E402
from workers.unit import Hyper, TrainSettings, UnitSpec  # noqa: E402

SHARE_TARGET = 0.2
BASELINE_SHARE = 0.44  # the analyses' share of the paper run's wall when the issue was filed (fp32, every point)
PAPER_BETAS = (-1.0, -0.8333, -0.6667, -0.5, -0.3333, -0.1667, 0.0, 0.1667, 0.3333, 0.5, 0.6667, 0.8333, 1.0)
TEMPLATES = ["when", "after", "while", "when_baba", "after_baba", "while_baba"]


def ratio_target() -> float:
    """The new / old analysis time that takes BASELINE_SHARE to SHARE_TARGET (the rest of the run unchanged)."""
    b, t = BASELINE_SHARE, SHARE_TARGET
    return t * (1 - b) / (b * (1 - t))


def recorded_share(run: Path) -> None:
    seconds = RunDir(run).phase_seconds()
    total = sum(seconds.values())
    if total <= 0:
        print(f"TARGET analysis_share: not recorded ({run} has no phase_seconds.json: made before the record) "
              f"(target <= {SHARE_TARGET}) short")
        return
    share = seconds.get("analyse", 0.0) / total
    print(f"  {run}: " + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(seconds.items())))
    print(f"TARGET analysis_share: {share:.3f} of {total:.0f} worker seconds (target <= {SHARE_TARGET}) "
          f"{'ok' if share <= SHARE_TARGET else 'short'}")


def timed(fn) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    rows = fn()
    return time.perf_counter() - start, rows


def side_by_side(quick: bool) -> None:
    loaded = load_model("smollm2-135m")
    spec = UnitSpec("smollm2-135m", TaskSpec.make("ioi", {"n": 8 if quick else 20, "templates": TEMPLATES}),
                    "mlp_out", tuple(range(loaded.n_layers)), ActivScalar.method,
                    TrainSettings(steps=2 if quick else 40, batch_size=32))
    unit = prepare_unit(loaded, spec)
    (result,) = train_trials(loaded, unit, [Hyper(lr=0.05, lambda_min=0.01, seed=0)])
    assert result.ok, result.error
    tensors = {k: torch.as_tensor(v) for k, v in result.tensors.items()}
    betas = PAPER_BETAS[::4] if quick else PAPER_BETAS
    args = dict(betas=betas, k_step=4, k90_within=0.1)
    for precision in ("fp32", "train"):  # first calls: the bf16 copy made, kernels chosen in each precision
        analyze_trial(loaded, unit, tensors, **args, precision=precision)
    old_s, old = timed(lambda: analyze_trial(loaded, unit, tensors, **args, val_all=True, precision="fp32"))
    new_s, new = timed(lambda: analyze_trial(loaded, unit, tensors, **args))
    ratio = new_s / old_s
    share = BASELINE_SHARE * ratio / (1 - BASELINE_SHARE + BASELINE_SHARE * ratio)
    print(f"  one trial ({unit.precision} training, {len(unit.splits['val'])} val / {len(unit.splits['test'])} test "
          f"prompts): old {old_s:.1f}s ({len(old)} rows, fp32, every point on val), new {new_s:.1f}s ({len(new)} "
          f"rows, {unit.precision if unit.precision == 'bf16' else 'fp32'}); a {BASELINE_SHARE:.0%} share would "
          f"become {share:.1%}")
    target = ratio_target()
    print(f"TARGET analysis_time_ratio: {ratio:.2f}x (target <= {target:.2f}x) {'ok' if ratio <= target else 'short'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "docs" / "data" / "paper-run")
    parser.add_argument("--quick", action="store_true", help="a short trial and a few betas (a smoke run)")
    args = parser.parse_args()
    side_by_side(args.quick)
    recorded_share(args.run)


if __name__ == "__main__":
    main()
