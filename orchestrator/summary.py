"""What a coordinator reports at its end: counts, each unit's selected trial, and whether it stopped
at its --stop-after limit with work left."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.units import UnitState, refresh_selections
from storage.run_dir import RunDir
from storage.selection import describe_rule
from storage.store import read_table

log = logging.getLogger("actscale")


@dataclass
class Summary:
    run_dir: Path
    completed: int
    failed: int
    model_loads: int
    selected: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: int = 0
    pruned: int = 0
    analyzed: int = 0  # trials with curves rows
    stopped_at_limit: bool = False  # the run stopped at its --stop-after limit
    trials_left: int = 0  # search trials and replicates still to run (a resume runs them)


def _selected_rows(run_dir: RunDir, units: list[UnitState]) -> list[dict]:
    n_val = {r["unit_id"]: r["n_val"] for r in read_table(run_dir.path, "units").table.select(
        ["unit_id", "n_val"]).to_pylist()}  # the prompts behind each val rate
    refresh_selections(units)
    selected = []
    for state in units:
        row = state.selected
        if row is None:
            continue
        selected.append(dict(unit=state.planned.spec.describe(), trial_id=row["trial_id"],
                             val_flip_rate=row["val_flip_rate"], val_kl_other=row["val_kl_other"],
                             sites_moved=row["sites_moved"], sites_total=row["sites_total"],
                             selected_by=row["selected_by"], replicates=len(state.replicate_ids.get(row["trial_id"], [])),
                             n_val=n_val.get(state.unit_id),
                             controls=len(state.control_masks.get(row["trial_id"], set()))))
    return selected


def log_phase_seconds(seconds: dict[str, float]) -> None:
    """The run's worker seconds per phase so far (RUN_DIR/phase_seconds.json), with the analyses' share."""
    total = sum(seconds.values())
    if total <= 0:
        return
    parts = ", ".join(f"{phase} {s:.0f}s" for phase, s in sorted(seconds.items(), key=lambda kv: -kv[1]))
    log.info(f"worker time by phase: {parts}; analyses {seconds.get('analyse', 0.0) / total:.0%} of it")


def summarize(run_dir: RunDir, units: list[UnitState], model_loads: int, wall: float, min_flip: float,
              stopped_at_limit: bool = False) -> Summary:
    selected = _selected_rows(run_dir, units)
    completed = sum(s.completed for s in units)
    failed, interrupted, pruned = (sum(getattr(s, name) for s in units) for name in ("failed", "interrupted", "pruned"))
    analyzed = sum(len(s.analysed) for s in units)
    left = sum(s.left().trials for s in units)
    summary = Summary(run_dir.path, completed, failed, model_loads, selected, wall, interrupted, pruned, analyzed,
                      stopped_at_limit, left)
    log.info(f"{'stopped at the limit' if stopped_at_limit else 'done'}: {completed} completed trial(s), {pruned} "
             f"pruned, {failed} failed, {interrupted} interrupted and re-run, {analyzed} analyzed, model loads: "
             f"{model_loads}, {wall:.1f}s" + (f"; {left} trial(s) left" if stopped_at_limit else ""))
    log.info(f"  ({describe_rule(min_flip)})")
    for b in selected:
        flag = "  [fallback: none reached min_flip]" if b["selected_by"] == "fallback" else ""
        log.info(f"  selected {b['unit']}: {b['trial_id']} val flip_rate {b['val_flip_rate']:.3f} (n={b['n_val']}), "
                 f"val kl_other {b['val_kl_other']:.3f}, sites moved {b['sites_moved']}/{b['sites_total']}, "
                 f"{b['replicates']} replicate(s)" + (f", {b['controls']} mask control(s)" if b["controls"] else "")
                 + flag)
    return summary
