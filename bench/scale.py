"""Scale benchmark: a cheap sweep of ~10,000 trials (tiny model, 2 steps each) and what a user
does with it afterwards. Prints ratios and times measured in one run.

  a. coordinator cost per trial at ~1,000 and ~10,000 trials (wall / trials; growth <= 1.2x);
  b. `actscale run` again on the finished sweep (nothing to do): < 5 s;
  c. `actscale status` and `actscale query` over its tables, end to end: < 1 s each;
  d. part files per table after the run: <= 50.

Usage: python bench/scale.py [--quick] [--out FILE]   (--quick: ~1,000 and ~3,000 trials)
Ends with one line per target: `TARGET <name>: <measured> (target <target>) ok|short`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ACTSCALE = str(Path(sys.executable).with_name("actscale"))

from storage.run_dir import RunDir  # noqa: E402
from workers.names import method_names  # noqa: E402


def sweep(n_trials: int) -> dict:
    """48 units (4 sites x 4 single layers x 3 methods) of tiny-gpt2, n_trials each, 2 steps."""
    return {"name": "scale", "models": ["tiny-gpt2"], "tasks": [{"name": "ioi", "options": {"n": 20}}],
            "sites": ["mlp_out", "attn_out", "resid_post", "head"], "layers": "each",
            "methods": list(method_names())[:3],  # the first three built-ins (the control dynscalar_bias aside)
            "search": {"sampler": "random", "n_trials": n_trials, "batch": 30},
            "train": {"steps": 2, "batch_size": 8, "filter": "none"},
            "analysis": {"enabled": False},  # the coordinator's cost per trial, not the per-unit analyses
            "resources": {"cpus_per_worker": 1, "workers_per_model": 1}}


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def run_sweep(directory: Path, n_trials: int) -> tuple[float, int]:
    """(wall seconds, trials) of `actscale run` on a fresh run directory."""
    config = directory / f"sweep-{n_trials}.yaml"
    config.write_text(yaml.safe_dump(sweep(n_trials)))
    run = directory / f"run-{n_trials}"
    wall = timed([ACTSCALE, "run", str(config), "--out", str(run), "--quiet"])
    return wall, 48 * n_trials


def target(name: str, measured: float, goal: float, unit: str, lower_is_better: bool = True) -> dict:
    ok = measured <= goal if lower_is_better else measured >= goal
    print(f"TARGET {name}: {measured:.3g}{unit} (target {'<=' if lower_is_better else '>='} {goal:g}{unit}) "
          f"{'ok' if ok else 'short'}")
    return dict(name=name, measured=measured, target=goal, ok=ok)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    small, large = (21, 63) if args.quick else (21, 210)  # trials per unit; 48 units
    with tempfile.TemporaryDirectory(prefix="scale") as tmp:
        directory = Path(tmp)
        wall_small, n_small = run_sweep(directory, small)
        wall_large, n_large = run_sweep(directory, large)
        per_small, per_large = wall_small / n_small, wall_large / n_large
        print(f"a. {n_small} trials in {wall_small:.1f} s ({1000 * per_small:.1f} ms/trial); "
              f"{n_large} trials in {wall_large:.1f} s ({1000 * per_large:.1f} ms/trial)")
        run = directory / f"run-{large}"
        config = directory / f"sweep-{large}.yaml"
        resume = timed([ACTSCALE, "run", str(config), "--out", str(run), "--quiet"])
        status = min(timed([ACTSCALE, "status", str(run)]) for _ in range(3))
        query = min(timed([ACTSCALE, "query", str(run), "SELECT count(*) FROM scalars"]) for _ in range(3))
        parts = {t.name: len(list(t.glob("part-*.parquet"))) for t in (run / "tables").iterdir()}
        journal_mb = RunDir(run).journal.stat().st_size / 1e6
        print(f"b. resume of the finished sweep: {resume:.2f} s; c. status {status:.2f} s, query {query:.2f} s "
              f"(best of 3); d. parts per table {parts}; journal {journal_mb:.1f} MB")
        results = [target("coordinator_cost_growth_1k_to_10k", per_large / per_small, 1.2, "x"),
                   target("resume_finished_sweep", resume, 5.0, "s"),
                   target("status_end_to_end", status, 1.0, "s"),
                   target("query_end_to_end", query, 1.0, "s"),
                   target("parts_per_table", max(parts.values()), 50, "")]
    if args.out:
        Path(args.out).write_text(json.dumps(dict(trials=[n_small, n_large], wall_s=[wall_small, wall_large],
                                                  resume_s=resume, status_s=status, query_s=query, parts=parts,
                                                  targets=results), indent=1))


if __name__ == "__main__":
    main()
