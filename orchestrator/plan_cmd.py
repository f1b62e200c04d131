"""`actscale plan SWEEP [--workers N]`: what a sweep will cost before it runs.

Per unit and in total: its trials per phase (search, replicates, and any phase a sweep adds:
orchestrator/costs.py PHASE_WORK), trial-steps (expected, with ASHA), analysis points and forwards,
and the predicted wall time on this machine (the sweep's resources) and on N workers per model.
The times come from a calibration of each model on this machine (orchestrator/calibration.py:
measured once and cached; `--calibrate` measures again; `--calibration FILE` takes another
machine's, e.g. a GPU node's). No torch is imported unless something has to be measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.calibration import (
    SpeedRecord,
    cached_speed,
    facts_file,
    facts_key,
    measure,
    read_facts,
    read_speed,
    speed_file,
    write_json,
)
from orchestrator.costs import Costing, Speed, UnitCost, UnitFacts, sweep_wall, trial_shape, unit_cost
from orchestrator.plan import PlannedUnit, plan_units, train_settings
from orchestrator.units import Phase
from search_spaces.config import SweepConfig, load_config, resolve_sweep
from workers.errors import UsageError
from workers.tasks.base import TaskSpec
from workers.unit import UnitSpec


def register(sub) -> None:
    p = sub.add_parser("plan", help="what a sweep will cost before it runs: trials, trial-steps, analysis forwards "
                                    "and the predicted wall time, per unit and in total")
    p.add_argument("sweep", help="a sweep YAML file or a built-in sweep name")
    p.add_argument("--workers", type=int, metavar="N", help="also predict the wall time with N workers per model")
    p.add_argument("--calibrate", action="store_true", help="measure each model's speed on this machine again "
                   "(else a cached measurement is used)")
    p.add_argument("--calibration", action="append", metavar="FILE", default=[],
                   help="a model's speed measured elsewhere (a file from another machine's "
                        "~/.cache/actscale/calibration/<host>/), used instead of this machine's; once per model")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.set_defaults(func=cmd_plan)


@dataclass
class ModelPlan:
    speed: SpeedRecord
    facts: dict[str, Any]


def fact_specs(config: SweepConfig, model: str) -> list[UnitSpec]:
    """One unit spec per facts key of the model's units (their layers do not change the facts)."""
    settings, found = train_settings(config), {}
    for task in config.task_entries():
        for method in task.methods or config.methods:
            spec = UnitSpec(model, TaskSpec.make(task.name, task.options), (task.sites or config.sites)[0], "all",
                            method, settings)
            found.setdefault(facts_key(spec), spec)
    return list(found.values())


def step_shapes(config: SweepConfig) -> list[tuple[int, int]]:
    """The (batch size, K) a sweep's training steps run at."""
    return sorted({(trial_shape(config, m)[1], config.search.batch) for m in config.methods})


def model_plan(config: SweepConfig, model: str, given: SpeedRecord | None, recalibrate: bool) -> ModelPlan:
    """The model's speed (given, cached, or measured now) and the facts of the sweep's units (cached, or
    measured now); what is measured is cached."""
    specs = fact_specs(config, model)
    shapes = step_shapes(config)
    speed = given or (None if recalibrate else cached_speed(model))
    if speed is not None and not all(speed.has_steps(b, k) for b, k in shapes):
        speed = None if given is None else _missing_shapes(given, shapes)
    facts = {} if recalibrate else read_facts(model)
    missing = [s for s in specs if facts_key(s) not in facts.get("units", {})]
    if speed is None or missing:
        what = "its speed and " if speed is None else ""
        print(f"calibrating {model} on this machine: {what}what its units hold (loads the model)...", file=sys.stderr)
        measured, new = measure(model, config.allow_pickle, (specs[0], shapes) if speed is None else None, missing)
        facts = {**facts, **{k: v for k, v in new.items() if k != "units"},
                 "units": {**facts.get("units", {}), **new["units"]}}
        write_json(facts_file(model), facts)
        if measured is not None:
            speed = measured
            write_json(speed_file(model), asdict(measured))
    assert speed is not None
    return ModelPlan(speed, facts)


def _missing_shapes(given: SpeedRecord, shapes: list[tuple[int, int]]) -> SpeedRecord:
    """A given calibration without this sweep's step shapes: used anyway (scaled), with a note."""
    print(f"note: the calibration of {given.model} has steps at {sorted(given.steps)}, not at this sweep's "
          f"{[f'{b}x{k}' for b, k in shapes]}: scaled from the nearest", file=sys.stderr)
    return given


def unit_facts(planned: PlannedUnit, plan: ModelPlan) -> UnitFacts:
    spec, facts = planned.spec, plan.facts
    held = facts["units"][facts_key(spec)]
    n_layers = facts["n_layers"]
    layers = list(range(n_layers)) if spec.layers == "all" else list(spec.layers)
    heads = facts["n_heads"] if spec.site == "head" else 1
    first = layers[0] if spec.settings.prefix_cache and layers[0] > 0 else 0
    return UnitFacts(held["total"], held["n_train"], held["n_val"], held["n_test"],
                     len(layers) * held["columns"] * heads, first)


def plan_sweep(config: SweepConfig, given: dict[str, SpeedRecord], recalibrate: bool = False,
               ) -> tuple[dict[str, ModelPlan], list[UnitCost]]:
    plans = {m: model_plan(config, m, given.get(m), recalibrate) for m in config.models}
    planned = plan_units(config, lambda m: plans[m].facts["n_layers"])
    costs = [unit_cost(Costing(config, p, unit_facts(p, plans[p.spec.model]), plans[p.spec.model].speed.speed()))
             for p in planned]
    return plans, costs


def walls(config: SweepConfig, plans: dict[str, ModelPlan], costs: list[UnitCost],
          workers: int | None) -> dict[str, float]:
    """Predicted seconds on this machine (the sweep's resources) and on N workers per model."""
    per_model: dict[str, tuple[Speed, list[UnitCost]]] = {m: (plans[m].speed.speed(), []) for m in config.models}
    for c in costs:
        per_model[c.unit.spec.model][1].append(c)
    r = config.resources
    out = {"this_machine": sweep_wall(per_model, r.workers_per_model, r.models_at_once)}
    if workers:
        out[f"{workers}_workers"] = sweep_wall(per_model, workers, r.models_at_once)
    return out


LABELS = {Phase.ANALYSE: "analysis"}  # a phase's name in the plan's columns (else its Phase value)


def unit_row(c: UnitCost) -> dict[str, Any]:
    """A unit's line: per phase its trials (a phase that trains) or its points and prompt forwards (one that
    scores: the analyses, and any such phase a sweep adds), then trial-steps and seconds in all."""
    row: dict[str, Any] = {"unit_id": c.unit.unit_id, "unit": c.unit.spec.describe()}
    for phase, pieces in c.phases.items():
        label = LABELS.get(phase, phase.value)
        if any(p.points for p in pieces):
            row[f"{label}_points"] = c.total("points", phase)
            row[f"{label}_forwards"] = c.total("prompt_forwards", phase)
        elif any(p.trials for p in pieces):
            row[f"{label}_trials"] = c.total("trials", phase)
    row.update(trial_steps=c.total("trial_steps"), seconds=c.total("seconds"))
    return row


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_config(resolve_sweep(args.sweep))
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: give a number of workers of 1 or more")
    given = {}
    for path in args.calibration:
        record = read_speed(_path(path))
        given[record.model] = record
    unknown = sorted(set(given) - set(config.models))
    if unknown:
        raise UsageError(f"--calibration for model(s) {unknown} that the sweep does not use ({', '.join(config.models)})")
    plans, costs = plan_sweep(config, given, args.calibrate)
    predicted = walls(config, plans, costs, args.workers)
    rows = [unit_row(c) for c in costs]
    if args.json:
        print(json.dumps(dict(units=rows, totals=totals(rows), wall_s=predicted,
                              calibrations={m: p.speed.describe() for m, p in plans.items()}), indent=1))
        return 0
    print(plan_text(config, plans, rows, predicted))
    return 0


def _path(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--calibration {text}: no such file")
    return path


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k not in ("unit_id", "unit")] if rows else []
    return {k: sum(r.get(k, 0) for r in rows) for k in keys}


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def plan_text(config: SweepConfig, plans: dict[str, ModelPlan], rows: list[dict[str, Any]],
              predicted: dict[str, float]) -> str:
    keys = [k for k in rows[0] if k not in ("unit_id", "unit")]
    header = ["unit", "what"] + [k.replace("_", " ") for k in keys]
    table = [[r["unit_id"], r["unit"]] + [_cell(k, r.get(k, 0)) for k in keys] for r in rows]
    table.append(["total", f"{len(rows)} unit(s)"] + [_cell(k, v) for k, v in totals(rows).items()])
    widths = [max(len(str(line[i])) for line in [header] + table) for i in range(len(header))]
    lines = [f"plan of sweep {config.name!r}: {len(rows)} unit(s)"]
    lines += [f"  speed of {p.speed.describe()}" for p in plans.values()]
    lines += ["  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
              for line in [header] + table]
    r = config.resources
    lines.append(f"predicted wall time on this machine ({r.workers_per_model} worker(s) per model, "
                 f"{r.models_at_once} model(s) at once): {duration(predicted['this_machine'])}")
    lines += [f"predicted wall time with {key.split('_')[0]} workers per model: {duration(v)}"
              for key, v in predicted.items() if key != "this_machine"]
    if config.search.pruner is not None:
        lines.append("trial-steps with asha are expected values (its rule played on random trial qualities)")
    if config.train.patience or config.train.prune:
        lines.append("early stopping and train.prune cannot be foreseen: trial-steps and times count no stop")
    return "\n".join(lines)


def _cell(key: str, value: float) -> str:
    if key == "seconds":
        return duration(value)
    return f"{value:.0f}" if key.endswith(("steps", "forwards")) else str(int(value))
