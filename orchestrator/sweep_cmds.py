"""`actscale run`, `resume` and `status`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.status_view import status_text
from storage.run_dir import LOG, RunDir
from storage.schema import Status
from workers.errors import UsageError

STOP_AFTER_HELP = ("stop cleanly before DURATION (40s, 90m, 2h) has passed, e.g. a few minutes below a batch job's "
                   "wall-clock limit: exit status 3, and running the same command again resumes")


def register(sub) -> None:
    p = sub.add_parser("run", help="run (or resume, or extend) a sweep; no file: the built-in quickstart")
    p.add_argument("sweep", nargs="?", help="a sweep YAML file or a built-in sweep name (quickstart, tiny)")
    p.add_argument("--out", help="run directory (default runs/<sweep name>)")
    p.add_argument("--address", help="Ray cluster address to join (default: an embedded local Ray)")
    p.add_argument("--quiet", action="store_true", help=f"log to RUN_DIR/{LOG} only")
    p.add_argument("--stop-after", metavar="DURATION", help=STOP_AFTER_HELP + " (overrides the sweep's stop_after)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("resume", help="resume a run from its stored config")
    p.add_argument("run_dir")
    p.add_argument("--address")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--stop-after", metavar="DURATION", help=STOP_AFTER_HELP)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("analyze", help="curves and strength sweep (table curves) of each unit's selected trial and "
                                       "its replicates, for a run made without them; also finishes what is left")
    p.add_argument("run_dir")
    p.add_argument("--betas", type=float, nargs="+", metavar="BETA", help="strengths (default: the run's, or "
                   "-1 -0.5 0 0.25 0.5 0.75 1 1.5 2)")
    p.add_argument("--address")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("status", help="per unit: trials done, pruned, failed, interrupted, pending; "
                                      "the selected trial's values")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="follow a sweep running elsewhere until its coordinator stops (every 5 s by default; "
                        "put it after RUN_DIR: actscale status RUN_DIR --watch)")
    p.set_defaults(func=cmd_status)


def _stop_after(args: argparse.Namespace) -> float | None:
    """--stop-after in seconds (None: the sweep's own stop_after, if any)."""
    from search_spaces.duration import parse_duration

    text = getattr(args, "stop_after", None)
    if text is None:
        return None
    try:
        return parse_duration(text, "--stop-after")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _run(config, run_dir: Path, args: argparse.Namespace) -> int:
    from orchestrator.coordinator import Coordinator
    from orchestrator.deadline import STOPPED_AT_LIMIT

    stop_after = _stop_after(args)
    summary = Coordinator(config, run_dir, address=args.address, quiet=args.quiet, stop_after=stop_after).run()
    print(f"results: {run_dir}/tables  ({summary.completed} completed, {summary.pruned} pruned, {summary.failed} failed, "
          f"{summary.interrupted} interrupted and re-run, {summary.analyzed} analyzed; "
          f"model loads: {summary.model_loads}, {summary.wall_s:.0f}s)")
    if summary.stopped_at_limit:
        print(f"stopped at its --stop-after limit with {summary.trials_left} trial(s) left (exit status "
              f"{STOPPED_AT_LIMIT}); running the same command again resumes the sweep")
        return STOPPED_AT_LIMIT
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from search_spaces.config import load_config, resolve_sweep

    path = resolve_sweep(args.sweep)
    config = load_config(path)
    run_dir = Path(args.out) if args.out else Path("runs") / config.name
    return _run(config, run_dir, args)


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    return _run(RunDir(run_dir).sweep(), run_dir, args)


def cmd_analyze(args: argparse.Namespace) -> int:
    """A resume with the analysis on: trials already analyzed are not analyzed again (new betas
    apply to trials not analyzed yet; to redo all, remove RUN_DIR/tables/curves)."""
    run_dir = Path(args.run_dir)
    config = RunDir(run_dir).sweep()
    from search_spaces.config import Analysis

    try:
        analysis = Analysis.model_validate(dict(config.analysis.model_dump(), enabled=True,
                                                **({"betas": args.betas} if args.betas else {})))
    except ValueError as exc:
        raise UsageError(f"--betas: {exc}") from None
    return _run(config.model_copy(update={"analysis": analysis}), run_dir, args)


# a complete search trial: not a replicate, the convergence pilot or a mask control
SEARCH_TRIAL = (f"status = '{Status.COMPLETE}' AND replicate_of IS NULL AND NOT coalesce(pilot, false) "
                "AND control_of IS NULL")

STATUS_SQL = f"""
WITH u AS (SELECT DISTINCT ON (unit_id) * FROM units ORDER BY unit_id),
counts AS (
    SELECT unit_id,
           count(*) FILTER (WHERE {SEARCH_TRIAL}) AS done,
           count(*) FILTER (WHERE status = '{Status.COMPLETE}' AND coalesce(pilot, false)) AS pilots,
           count(*) FILTER (WHERE status = '{Status.FAILED}') AS failed,
           count(*) FILTER (WHERE status = '{Status.INTERRUPTED}') AS interrupted,
           count(*) FILTER (WHERE status = '{Status.PRUNED}') AS pruned
    FROM trials GROUP BY unit_id)
SELECT u.unit_id, u.model, u.task, u.site, u.method, u.n_train, u.n_val, u.n_test, u.min_split, u.warnings,
       coalesce(c.done, 0) AS done, coalesce(c.failed, 0) AS failed, coalesce(c.interrupted, 0) AS interrupted,
       coalesce(c.pruned, 0) AS pruned, coalesce(c.pilots, 0) AS pilots,
       s.trial_id AS selected_trial, s.selected_by, s.val_flip_rate, s.val_kl_other, s.test_flip_rate,
       s.test_kl_other, s.sites_moved, s.sites_total, s.n_params,
       (SELECT count(*) FROM trials r WHERE r.replicate_of = s.trial_id AND r.status = '{Status.COMPLETE}') AS replicates,
       (SELECT count(DISTINCT r.control_of || '/' || r.mask) FROM trials r
        WHERE r.status = '{Status.COMPLETE}' AND r.control_of IN (
            SELECT x.trial_id FROM trials x
            WHERE x.trial_id = s.trial_id OR (x.replicate_of = s.trial_id AND x.status = '{Status.COMPLETE}'))) AS controls
FROM u LEFT JOIN counts c USING (unit_id) LEFT JOIN selected s USING (unit_id)
ORDER BY u.model, u.task, u.site, u.method, u.unit_id"""

# each selected trial with its replicates (the seed groups), and their cells: two queries for the whole run
SEED_GROUP = "SELECT s.trial_id AS selected_trial, t.* FROM selected s JOIN trials t " \
             "ON t.trial_id = s.trial_id OR t.replicate_of = s.trial_id"


# per unit, the selected trial and its complete replicates that have no curves rows yet
UNANALYSED_SQL = f"""
SELECT s.unit_id, list(t.trial_id ORDER BY t.trial_id) AS unanalysed
FROM selected s JOIN trials t ON t.trial_id = s.trial_id OR (t.replicate_of = s.trial_id AND t.status = '{Status.COMPLETE}')
WHERE t.trial_id NOT IN (SELECT trial_id FROM curves)
GROUP BY s.unit_id"""


# search.matched: each unit's pairing key, its complete search trials, and the complete replicates per trial
PAIR_KEYS_SQL = "SELECT DISTINCT ON (unit_id) unit_id, model, task, task_options, site, layers FROM units ORDER BY unit_id"
SEARCH_ROWS_SQL = f"""
SELECT unit_id, trial_id, val_kl_other, val_flip_rate FROM trials WHERE {SEARCH_TRIAL}"""
REPLICATES_DONE_SQL = f"""
SELECT replicate_of, count(*) FROM trials WHERE status = '{Status.COMPLETE}' AND replicate_of IS NOT NULL
GROUP BY replicate_of"""


# each selected trial's val sufficiency curve: its k90, for the masks of controls.at_k90
K90_SQL = """
SELECT c.trial_id, c.k, c.flip_rate, c.n_cells FROM curves c JOIN selected s ON c.trial_id = s.trial_id
WHERE c.kind = 'sufficiency' AND c.split = 'val' AND c.k IS NOT NULL"""


def unit_status(run_dir: Path) -> list[dict]:
    """Per unit: trial counts, what is left (the coordinator's own rule: orchestrator/units.py), and the
    selected trial's val and test values (never a maximum over test)."""
    from storage.query import with_connection
    from storage.seeds import seed_stats

    run = RunDir(run_dir)
    sweep = run.sweep()  # the stored sweep, validated: n_trials and replicates with the schema's defaults

    def read(con):
        rows = con.execute(STATUS_SQL).df().to_dict("records")
        groups = con.execute(SEED_GROUP).df()
        cells = con.execute(f"SELECT c.* FROM scalars c JOIN ({SEED_GROUP}) g USING (run_id, trial_id)").df() \
            if any(r["replicates"] for r in rows) else None
        unanalysed = {r[0]: list(r[1]) for r in con.execute(UNANALYSED_SQL).fetchall()}
        curves: dict[str, dict[int, float]] = {}
        n_cells: dict[str, int] = {}
        for trial_id, k, flip, n in con.execute(K90_SQL).fetchall():
            curves.setdefault(trial_id, {})[int(k)] = float(flip)
            n_cells[trial_id] = int(n)
        matched = _matched_left(con, sweep, rows) if sweep.search.matched else {}
        return rows, groups, cells, unanalysed, {t: k90_of(f, n_cells[t]) for t, f in curves.items()}, matched

    from workers.k90 import k90_of

    # again if a compaction finished meanwhile
    rows, groups, cells, unanalysed, k90s, matched = with_connection([run_dir], read)
    for r in rows:
        for key, value in r.items():  # a unit with no selected trial yet: NULLs, whatever pandas made of them
            if isinstance(value, float) and value != value:
                r[key] = None
        r["warnings"] = [str(w) for w in r["warnings"]] if r["warnings"] is not None else []
        left = _left(run, sweep, r, unanalysed.get(r["unit_id"], []), k90s, matched.get(r["unit_id"], 0))
        r["pending"], r["phase"] = left.trials, left.phase.value
        r["seed_jaccard"] = None
        if r["replicates"]:  # so the cells were read
            group = groups[groups.selected_trial == r["selected_trial"]].drop(columns="selected_trial")
            mine = cells[cells.trial_id.isin(group.trial_id)]
            jaccard = seed_stats(r["selected_trial"], group, mine).jaccard
            r["seed_jaccard"] = None if jaccard != jaccard else jaccard  # NaN (no moved cell anywhere): null
    return rows


def _matched_left(con, sweep, rows: list[dict]) -> dict[str, int]:
    """Per unit: the replicates of its search.matched trials still to run (orchestrator.units.stored_matched_left)."""
    from orchestrator.units import StoredUnit, stored_matched_left

    keys = {u: json.dumps([m, t, o, s, list(map(int, layers))])
            for u, m, t, o, s, layers in con.execute(PAIR_KEYS_SQL).fetchall()}
    search: dict[str, list[dict]] = {}
    for unit_id, trial_id, kl, flip in con.execute(SEARCH_ROWS_SQL).fetchall():
        search.setdefault(unit_id, []).append({"trial_id": trial_id, "val_kl_other": kl, "val_flip_rate": flip})
    done = {t: int(n) for t, n in con.execute(REPLICATES_DONE_SQL).fetchall()}
    n_trials = sweep.search.n_trials
    units = {r["unit_id"]: StoredUnit(keys[r["unit_id"]], r["method"], int(r["done"]) + int(r["pruned"]) >= n_trials,
                                      r["selected_trial"] if isinstance(r["selected_trial"], str) else None,
                                      search.get(r["unit_id"], [])) for r in rows if r["unit_id"] in keys}
    return stored_matched_left(units, sweep.search.matched, sweep.search.replicates, done)


def _left(run: RunDir, sweep, row: dict, unanalysed: list[str], k90s: dict[str, int | None], matched_left: int = 0):
    """What is left of a described unit, by the pure rule the coordinator schedules with (controls at k90: at the
    selected trial's k90, as the coordinator trains them; before its analysis, the most masks there can be)."""
    from orchestrator.controls import mask_count, mask_names
    from orchestrator.units import Tally, targets_of, unit_left

    targets = targets_of(sweep)
    wanted = 0
    if row["selected_trial"] is not None and targets.controls.applies_to(row["method"]):
        seeds = 1 + (int(row["replicates"]) if targets.controls.replicates else 0)
        plan, n, chosen = targets.controls, int(row["sites_total"]), row["selected_trial"]
        per_seed = len(mask_names(plan, n, k90s.get(chosen))) if chosen in k90s or not plan.at_k90 \
            else mask_count(plan, n)
        wanted = per_seed * seeds
    tally = Tally(described=True, search_finished=int(row["done"]) + int(row["pruned"]), selected=row["selected_trial"],
                  replicates_done=int(row["replicates"]), matched_left=matched_left, to_analyse=tuple(unanalysed),
                  analysis_stopped=not all(run.artifact(tid).exists() for tid in unanalysed),
                  pilot_done=int(row["pilots"]) > 0, controls_wanted=wanted,
                  controls_done=min(wanted, int(row["controls"] or 0)))
    return unit_left(targets, tally)


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if args.watch is not None:
        if args.json:
            raise UsageError("--watch and --json do not go together; poll `actscale status --json` instead")
        if args.watch <= 0:
            raise UsageError(f"--watch {args.watch}: the interval must be a positive number of seconds")
        return watch_status(run_dir, args.watch)
    rows = unit_status(run_dir)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(status_text(run_dir, rows))
    return 0


def watch_status(run_dir: Path, every_s: float) -> int:
    """Print the status again whenever it changes (in place on a terminal) until no coordinator
    holds the run directory (one that has not started yet is waited for); Ctrl-C stops watching,
    never the sweep."""
    import sys
    import time

    from orchestrator.lock import held_by_a_live_coordinator
    from storage.errors import StorageError

    live = sys.stdout.isatty()
    shown = None
    try:
        while True:
            running = held_by_a_live_coordinator(run_dir)
            pending = None
            try:
                rows = unit_status(run_dir)
                text, pending = status_text(run_dir, rows), sum(r["pending"] for r in rows)
            except (StorageError, UsageError) as exc:  # not started yet: no tables or no stored sweep
                text = f"waiting for {run_dir} ({str(exc).splitlines()[0]})"
            if not running and pending is not None:
                text += f"\n\nno coordinator is running on {run_dir}: " + (
                    "the sweep is done" if pending == 0 else
                    f"{pending} trial(s) pending; `actscale resume {run_dir}` continues it")
            if text != shown:
                if live:
                    print("\x1b[2J\x1b[H", end="")  # clear the terminal: the table is updated in place
                print(f"[{time.strftime('%H:%M:%S')}] actscale status {run_dir}\n{text}", flush=True)
                shown = text
            if not running and pending is not None:  # a run not started yet is waited for
                return 0
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0
