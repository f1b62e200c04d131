"""Pruning benchmarks on the embedded model, three cases (`--case`).

**wide** (the default): where pruning pays, a wide search. Two units of SmolLM2-135M (IOI, mlp_out
and attn_out, all layers, ActivScalar), 16 search trials each over the sweep schema's default ranges
(which hold hopeless corners: strong L1, small learning rates), in batches of 8, 60 steps, side by side
in one run: the unpruned search with its selected configuration replicated (3 seeds: the replicate
interval), and the same search with ASHA (`ASHA` below: rungs 6, 12, 24, 48, min_kept 2, order 'front';
the same sampler seed, so the same 16 configurations are asked). The unpruned search observes its
rungs (checks at 3, 6, 12, 24, 48 steps, nothing pruned), and ASHA is also replayed on it under each
order (`replay`). Prints the search phase's trial-steps ratio and whether the ASHA search's selected
trial has val flip_rate and sites moved inside the unpruned search's replicate interval (95% Student t
over the 3 seeds); `--seed N` draws other configurations:
    TARGET pruning_steps: X (target <= 0.40) ok|short
    TARGET pruning_quality: ... ok|short
Wall times are printed beside them, measured in the same run. `--quick`: the same on a tiny random
model, for the test suite (its figures mean nothing).

**replay**: no training. Every order, schedule (rungs among those observed) and floor played by the
real rule (workers/asha.py) on stored observed searches (default: bench/data/pruning-observed, the
unpruned searches of --seed 0 and 1): in how many units each keeps the unpruned winner, and its share
of the trial-steps. This is how `ASHA` was chosen.

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

Usage: python bench/pruning.py [--case wide|quickstart|replay] [--quick] [--seed N] [--replay DIR ...]
       [--out FILE] [--gpus 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACTSCALE = str(Path(sys.executable).with_name("actscale"))

from storage.query import run_sql  # noqa: E402
from storage.report import bootstrap_ci  # noqa: E402
from storage.seeds import t_interval  # noqa: E402
from storage.selection import select_rows  # noqa: E402
from workers.asha import RANKS, RungEntry, Rungs, rung_steps  # noqa: E402
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
# The order at a rung ('front', workers/asha.py), the rungs and the floor were chosen by REPLAY (`--replay`) on the
# observed searches of --seed 0 and 1 (bench/data/pruning-observed, docs/performance.md): the only settings that kept
# the unpruned winner in all 4 units within 0.40 of the trial-steps on both seeds. With the selection rule's order
# (rungs 6, 18, 54, min_kept 3) the benchmark had failed on --seed 1. Checked on --seed 2, not seen when choosing.
ASHA = {"kind": "asha", "min_steps": 6, "eta": 2, "min_kept": 2, "rank": "front"}
# The unpruned search observes: rung checks at 3, 6, 12, 24, 48 steps and nothing pruned (`observing`: min_kept =
# n_trials), so that any order and schedule on those rungs can be replayed on its trials (`replay`).
OBSERVE = {"kind": "asha", "min_steps": 3, "eta": 2}
OBSERVED_DIRS = [ROOT / "bench" / "data" / "pruning-observed" / f"seed{seed}" for seed in (0, 1)]
QUICK = {  # a tiny random model: the same shape in seconds, for the test suite
    "models": ["tiny-llama"], "tasks": [{"name": "ioi", "options": {"n": 120}}], "layers": [[1, 2, 3]],
    "train": {"steps": 20, "batch_size": 16, "filter": "none", "check_prompts": 24},
    "search": {"sampler": "random", "n_trials": 16, "batch": 8, "seed": 0,
               "space": {"lr": {"low": 1e-7, "high": 0.3, "log": True}}},
    "resources": {"workers_per_model": 1, "cpus_per_worker": 1},
}
QUICK_ASHA = {"kind": "asha", "min_steps": 2, "eta": 2}  # rungs 2, 4, 8, 16: all observed
QUICK_OBSERVE = {"kind": "asha", "min_steps": 2, "eta": 2}


def observing(rungs: dict, search: dict) -> dict:
    """A pruner that checks at the rungs and prunes nothing: every trial is kept (min_kept = n_trials)."""
    return {**rungs, "min_kept": search["n_trials"]}


class Observed(NamedTuple):
    """One unit's search that observed its rungs without pruning."""

    finals: dict[int, dict]  # trial number -> the complete search trial's final row (the selection rule's columns)
    at: dict[tuple[int, int], RungEntry]  # (trial number, rung step) -> what the trial was judged by there
    winner: int  # the trial number the unpruned search selected


# the trials columns the selection rule reads (storage/selection.py), besides the ids
SELECTION_COLUMNS = ("trial_id", "unit_id", "run_id", "trial_number", "status", "replicate_of", "control_of", "pilot",
                     "val_flip_rate", "sites_moved", "val_kl_other")


def select_among(finals: dict[int, dict], numbers: list[int], min_flip: float) -> int:
    """The selection rule (storage.selection.select_rows, the project's one rule) among the trials `numbers`."""
    chosen = select_rows([finals[n] for n in numbers], min_flip)
    assert chosen is not None, "select_among needs at least one complete search trial"
    return int(chosen["trial_number"])


def observed(run_dir: Path, min_flip: float) -> dict[str, Observed]:
    """Per unit (named by its site: the benchmark's units differ only there) of a search that observed its rungs:
    each complete search trial's final row, its rung entries and the unpruned search's winner."""
    columns = ", ".join(f"t.{c}" for c in SELECTION_COLUMNS)
    search = "t.replicate_of IS NULL AND t.control_of IS NULL AND NOT coalesce(t.pilot, false)"
    finals, _ = run_sql([run_dir], f"SELECT u.site, {columns} FROM trials t JOIN units u USING (unit_id) "
                                   f"WHERE {search} AND t.status = 'complete'")
    rows, _ = run_sql([run_dir], "SELECT t.unit_id, t.trial_number, c.step, c.flip_rate, c.kl_other, c.sites_moved "
                                 f"FROM checks c JOIN trials t USING (trial_id) WHERE c.kind = 'rung' AND {search}")
    if finals.groupby("site").unit_id.nunique().max() > 1:
        raise SystemExit(f"{run_dir}: several units share a site; the replay names a unit by its site")
    out = {}
    for (site, unit_id), group in finals.groupby(["site", "unit_id"]):
        checks = rows[rows.unit_id == unit_id]
        kept = group[list(SELECTION_COLUMNS)].astype(object).where(group[list(SELECTION_COLUMNS)].notna(), None)
        by_number = {int(r["trial_number"]): r for r in kept.to_dict("records")}
        at = {(int(r.trial_number), int(r.step)): RungEntry(int(r.trial_number), float(r.flip_rate),
                                                            float(r.kl_other), int(r.sites_moved))
              for r in checks.itertuples()}
        out[str(site)] = Observed(by_number, at, select_among(by_number, sorted(by_number), min_flip))
    return out


def replay(finals: dict[int, dict], at: dict[tuple[int, int], RungEntry], rungs: list[int], eta: int,
           min_kept: int, rank: str, batch: int, steps: int, min_flip: float) -> tuple[int, float]:
    """ASHA (workers/asha.py Rungs, the real rule) played on an observed search: its batches in order, each
    judged at the rungs against the earlier batches' trials there. (selected trial number, trial-steps share)."""
    numbers, history, complete, trained = sorted(finals), {}, [], 0
    for start in range(0, len(numbers), batch):
        live, last = numbers[start:start + batch], 0
        for rung in rungs:
            trained += len(live) * (rung - last)
            last = rung
            arriving = [at[(n, rung)] for n in live]
            kept = Rungs(rungs[0], eta, min_flip, history, min_kept, rank).kept(rung, arriving)
            history[rung] = history.get(rung, ()) + tuple(arriving)
            live = [n for n, keep in zip(live, kept) if keep]
        trained += len(live) * (steps - last)
        complete += live
    return select_among(finals, complete, min_flip), trained / (len(numbers) * steps)


def replay_unit(unit: Observed, pruner: dict, search: dict, steps: int, min_flip: float) -> dict:
    """One unit's observed search under one pruner: the trial it would select, whether it is the unpruned winner,
    its share of the trial-steps."""
    finals, winner = unit.finals, unit.winner
    chosen, share = replay(finals, unit.at, rung_steps(pruner["min_steps"], pruner["eta"], steps), pruner["eta"],
                           pruner.get("min_kept", 1), pruner.get("rank", "front"), search["batch"], steps, min_flip)
    return dict(selected=chosen, winner=winner, same=chosen == winner, share=share,
                moved=int(finals[chosen]["sites_moved"]), winner_moved=int(finals[winner]["sites_moved"]))


def print_replays(run_dir: Path, base: dict, pruner: dict) -> dict:
    """What the benchmark's pruner would have selected on the observed search, under each order, per unit."""
    min_flip, steps = base["selection"]["min_flip"], base["train"]["steps"]
    out: dict[str, dict] = {}
    for site, unit in observed(run_dir, min_flip).items():
        for rank in RANKS:
            r = out.setdefault(site, {})[rank] = replay_unit(unit, {**pruner, "rank": rank}, base["search"], steps,
                                                             min_flip)
            print(f"  replay on {site}'s unpruned search, order {rank!r}: {r['share']:.2f} of the trial-steps, "
                  f"selects t{r['selected']:05d} ({r['moved']} moved; the unpruned winner t{r['winner']:05d}, "
                  f"{r['winner_moved']} moved){'' if r['same'] else ': NOT the winner'}")
    return out


def replay_grid(run_dirs: list[Path], min_kept: tuple[int, ...] = (1, 2, 3, 4)) -> list[dict]:
    """Every order, schedule (rungs among those observed) and floor replayed on stored observed searches: per
    setting, in how many units it keeps the unpruned winner and its share of the trial-steps per search."""
    searches = []
    for run_dir in run_dirs:
        sweep = yaml.safe_load((run_dir / "sweep.yaml").read_text())
        searches.append((run_dir.name, sweep, observed(run_dir, sweep["selection"]["min_flip"])))
    observed_rungs = {step for _, _, units in searches for unit in units.values() for _, step in unit.at}
    steps = searches[0][1]["train"]["steps"]
    rows = []
    for rank in RANKS:
        for min_steps in sorted(observed_rungs):
            for eta in (2, 4, 8):
                rungs = rung_steps(min_steps, eta, steps)
                if not set(rungs) <= observed_rungs or len(rungs) < 2:  # one rung: not successive halving
                    continue
                for kept in min_kept:
                    pruner = dict(min_steps=min_steps, eta=eta, min_kept=kept, rank=rank)
                    same, shares = 0, []
                    for _, sweep, units in searches:
                        results = [replay_unit(unit, pruner, sweep["search"], steps, sweep["selection"]["min_flip"])
                                   for unit in units.values()]
                        same += sum(r["same"] for r in results)
                        shares.append(sum(r["share"] for r in results) / len(results))
                    rows.append(dict(pruner, rungs=rungs, same=same, units=sum(len(u) for _, _, u in searches),
                                     shares=shares))
    return rows


def replay_case(args: argparse.Namespace) -> dict:
    run_dirs = [Path(d) for d in args.replay] if args.replay else OBSERVED_DIRS
    rows = replay_grid(run_dirs)
    print(f"replay on the observed searches {', '.join(d.name for d in run_dirs)}: per order, rungs and floor, the units "
          "whose unpruned winner it keeps, and its trial-steps share per search")
    for r in rows:
        shares = ", ".join(f"{x:.2f}" for x in r["shares"])
        print(f"  order {r['rank']!r:11s} rungs {', '.join(map(str, r['rungs'])):14s} (eta {r['eta']}) min_kept "
              f"{r['min_kept']}: winner kept in {r['same']} of {r['units']}; trial-steps {shares}")
    return dict(rows=rows)


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
    observe = observing(QUICK_OBSERVE if args.quick else OBSERVE, base["search"])
    full_config = {**base, "search": {**base["search"], "replicates": 3, "pruner": observe}}
    asha_config = {**base, "search": {**base["search"], "replicates": 1, "pruner": asha}}
    with tempfile.TemporaryDirectory(prefix="pruning-wide") as tmp:
        if not args.quick:
            warm_up(WIDE, Path(tmp) / "warm-up")
        wall_full = run(full_config, Path(tmp) / "full")
        wall_asha = run(asha_config, Path(tmp) / "asha")
        steps_full, steps_asha = search_steps(Path(tmp) / "full"), search_steps(Path(tmp) / "asha")
        intervals, chosen = replicate_intervals(Path(tmp) / "full"), selected_values(Path(tmp) / "asha")
        replays = print_replays(Path(tmp) / "full", base, asha)
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
                wall_asha_s=wall_asha, units=units, replays=replays)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=("wide", "quickstart", "replay"), default="wide")
    parser.add_argument("--replay", nargs="*", help="the replay case's observed search runs (default: "
                        "bench/data/pruning-observed/seed0 and seed1)")
    parser.add_argument("--quick", action="store_true", help="the wide case on a tiny random model (a smoke run)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (bench/gpu.sh: 1)")
    parser.add_argument("--seed", type=int, default=0, help="the wide case's sampler seed: which 16 configurations")
    args = parser.parse_args()
    cases = {"wide": wide_case, "quickstart": quickstart_case, "replay": replay_case}
    figures = cases[args.case](args)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
