"""`actscale run`, `resume` and `status`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from search_spaces.config import load_config, resolve_sweep
from workers.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("run", help="run (or resume, or extend) a sweep; no file: the built-in quickstart")
    p.add_argument("sweep", nargs="?", help="a sweep YAML file or a built-in sweep name (quickstart, tiny)")
    p.add_argument("--out", help="run directory (default runs/<sweep name>)")
    p.add_argument("--address", help="Ray cluster address to join (default: an embedded local Ray)")
    p.add_argument("--quiet", action="store_true", help="log to RUN_DIR/actscale.log only")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("resume", help="resume a run from its stored config")
    p.add_argument("run_dir")
    p.add_argument("--address")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("status", help="per unit: done, failed, pending, best values")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def _run(config, run_dir: Path, address: str | None, quiet: bool) -> int:
    from orchestrator.coordinator import Coordinator

    summary = Coordinator(config, run_dir, address=address, quiet=quiet).run()
    print(f"results: {run_dir}/tables  ({summary.completed} completed, {summary.failed} failed trials, "
          f"model loads: {summary.model_loads}, {summary.wall_s:.0f}s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    path = resolve_sweep(args.sweep)
    config = load_config(path)
    run_dir = Path(args.out) if args.out else Path("runs") / config.name
    return _run(config, run_dir, args.address, args.quiet)


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    stored = run_dir / "sweep.yaml"
    if not stored.is_file():
        raise UsageError(f"{run_dir} holds no sweep.yaml: not an actscale run directory (or never started)")
    return _run(load_config(stored), run_dir, args.address, args.quiet)


def unit_status(run_dir: Path) -> list[dict]:
    from storage.query import run_sql

    stored = run_dir / "sweep.yaml"
    if not stored.is_file():
        raise UsageError(f"{run_dir} holds no sweep.yaml: not an actscale run directory")
    n_trials = load_config(stored).search.n_trials
    frame, _ = run_sql([run_dir], """
        SELECT u.unit_id, u.model, u.task, u.site, u.method,
               count(t.trial_id) FILTER (WHERE t.status = 'complete') AS done,
               count(t.trial_id) FILTER (WHERE t.status <> 'complete') AS failed,
               max(t.val_flip_rate) AS best_val_flip, min(t.val_kl_other) AS best_val_kl,
               max(t.test_flip_rate) AS best_test_flip
        FROM (SELECT DISTINCT ON (unit_id) * FROM units) u LEFT JOIN trials t USING (unit_id)
        GROUP BY ALL ORDER BY u.model, u.task, u.site, u.method""")
    rows = frame.to_dict("records")
    for r in rows:
        r["pending"] = max(0, n_trials - int(r["done"]))
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows = unit_status(Path(args.run_dir))
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(f"{'unit':<16}{'model':<16}{'task':<14}{'site':<12}{'method':<13}{'done':>5}{'failed':>7}{'pending':>8}"
          f"{'val_flip':>10}{'test_flip':>10}")
    for r in rows:
        fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731
        print(f"{r['unit_id']:<16}{r['model']:<16}{r['task']:<14}{r['site']:<12}{r['method']:<13}{r['done']:>5}"
              f"{r['failed']:>7}{r['pending']:>8}{fmt(r['best_val_flip']):>10}{fmt(r['best_test_flip']):>10}")
    return 0
