"""What a run could not measure: the main features of the full design that its sweep lacks, as data.

The page (reports/findings.py) is generated from one run sized to a budget (search_spaces/paper.yaml: `make
findings` in at most two hours on a 2-core CPU). The full design (search_spaces/study.yaml, for a cluster or a
GPU) has more: methods, held-out templates, prompts, sites, tasks, a convergence pilot, longer training, more
trials, replicates, controls and strengths. `missing` compares the two sweeps and names, for each feature the
run lacks, the claims whose verdicts it would add units to or measure better (`judged`) and those it would only
show beside a verdict (`beside`), so that the page can say what its budget could not resolve; a claim with no
unit to judge names the features that would give it one (`makes_units`). Plain data from the two validated
sweeps: no tables are read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.run import ACTIVSCALAR_ROLE, BIAS_ONLY, DIFFMEANS, DYNSCALAR, role_of
from search_spaces.config import IOI_DEFAULT_N, SweepConfig, TaskEntry, load_config, parse_config

DESIGN = Path(__file__).resolve().parents[1] / "search_spaces" / "study.yaml"
BUDGET_S = 2 * 3600  # `make findings` on this 2-core CPU, both embedded models (search_spaces/paper.yaml's budget)
IN_DISTRIBUTION = ("C1", "C2", "C3", "C4", "C5")  # claims judged per model, task and site on in-distribution units
ALL = IN_DISTRIBUTION + ("C6",)


@dataclass(frozen=True)
class Missing:
    """One feature of the full design that the run lacks."""

    name: str  # its short name, as a sentence names it ("method `dynscalar`", "held-out templates")
    gloss: str  # what it measures or how, in words ("" when the name says it)
    design: str  # the full design's value
    run: str  # the run's value
    judged: tuple[str, ...]  # claims whose verdicts it would add units to or measure better
    beside: tuple[str, ...] = ()  # claims it would only be shown beside (not in their rules)
    makes_units: bool = False  # a claim with no unit needs it to have one

    @property
    def feature(self) -> str:
        """The name and its gloss, as the page's table shows it."""
        return f"{self.name} ({self.gloss})" if self.gloss else self.name

    def claims_text(self) -> str:
        shown = list(self.judged) + [f"beside {c} (not judged)" for c in self.beside]
        return ", ".join(shown) or "-"


# what a method (by its role on the page, reports.run.role_of) measures that no other does: (words, claims judged
# on it, claims it stands beside)
METHOD_USES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    DYNSCALAR: ("alpha read from the activation, so it runs on any prompt length", ("C6",), ()),
    BIAS_ONLY: ("DynScalar's bias-only control, alpha = 1 + b: is reading the activation what helps?", ("C6",), ()),
    DIFFMEANS: ("the training-free difference-in-means baseline: what learning buys", (), ("C1",)),
    ACTIVSCALAR_ROLE: ("ActivScalar's scalars per token role, applied by role to the held-out templates: C6's "
                       "role-aligned baseline", (), ("C6",)),
}


def _methods(config: SweepConfig) -> list[str]:
    """The methods some task of the sweep runs, in the sweep's order."""
    used = {m for e in config.task_entries() for m in (e.methods or config.methods)}
    return [m for m in config.methods if m in used]


def _sites(config: SweepConfig) -> list[str]:
    """The sites some task of the sweep runs, in the sweep's order."""
    used = {s for e in config.task_entries() for s in (e.sites or config.sites)}
    return [s for s in config.sites if s in used]


def _heldout(config: SweepConfig) -> list[str]:
    return list(dict.fromkeys(t for e in config.task_entries() for t in e.options.get("heldout_templates", [])))


def _ioi_n(entries: list[TaskEntry]) -> int | None:
    """The fewest prompts per template of the sweep's ioi entries (None: no ioi)."""
    found = [int(e.options.get("n", IOI_DEFAULT_N)) for e in entries if e.name == "ioi"]
    return min(found) if found else None


def _decades(config: SweepConfig) -> float:
    """The narrowest span, in decades, of the searched lambda ranges (every method)."""
    spans = [config.search.space.lambda_faith, config.search.space.lambda_min] + [
        r for o in config.search.method_space.values() for r in (o.lambda_faith, o.lambda_min) if r is not None]
    return min(math.log10(r.high / r.low) for r in spans if r.low > 0)


def _controls(config: SweepConfig) -> str:
    c = config.controls
    if not c.enabled:
        return "none"
    ks = ([f"k shares {', '.join(f'{k:g}' for k in c.k_fractions)}"] if c.k_fractions else []) + (
        ["at k90"] if c.at_k90 else []) + ([f"k {', '.join(map(str, c.ks))}"] if c.ks else [])
    return (f"{' and '.join(ks) or 'no k'}; {c.random_masks} random-k; structured {_names(c.structured)}; "
            f"replicates {'controlled' if c.replicates else 'not controlled'}")


def _names(values: list[Any]) -> str:
    return ", ".join(f"`{v}`" for v in values) or "none"


def missing(run: SweepConfig, design: SweepConfig) -> list[Missing]:
    """The design's main features the run lacks, in the order a reader would add them."""
    out: list[Missing] = []
    run_methods = _methods(run)
    for method in _methods(design):
        if method not in run_methods:
            what, judged, beside = METHOD_USES.get(role_of(method) or "", ("", (), ()))
            out.append(Missing(f"method `{method}`", what, "yes", "no", judged, beside, makes_units=True))
    held_run, held_design = _heldout(run), _heldout(design)
    if len(held_design) > len(held_run):
        out.append(Missing("held-out templates", "DynScalar trained on some templates, tested on others",
                           _names(held_design), _names(held_run), ("C6",), makes_units=True))
    n_run, n_design = _ioi_n(run.task_entries()), _ioi_n(design.task_entries())
    if n_design is not None and (n_run is None or n_design > n_run):
        out.append(Missing("ioi prompts per template", "C6 needs >= 100 test prompts per held-out template",
                           str(n_design), str(n_run or "no ioi"), ALL, makes_units=True))
    tasks_run = list(dict.fromkeys(e.name for e in run.task_entries()))
    tasks_design = list(dict.fromkeys(e.name for e in design.task_entries()))
    if [t for t in tasks_design if t not in tasks_run]:
        out.append(Missing("tasks", "", _names(tasks_design), _names(tasks_run), IN_DISTRIBUTION))
    sites_run, sites_design = _sites(run), _sites(design)
    if [s for s in sites_design if s not in sites_run]:
        out.append(Missing("sites", "where else in the block the task is done", _names(sites_design),
                           _names(sites_run), ALL))
    if design.train.converge is not None and run.train.converge is None:
        c = design.train.converge
        out.append(Missing("training length from a convergence pilot", "val objective changing < "
                           f"{c.tol:.0%} over {c.window} steps, at most {c.max_steps}", "yes",
                           f"no: a fixed {run.train.steps} steps", ALL))
    elif design.train.steps > run.train.steps:
        out.append(Missing("training steps per trial", "", str(design.train.steps), str(run.train.steps), ALL))
    if design.search.n_trials > run.search.n_trials:
        out.append(Missing("search trials per unit", "the fronts C1 and C5 are judged on", str(design.search.n_trials),
                           str(run.search.n_trials), ("C1", "C5")))
    if _decades(design) > _decades(run) + 1e-9:
        out.append(Missing("span of the searched lambda ranges", "decades, the narrowest", f"{_decades(design):.3g}",
                           f"{_decades(run):.3g}", ("C1", "C5")))
    pairs = [p for p in design.search.matched if p not in run.search.matched]
    if pairs:
        out.append(Missing("replicates of C1's matched trials", "search.matched: each pair's trials at matched val "
                           "kl_other replicated like the selected ones", _names(["/".join(p) for p in pairs]),
                           _names(["/".join(p) for p in run.search.matched]), ("C1",)))
    if design.search.replicates > run.search.replicates:
        out.append(Missing("replicates per selected trial", "", str(design.search.replicates),
                           str(run.search.replicates), ALL))
    if _controls(design) != _controls(run) and design.controls.enabled:
        out.append(Missing("retrained mask controls", "", _controls(design), _controls(run), ("C3",)))
    if design.analysis.k_step < run.analysis.k_step:
        out.append(Missing("the curves' k grid", "k_step: 0, 1, k_step, k_step^2, ...", str(design.analysis.k_step),
                           str(run.analysis.k_step), ("C2", "C3")))
    beyond = [b for b in design.analysis.betas if b > 1 and b not in run.analysis.betas]
    if beyond:
        out.append(Missing("strengths beyond 1", "extrapolation", _names(beyond), "none", (), ("C4",)))
    return out


def missing_for(run_config: dict[str, Any], design_path: Path = DESIGN) -> list[Missing] | None:
    """`missing` for a run's stored sweep (a dict) against the design file; None when either cannot be read (no
    design file, or a stored sweep the schema does not accept: an older or incomplete one)."""
    if not Path(design_path).is_file():
        return None
    try:
        return missing(parse_config(run_config, "the run's stored sweep"), load_config(design_path))
    except ValueError:  # search_spaces.config's UsageError: the message says what is wrong, the page only that
        return None
