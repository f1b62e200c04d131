"""Pruning benchmarks on the embedded model, two cases (`--case`).

**wide** (the default): where pruning pays, a wide search. Two units of SmolLM2-135M (IOI, mlp_out
and attn_out, all layers, ActivScalar), 16 search trials each over the sweep schema's default ranges
(which hold hopeless corners: strong L1, small learning rates), in batches of 8, 60 steps, side by side
in one run: the unpruned search with its selected configuration replicated (3 seeds: the replicate
interval), and the same search with ASHA (`search.pruner: {kind: asha, min_steps: 6, eta: 3, min_kept: 3}`; the
same sampler seed, so the same 16 configurations are asked). Prints the search phase's trial-steps
ratio and whether the ASHA search's selected trial has val flip_rate and sites moved inside the
unpruned search's replicate interval (95% Student t over the 3 seeds); `--seed N` draws other configurations:
    TARGET pruning_steps: X (target <= 0.40) ok|short
    TARGET pruning_quality: ... ok|short
Wall times are printed beside them, measured in the same run. `--quick`: the same on a tiny random
model, for the test suite (its figures mean nothing).

**quickstart**: the old case, a quickstart-sized sweep (the quickstart's units, 4 search trials per
method and a replicate, 40 steps) over the default ranges, all 4 trials of a method in one batch; run as
it is, then with early stopping and pruning on (train.patience, train.prune). Prints the wall-time
ratio and whether each unit's selected trial stays within the unpruned one's bootstrap intervals over
test prompts. (The quickstart itself searches narrow ranges where every trial succeeds and is still
improving at its last step, so neither rule has anything to stop there: measured 1.04x.) A third run
gives the bound no pruning rule can beat on this sweep: the oracle, a sweep that searches only one
trial per method (as if a pruner knew the winner before its first step) and still trains its replicate
(`pruning_oracle_bound`). Ends with TARGET pruning_wall (<= 0.5x) and pruning_quality (every unit
within). A warm-up run (one trial, two steps) first takes the first-import and disk-cache costs out of
the timings of either case.

Usage: python bench/pruning.py [--case wide|quickstart] [--quick] [--seed N] [--out FILE] [--gpus 1]
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
from storage.seeds import t_interval  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402

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


def quickstart_case(args: argparse.Namespace) -> dict:
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
    return figures


WIDE = {
    "name": "pruning-wide", "models": ["smollm2-135m"], "tasks": ["ioi"], "sites": ["mlp_out", "attn_out"],
    "layers": "all", "methods": [ActivScalar.method],
    "search": {"sampler": "random", "n_trials": 16, "batch": 8, "seed": 0},  # the schema's default (wide) ranges
    "train": {"steps": 60, "batch_size": 32}, "selection": {"min_flip": 0.9}, "analysis": {"enabled": False},
    "resources": {"workers_per_model": 1, "cpus_per_worker": 2},
}
# min_kept 3: without a floor ASHA pruned mlp_out's sparse winner at its first rung (0.22 of the trial-steps, the
# selection outside the interval; docs/performance.md). The floor was chosen on --seed 0 (0.36, both within); the
# check on --seed 1 failed (0.34, neither unit within): the rung key, not the floor, is what needs work.
ASHA = {"kind": "asha", "min_steps": 6, "eta": 3, "min_kept": 3}
QUICK = {  # a tiny random model: the same shape in seconds, for the test suite
    "models": ["tiny-llama"], "tasks": [{"name": "ioi", "options": {"n": 120}}], "layers": [[1, 2, 3]],
    "train": {"steps": 20, "batch_size": 16, "filter": "none", "check_prompts": 24},
    "search": {"sampler": "random", "n_trials": 16, "batch": 8, "seed": 0,
               "space": {"lr": {"low": 1e-7, "high": 0.3, "log": True}}},
    "resources": {"workers_per_model": 1, "cpus_per_worker": 1},
}
QUICK_ASHA = {"kind": "asha", "min_steps": 2, "eta": 3}


def search_steps(run_dir: Path) -> dict[str, int]:
    """Per unit (by site): the search trials' steps trained, pruned ones included."""
    rows, _ = run_sql([run_dir], "SELECT u.site, sum(t.steps_done) AS steps, count(*) AS trials, "
                                 "sum(CASE WHEN t.status = 'pruned' THEN 1 ELSE 0 END) AS pruned FROM trials t "
                                 "JOIN units u USING (unit_id) WHERE t.replicate_of IS NULL "
                                 "AND t.status IN ('complete', 'pruned') GROUP BY u.site")
    return {r["site"]: dict(steps=int(r["steps"]), trials=int(r["trials"]), pruned=int(r["pruned"]))
            for r in rows.to_dict("records")}


def replicate_intervals(run_dir: Path) -> dict[str, dict]:
    """Per unit (by site): the selected trial and its replicates' val flip_rate and sites moved, with a 95%
    Student-t interval over the seeds (storage.seeds.t_interval)."""
    rows, _ = run_sql([run_dir], "SELECT u.site, t.val_flip_rate, t.sites_moved FROM trials t JOIN units u "
                                 "USING (unit_id) JOIN selected s ON s.unit_id = t.unit_id "
                                 "WHERE t.status = 'complete' AND (t.trial_id = s.trial_id OR t.replicate_of = s.trial_id)")
    out = {}
    for site, group in rows.groupby("site"):
        out[site] = dict(seeds=len(group), flip=t_interval(group.val_flip_rate.to_numpy(float), 0.0, 1.0),
                         moved=t_interval(group.sites_moved.to_numpy(float), 0.0))
    return out


def selected_values(run_dir: Path) -> dict[str, dict]:
    rows, _ = run_sql([run_dir], "SELECT u.site, s.trial_id, s.val_flip_rate, s.sites_moved, s.selected_by "
                                 "FROM selected s JOIN units u USING (unit_id)")
    return {r["site"]: r for r in rows.to_dict("records")}


def wide_case(args: argparse.Namespace) -> dict:
    base = {**WIDE, **(QUICK if args.quick else {})}
    base["resources"] = {**base["resources"], "gpus_per_worker": args.gpus}
    base["search"] = {**base["search"], "seed": args.seed}
    asha = QUICK_ASHA if args.quick else ASHA
    full_config = {**base, "search": {**base["search"], "replicates": 3}}
    asha_config = {**base, "search": {**base["search"], "replicates": 1, "pruner": asha}}
    with tempfile.TemporaryDirectory(prefix="pruning-wide") as tmp:
        if not args.quick:
            warm_up(WIDE, Path(tmp) / "warm-up")
        wall_full = run(full_config, Path(tmp) / "full")
        wall_asha = run(asha_config, Path(tmp) / "asha")
        steps_full, steps_asha = search_steps(Path(tmp) / "full"), search_steps(Path(tmp) / "asha")
        intervals, chosen = replicate_intervals(Path(tmp) / "full"), selected_values(Path(tmp) / "asha")
    ratio = sum(s["steps"] for s in steps_asha.values()) / sum(s["steps"] for s in steps_full.values())
    model = base["models"][0]
    print(f"wide search on {model}: {len(steps_full)} units x {base['search']['n_trials']} search trials, "
          f"{base['train']['steps']} steps, batches of {base['search']['batch']}; asha {asha}")
    print(f"  search trial-steps: unpruned {steps_full}, asha {steps_asha}")
    print(f"  wall time (whole runs, measured here): unpruned with 2 replicates {wall_full:.1f} s, asha {wall_asha:.1f} s")
    within_all, units = True, {}
    for site, interval in intervals.items():
        mine = chosen[site]
        flip_mean, flip_low, flip_high = interval["flip"]
        moved_mean, moved_low, moved_high = interval["moved"]
        within = flip_low - 1e-9 <= mine["val_flip_rate"] <= flip_high + 1e-9 and \
            moved_low - 1e-9 <= mine["sites_moved"] <= moved_high + 1e-9
        within_all &= within
        units[site] = dict(interval, asha=mine, within=within)
        print(f"  {site}: unpruned search, {interval['seeds']} seeds: val flip {flip_mean:.3f} [{flip_low:.3f}, "
              f"{flip_high:.3f}], sites moved {moved_mean:.1f} [{moved_low:.1f}, {moved_high:.1f}]; asha selected "
              f"{mine['trial_id'][-6:]} ({mine['selected_by']}): val flip {mine['val_flip_rate']:.3f}, "
              f"{mine['sites_moved']} moved: {'within' if within else 'OUTSIDE'}")
    print(f"TARGET pruning_steps: {ratio:.2f} (target <= 0.40) {'ok' if ratio <= 0.40 else 'short'}")
    print(f"TARGET pruning_quality: {'within' if within_all else 'outside'} the replicate interval in "
          f"{sum(u['within'] for u in units.values())} of {len(units)} units (target within) "
          f"{'ok' if within_all else 'short'}")
    return dict(ratio=ratio, steps_full=steps_full, steps_asha=steps_asha, wall_full_s=wall_full,
                wall_asha_s=wall_asha, units=units)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("wide", "quickstart"), default="wide")
    parser.add_argument("--quick", action="store_true", help="the wide case on a tiny random model (a smoke run)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (bench/gpu.sh: 1)")
    parser.add_argument("--seed", type=int, default=0, help="the wide case's sampler seed: which 16 configurations")
    args = parser.parse_args()
    figures = wide_case(args) if args.case == "wide" else quickstart_case(args)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
