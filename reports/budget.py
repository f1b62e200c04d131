"""What a run could not measure: the features of the full design that its sweep lacks, as data.

The page (reports/findings.py) is generated from one run sized to a budget (search_spaces/paper.yaml: `make
findings` in at most two hours on a 2-core CPU). The full design (search_spaces/study.yaml, for a cluster or a
GPU) has more: methods, held-out templates, sites, tasks, a convergence pilot, more trials, replicates, controls
and strengths. `missing` compares the two sweeps and names, for each feature the run lacks, the claims whose
items it would measure, so that the page can say what its budget could not resolve (and a claim with no unit
to judge says what would give it one). Plain data from the two validated sweeps: no tables are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces.config import SweepConfig, load_config, parse_config

DESIGN = Path(__file__).resolve().parents[1] / "search_spaces" / "study.yaml"
BUDGET_S = 2 * 3600  # `make findings` on this 2-core CPU, both embedded models (search_spaces/paper.yaml's budget)

# what a method measures that no other does, and the claims it serves
METHOD_USES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dynscalar": ("DynScalar (alpha read from the activation, so it runs on any prompt length)", ("C6",)),
    "dynscalar_bias": ("DynScalar's bias-only control (alpha = 1 + b: is reading the activation what helps?)",
                       ("C6",)),
    "diffmeans": ("the training-free difference-in-means baseline beside SteerVec (what learning buys)", ("C1",)),
}


@dataclass(frozen=True)
class Missing:
    """One feature of the full design that the run lacks."""

    feature: str  # what it is, in words
    design: str  # the full design's value
    run: str  # the run's value
    claims: tuple[str, ...]  # the claims whose items it would measure (or measure better)


def _methods(config: SweepConfig) -> list[str]:
    """The methods some task of the sweep runs, in the sweep's order."""
    used = {m for e in config.task_entries() for m in (e.methods or config.methods)}
    return [m for m in config.methods if m in used]


def _heldout(config: SweepConfig) -> list[str]:
    return list(dict.fromkeys(t for e in config.task_entries() for t in e.options.get("heldout_templates", [])))


def _names(values: list[Any]) -> str:
    return ", ".join(f"`{v}`" for v in values) or "none"


def missing(run: SweepConfig, design: SweepConfig) -> list[Missing]:
    """The design's features the run lacks, in the order a reader would add them."""
    out: list[Missing] = []
    run_methods, design_methods = _methods(run), _methods(design)
    for method in design_methods:
        if method not in run_methods:
            what, claims = METHOD_USES.get(method, (f"method `{method}`", ()))
            out.append(Missing(f"method `{method}`: {what}", "yes", "no", claims))
    held_run, held_design = _heldout(run), _heldout(design)
    if len(held_design) > len(held_run):
        out.append(Missing("held-out templates (DynScalar trained on some templates, tested on others)",
                           _names(held_design), _names(held_run), ("C6",)))
    tasks_run = list(dict.fromkeys(e.name for e in run.task_entries()))
    tasks_design = list(dict.fromkeys(e.name for e in design.task_entries()))
    if [t for t in tasks_design if t not in tasks_run]:
        out.append(Missing("tasks", _names(tasks_design), _names(tasks_run), ("C1", "C2", "C3", "C4", "C5")))
    if [s for s in design.sites if s not in run.sites]:
        out.append(Missing("sites (where else in the block the task is done)", _names(design.sites),
                           _names(run.sites), ("C3", "C5")))
    if design.train.converge is not None and run.train.converge is None:
        c = design.train.converge
        out.append(Missing("training length from a convergence pilot (val objective changing < "
                           f"{c.tol:.0%} over {c.window} steps, at most {c.max_steps})", "yes",
                           f"no: a fixed {run.train.steps} steps", ("C1", "C3", "C4", "C5")))
    if design.search.n_trials > run.search.n_trials:
        out.append(Missing("search trials per unit (the front C1 and C5 are judged on)", str(design.search.n_trials),
                           str(run.search.n_trials), ("C1", "C5")))
    if design.search.replicates > run.search.replicates:
        out.append(Missing("replicates per selected trial", str(design.search.replicates),
                           str(run.search.replicates), ("C1", "C2", "C3", "C4", "C6")))
    structured = [s for s in design.controls.structured if s not in run.controls.structured]
    if design.controls.enabled and (structured or (design.controls.k_fractions and not run.controls.k_fractions)
                                    or (design.controls.replicates and not run.controls.replicates)):
        shown = [f"k shares {', '.join(f'{k:g}' for k in design.controls.k_fractions or [])}",
                 f"structured {_names(design.controls.structured)}",
                 f"replicates {'controlled' if design.controls.replicates else 'not controlled'}"]
        mine = [f"k shares {', '.join(f'{k:g}' for k in run.controls.k_fractions or []) or 'none'}",
                f"structured {_names(run.controls.structured)}",
                f"replicates {'controlled' if run.controls.replicates else 'not controlled'}"]
        out.append(Missing("retrained mask controls", "; ".join(shown), "; ".join(mine), ("C3",)))
    beyond = [b for b in design.analysis.betas if b > 1 and b not in run.analysis.betas]
    if beyond:
        out.append(Missing("strengths beyond 1 (extrapolation, shown apart)", _names(beyond), "none", ("C4",)))
    return out


def missing_for(run_config: dict[str, Any], design_path: Path = DESIGN) -> list[Missing]:
    """`missing` for a run's stored sweep (a dict) against the design file; nothing when the file is absent."""
    if not Path(design_path).is_file():
        return []
    return missing(parse_config(run_config, "the run's sweep.yaml"), load_config(design_path))
