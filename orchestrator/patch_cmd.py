"""`actscale patch RUN_DIR`: the patching baseline (table patching, workers/patching.py) of a run's units.

Each unit of the run's stored sweep is prepared as its trials were, on the unintervened model, and its
cells (the scalars table's keys) are patched with the task's counterfactual prompts: exact activation
patching and attribution patching, per split asked. It runs in this process, one worker per model
(`WorkerActor`, not as a Ray actor: one process and no cluster needed), and writes atomic parts through
storage's writer while holding the run's lock, so no coordinator writes meanwhile. A unit and split that
already have patching rows are skipped (rerunning adds no rows; to redo, remove RUN_DIR/tables/patching),
and a unit whose task has no counterfactual prompts is skipped with the reason.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.errors import UsageError

TOP = 3  # cells named per unit in the printed line


def register(sub: Any) -> None:
    p = sub.add_parser("patch", help="activation and attribution patching of each unit's cells on the unintervened "
                                     "model (table patching), for tasks with counterfactual prompts")
    p.add_argument("run_dir")
    p.add_argument("--unit", nargs="+", metavar="UNIT_ID", help="only these units (default: every unit of the run)")
    p.add_argument("--method", nargs="+", metavar="METHOD", help="only the units of these methods (patching depends "
                   "on the model, task, site and layers, not on the method: one method's units are enough)")
    p.add_argument("--split", nargs="+", choices=("val", "test"), default=["val"],
                   help="the split(s) whose prompts are patched (default: val)")
    p.set_defaults(func=cmd_patch)


def _top_cells(rows: list[dict[str, Any]]) -> str:
    """The TOP cells of largest |effect| under exact patching on the first split patched, as
    layer/position-or-role[/head]=effect."""
    split = rows[0]["split"]
    exact = [r for r in rows if r["kind"] == "activation" and r["split"] == split] or rows
    exact = sorted(exact, key=lambda r: -abs(r["effect"]))[:TOP]

    def name(r: dict[str, Any]) -> str:
        where = f"pos{r['position']}:{r['role']}" if r["position"] is not None else r["role"]
        head = f"/h{r['head']}" if r["head"] is not None else ""
        return f"L{r['layer']}/{where}{head}={r['effect']:+.2f}"

    return ", ".join(name(r) for r in exact)


def patch_run(run_dir: Path | str, unit_ids: list[str] | None = None, splits: tuple[str, ...] = ("val",),
              say: Callable[[str], None] = print, methods: list[str] | None = None) -> dict[str, int]:
    """Patch the run's units (all, or `unit_ids`) and write their rows; unit id -> rows written (0: skipped)."""
    from orchestrator.lock import RunLock
    from orchestrator.model_layers import layer_counts
    from orchestrator.plan import plan_units
    from storage.run_dir import RunDir
    from storage.store import RunStore, read_table
    from workers.actor import WorkerActor

    run = RunDir(run_dir).check()
    config = run.sweep()
    run_id = run.run_id()
    planned = _chosen(plan_units(config, layer_counts(config.models, run, config.allow_pickle).__getitem__),
                      unit_ids, run_dir, methods)
    lock = RunLock(run)
    lock.acquire(say)  # no coordinator writes the run while patching rows are added
    written: dict[str, int] = {}
    try:
        store = RunStore(Path(run), compact_over=0)
        done = {(r["unit_id"], r["split"]) for r in
                read_table(Path(run), "patching").table.select(["unit_id", "split"]).to_pylist()}
        actor: WorkerActor | None = None  # one model loaded at a time (the plan lists a model's units together)
        for p in planned:
            spec, uid = p.spec, p.unit_id
            wanted = tuple(s for s in splits if (uid, s) not in done)
            label = f"{uid} ({spec.model}, {spec.task.name}, {spec.site}, {spec.method})"
            written[uid] = 0
            if not wanted:
                say(f"{label}: already patched on {', '.join(splits)}; nothing added")
                continue
            if actor is None or actor.model_name != spec.model:
                actor = None  # the previous model is freed before the next one loads
                actor = WorkerActor(spec.model, config.allow_pickle, plugins=config.plugins)
            try:
                rows = actor.patch(uid, spec, wanted)
            except UsageError as exc:
                say(f"{label}: skipped: {exc}")
                continue
            if not rows:
                say(f"{label}: no cells to patch")
                continue
            store.write_now("patching", [dict(r, run_id=run_id) for r in rows])
            written[uid] = len(rows)
            say(f"{label}: {_summary(rows)}")
    finally:
        lock.release()
    return written


def _summary(rows: list[dict[str, Any]]) -> str:
    """A unit's printed line: its cells, prompts per split and top cells."""
    n_cells = len({(r["layer"], r["position"], r["role"], r["head"]) for r in rows})
    n_prompts = {r["split"]: r["n_prompts"] for r in rows}
    return (f"{n_cells} cells, prompts " + ", ".join(f"{s} {n}" for s, n in n_prompts.items())
            + f"; top cells (activation, {rows[0]['split']}): {_top_cells(rows)}")


def _chosen(planned: list[Any], unit_ids: list[str] | None, run_dir: Path | str,
            methods: list[str] | None = None) -> list[Any]:
    """The planned units asked for (all where `unit_ids` and `methods` are empty); an id or a method the run lacks
    is refused by name."""
    if methods:
        known_methods = sorted({p.spec.method for p in planned})
        missing = [m for m in methods if m not in known_methods]
        if missing:
            raise UsageError(f"{run_dir}: no unit of method {', '.join(missing)} in this run; its methods: "
                             f"{', '.join(known_methods)}")
        planned = [p for p in planned if p.spec.method in methods]
    if not unit_ids:
        return planned
    known = {p.unit_id for p in planned}
    unknown = [u for u in unit_ids if u not in known]
    if unknown:
        raise UsageError(f"{run_dir}: no unit {', '.join(unknown)} in this run; its units: {', '.join(sorted(known))}")
    return [p for p in planned if p.unit_id in unit_ids]


def cmd_patch(args: argparse.Namespace) -> int:
    written = patch_run(Path(args.run_dir), args.unit, tuple(dict.fromkeys(args.split)), methods=args.method)
    print(f"patching rows written: {sum(written.values())} ({Path(args.run_dir)}/tables/patching)")
    return 0
