"""Pruning benchmark on the embedded model: a quickstart-sized sweep (the quickstart's units,
4 search trials per method and a replicate, 40 steps) searching the default ranges of the
sweep schema, which hold hopeless corners (strong L1, small learning rates), with all 4 trials
of a method in one batch; run as it is, then with early stopping and pruning on
(train.patience, train.prune). Prints the wall-time ratio and whether each unit's selected
trial stays within the unpruned one's bootstrap intervals over test prompts.

(The quickstart itself searches narrow ranges where every trial succeeds and is still
improving at its last step, so neither rule has anything to stop there: measured 1.04x.)

A third run gives the bound no pruning rule can beat on this sweep: the oracle, a sweep that
searches only one trial per method (as if a pruner knew the winner before its first step) and
still trains its replicate. Its wall-time ratio is printed as `pruning_oracle_bound`. A warm-up
run (one trial, two steps) first takes the first-import and disk-cache costs out of the timings.

Usage: python bench/pruning.py [--out FILE] [--gpus 1]
Ends with TARGET lines: pruning_wall (<= 0.5x) and pruning_quality (every unit within).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACTSCALE = str(Path(sys.executable).with_name("actscale"))

from storage.query import run_sql  # noqa: E402
from storage.report import bootstrap_ci  # noqa: E402

STOPPING = {"patience": 2, "check_every": 5, "check_prompts": 32, "prune": True, "prune_margin": 0.3}


def run(config: dict, out: Path) -> float:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    done = subprocess.run([ACTSCALE, "run", str(path), "--out", str(out), "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"actscale run failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def warm_up(base: dict, out: Path) -> None:
    """One untimed two-step sweep of one trial on the embedded model: imports, .pyc files, Ray's
    first start, and the model's files in the disk cache."""
    run({**base, "name": "warm-up", "methods": base["methods"][:1], "search": {"n_trials": 1, "replicates": 1},
         "train": {**base["train"], "steps": 2}}, out)


def selected(run_dir: Path) -> dict[str, dict]:
    """Per method: the selected trial's test metrics and its per-prompt flips and kl_other."""
    rows, _ = run_sql([run_dir], "SELECT u.method, s.trial_id, s.test_flip_rate, s.test_kl_other FROM selected s "
                                 "JOIN units u USING (unit_id)")
    out = {}
    for r in rows.to_dict("records"):
        preds, _ = run_sql([run_dir], f"SELECT flipped, kl_other FROM predictions WHERE trial_id = '{r['trial_id']}'")
        out[r["method"]] = dict(r, flipped=preds.flipped.to_numpy(float), kl=preds.kl_other.to_numpy(float))
    return out


def counts(run_dir: Path) -> dict:
    rows, _ = run_sql([run_dir], "SELECT status, count(*) AS n, sum(steps_done) AS steps FROM trials GROUP BY status")
    return {r["status"]: dict(trials=int(r["n"]), steps=int(r["steps"] or 0)) for r in rows.to_dict("records")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (bench/gpu.sh: 1)")
    args = parser.parse_args()
    base = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    search = {k: v for k, v in base["search"].items() if k != "space"}  # the schema's default ranges
    base = {**base, "name": "pruning", "search": {**search, "batch": 4},
            "resources": {**base["resources"], "gpus_per_worker": args.gpus},
            "analysis": {"enabled": False}}  # both sweeps: the search's wall time, not the per-unit analyses
    pruned_config = {**base, "train": {**base["train"], **STOPPING}}
    oracle_config = {**base, "search": {**base["search"], "n_trials": 1, "batch": 1}}
    with tempfile.TemporaryDirectory(prefix="pruning") as tmp:
        warm_up(base, Path(tmp) / "warm-up")
        wall_full = run(base, Path(tmp) / "full")
        wall_pruned = run(pruned_config, Path(tmp) / "pruned")
        wall_oracle = run(oracle_config, Path(tmp) / "oracle")
        full, pruned = selected(Path(tmp) / "full"), selected(Path(tmp) / "pruned")
        figures = dict(wall_full_s=wall_full, wall_pruned_s=wall_pruned, ratio=wall_pruned / wall_full,
                       wall_oracle_s=wall_oracle, oracle_ratio=wall_oracle / wall_full,
                       counts_full=counts(Path(tmp) / "full"), counts_pruned=counts(Path(tmp) / "pruned"),
                       counts_oracle=counts(Path(tmp) / "oracle"), units={})
    print(f"quickstart sweep: {wall_full:.1f} s as it is, {wall_pruned:.1f} s with {STOPPING}: "
          f"{figures['ratio']:.2f}x; trials {figures['counts_full']} -> {figures['counts_pruned']}")
    print(f"oracle (one search trial per method, same replicates): {wall_oracle:.1f} s, "
          f"{figures['oracle_ratio']:.2f}x; trials {figures['counts_oracle']}")
    within_all = True
    for method, f in full.items():
        p = pruned[method]
        checks = {}
        for name, key in (("test_flip_rate", "flipped"), ("test_kl_other", "kl")):
            low, high = bootstrap_ci(f[key])
            checks[name] = dict(full=f[name], pruned=p[name], low=low, high=high, within=bool(low <= p[name] <= high))
            print(f"  {method} {name}: full {f[name]:.3f} [{low:.3f}, {high:.3f}], pruned {p[name]:.3f}"
                  f" {'within' if checks[name]['within'] else 'OUTSIDE'}")
            within_all &= checks[name]["within"]
        figures["units"][method] = checks
    ratio = figures["ratio"]
    print(f"TARGET pruning_wall: {ratio:.2f}x (target <= 0.5x) {'ok' if ratio <= 0.5 else 'short'}")
    print(f"pruning_oracle_bound: {figures['oracle_ratio']:.2f}x (no pruning rule can go below this on this sweep)")
    print(f"TARGET pruning_quality: {'within' if within_all else 'outside'} (target within) "
          f"{'ok' if within_all else 'short'}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
