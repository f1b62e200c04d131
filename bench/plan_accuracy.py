"""How well `actscale plan` predicts a sweep's wall time: calibrate, plan, run, compare, in one run.

A small sweep on the embedded SmolLM2-135M (IOI, mlp_out and attn_out, all layers, ActivScalar, 4
search trials in batches of 2, 3 seeds, 30 steps, curves and strength analysed): `actscale plan
--calibrate` measures the model's speed on this machine (a fresh calibration, in its own process),
then `actscale run` runs the sweep, timed from the command's start to its end. Also prints the plan's
counts against the run's (search trials, trial-steps, analysis points: equal by construction).
    TARGET plan_accuracy: predicted/measured = X (target within +-35%) ok|short

Usage: python bench/plan_accuracy.py [--quick] [--gpus 1] [--out FILE]
(--quick: a tiny random model, for the test suite; its figures mean nothing.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACTSCALE = str(Path(sys.executable).with_name("actscale"))

from storage.query import run_sql  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402

SWEEP = {
    "name": "plan-accuracy", "models": ["smollm2-135m"], "tasks": ["ioi"], "sites": ["mlp_out", "attn_out"],
    "layers": "all", "methods": [ActivScalar.method],
    "search": {"sampler": "random", "n_trials": 4, "batch": 2, "replicates": 3},
    "train": {"steps": 30, "batch_size": 32}, "analysis": {"k_step": 4},
    "resources": {"workers_per_model": 1, "cpus_per_worker": 2},
}
QUICK = {"models": ["tiny-llama"], "tasks": [{"name": "ioi", "options": {"n": 80}}],
         "train": {"steps": 10, "batch_size": 8, "filter": "none"},
         "resources": {"workers_per_model": 1, "cpus_per_worker": 1}}


def actscale(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([ACTSCALE, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"actscale {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def measured_counts(run_dir: Path) -> dict[str, float]:
    trials, _ = run_sql([run_dir], "SELECT count(*) FILTER (WHERE replicate_of IS NULL) AS search, "
                                   "count(*) FILTER (WHERE replicate_of IS NOT NULL) AS replicates, "
                                   "sum(steps_done) AS trial_steps FROM trials WHERE status IN ('complete', 'pruned')")
    curves, _ = run_sql([run_dir], "SELECT count(*) AS n FROM curves")
    row = trials.to_dict("records")[0]
    return dict(search_trials=row["search"], replicates_trials=row["replicates"], trial_steps=row["trial_steps"],
                analysis_points=int(curves.n[0]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tiny random model (a smoke run)")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    config = {**SWEEP, **(QUICK if args.quick else {})}
    config["resources"] = {**config["resources"], "gpus_per_worker": args.gpus}
    with tempfile.TemporaryDirectory(prefix="plan-accuracy") as tmp:
        sweep = Path(tmp) / "sweep.yaml"
        sweep.write_text(yaml.safe_dump(config))
        env = {**os.environ, "ACTSCALE_CALIBRATION": str(Path(tmp) / "calibration")}  # a fresh calibration
        start = time.perf_counter()
        plan = json.loads(actscale(["plan", str(sweep), "--calibrate", "--json"], env))
        calibration_s = time.perf_counter() - start
        start = time.perf_counter()
        actscale(["run", str(sweep), "--out", str(Path(tmp) / "run"), "--quiet"], env)
        measured = time.perf_counter() - start
        counts = measured_counts(Path(tmp) / "run")
        # k90's bisection scores a data-dependent number of points: the plan counts a full bisection of a
        # k_step-wide bracket per trial (an upper bound), the grid alone is the lower bound
        grid_only = Path(tmp) / "grid-only.yaml"
        grid_only.write_text(yaml.safe_dump({**config, "analysis": {**config["analysis"], "k90_within": None}}))
        grid_points = json.loads(actscale(["plan", str(grid_only), "--json"], env))["totals"]["analysis_points"]
    predicted = plan["wall_s"]["this_machine"]
    ratio = predicted / measured
    print(f"sweep: {len(plan['units'])} units of {config['models'][0]}; calibration took {calibration_s:.1f} s")
    for described in plan["calibrations"].values():
        print(f"  speed of {described}")
    for key, value in counts.items():
        bound = f" (grid alone {grid_points:.0f})" if key == "analysis_points" else ""
        print(f"  {key}: plan {plan['totals'][key]:.0f}{bound}, run {value:.0f}")
    print(f"  wall time: predicted {predicted:.1f} s, measured {measured:.1f} s")
    ok = 0.65 <= ratio <= 1.35
    print(f"TARGET plan_accuracy: predicted/measured = {ratio:.2f} (target within +-35%) {'ok' if ok else 'short'}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(predicted_s=predicted, measured_s=measured, ratio=ratio,
                                                  calibration_s=calibration_s, plan=plan, counts=counts), indent=1))


if __name__ == "__main__":
    main()
