"""One run's tables as the findings read them: units with their paper role and label, each unit's
selected trial and replicates, and per-prompt test values keyed so that two units' prompts pair up.

Columns planned but not in every run (units.model_family, trials.mask, predictions.cluster, the
`patching` table, ...) are optional: an absent column, or one that is NULL throughout, reads as
"not measured". Until predictions carry a `cluster`, a prompt's cluster is derived from the
examples table: the first entity of the test example (the country a capital prompt asks about,
the name pair of an IOI prompt), joined on unit_id and index (with cross-fitted folds, `index` is a
prompt's place in the unit's pool and the examples joined are those with a `test_fold`).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from reports.curves import heldout_templates
from reports.stats import Arm
from storage.api import open_runs
from storage.errors import StorageError
from storage.query import load
from storage.run_dir import RunDir
from storage.schema import SCHEMAS, Status
from storage.seeds import group_of
from storage.selection import select_per_unit

# The paper's methods as the paper spells them; a run's method is one of them when the names are equal ignoring
# case. DynScalar_bias (alpha = 1 + b, the activation not read), DiffMeans (a difference-in-means steering
# vector, no training) and ActivScalar_role (ActivScalar's scalars per token role, C6's role-aligned baseline) are
# this project's controls.
ACTIVSCALAR, STEERVEC, DYNSCALAR, BIAS_ONLY, DIFFMEANS = "ActivScalar", "SteerVec", "DynScalar", "DynScalar_bias", \
    "DiffMeans"
ACTIVSCALAR_ROLE = "ActivScalar_role"
ROLES = (ACTIVSCALAR, STEERVEC, DIFFMEANS, DYNSCALAR, BIAS_ONLY, ACTIVSCALAR_ROLE)
NEAR_CHANCE = 0.6  # units.base_accuracy below this: the model barely does the task (chance is 0.5)
# per-prompt values a trial's test predictions give (names used by the claims)
FLIP, KL, LD, LD_AFTER, SHIFT, MIRROR, LD_GAP = "flip", "kl", "ld", "ld_after", "shift", "mirror", "ld_gap"
PROMPT_COLUMNS = ["cluster", "template", FLIP, KL, LD, LD_AFTER, SHIFT, MIRROR, LD_GAP]  # `Run.prompts`, beside the key
# what names a model on a page: its family, checkpoint, quantisation, the dtypes it trained and was evaluated in
IDENTITY_COLUMNS = ("model_family", "model_checkpoint", "model_quantisation", "train_dtype", "eval_dtype", "model_source",
                    "model_licence")


def role_of(method: str) -> str | None:
    """The paper's (or the project's control's) name of a run's method, or None for another method."""
    return next((r for r in ROLES if r.lower() == str(method).lower()), None)


def measured(frame: pd.DataFrame, column: str) -> bool:
    """Whether a planned column is there and holds at least one value."""
    return column in frame.columns and bool(frame[column].notna().any())


@dataclass
class Run:
    run_dir: Path
    run_id: str
    revisions: list[str]
    config: dict[str, Any]
    min_flip: float
    units: pd.DataFrame  # one row per unit: role, heldout, label, order, apart (why it is kept out of C1 and C3)
    trials: pd.DataFrame
    predictions: pd.DataFrame
    examples: pd.DataFrame
    curves: pd.DataFrame
    scalars: pd.DataFrame
    patching: pd.DataFrame  # empty where the run has no such table
    selected: pd.DataFrame  # one row per unit: the unit's columns, trial_id, selected_by, seeds (selected first)
    wall_s: float
    wall_source: str
    _prompts: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.units.model))

    @property
    def several_models(self) -> bool:
        return len(self.models) > 1

    def in_distribution(self, heldout: bool = False) -> pd.DataFrame:
        """Selected rows of the in-distribution tasks (or, heldout=True, of the tasks holding out templates)."""
        return self.selected[(self.selected.heldout != "") == heldout]

    def where(self, row: Any) -> str:
        """A unit as the page names it: model (where several), task label, site."""
        return (f"{row.model} / " if self.several_models else "") + f"{row.label} / {row.site}"

    def search_trials(self, unit_id: str, complete: bool = True) -> pd.DataFrame:
        """A unit's search trials (no replicates, no masked controls, no convergence pilot): the complete ones, or
        with complete=False every one, pruned and failed included."""
        t = self.trials
        keep = (t.unit_id == unit_id) & t.replicate_of.isna()
        if complete:
            keep &= t.status == Status.COMPLETE
        if "mask" in t.columns:
            keep &= t["mask"].isna()
        if "pilot" in t.columns:  # a convergence pilot is not a search trial
            keep &= ~t["pilot"].fillna(False).astype(bool)
        return t[keep].sort_values("trial_id")

    def replicates(self, trial_id: str) -> list[str]:
        """The trial and its complete replicates (storage.seeds.group_of), the trial first."""
        return group_of(trial_id, self.trials)

    def prompts(self, trial_id: str) -> pd.DataFrame:
        """One trial's test prompts, indexed by a key that is the same for the same prompt in any unit, sorted:
        cluster, template, and the per-prompt values flip (0/1), kl (kl_other), ld (LD, no intervention),
        ld_after (LD'), shift ((LD - LD') / (2 LD)), mirror (|LD' + LD|) and ld_gap (LD - LD', logits)."""
        if trial_id not in self._prompts:
            self._prompts[trial_id] = self._prompt_frame(trial_id)
        return self._prompts[trial_id]

    def pooled_prompts(self, trial_ids: list[str]) -> pd.DataFrame:
        """The trials' test prompts pooled, each prompt key once (the first trial's row), in `prompts`' columns:
        with fold replicates each replicate tests its own share of a unit's prompts, so the pool is what the
        unit is judged on; seed replicates share one test split, so their pool is one trial's."""
        frames = [f for f in (self.prompts(t) for t in trial_ids) if len(f)]
        if not frames:
            return pd.DataFrame(columns=PROMPT_COLUMNS)
        pooled = pd.concat(frames)
        return pooled[~pooled.index.duplicated()]

    def _prompt_frame(self, trial_id: str) -> pd.DataFrame:
        p = self.predictions[self.predictions.trial_id == trial_id]
        if p.empty:
            return pd.DataFrame(columns=PROMPT_COLUMNS)
        unit_id = str(p.unit_id.iloc[0])
        e = self.examples
        e = e[e.unit_id == unit_id]
        # with folds a prediction's index is the prompt's place in the unit's pool, and the examples tested in some
        # fold are those with a test_fold; with one split it is the place in the test split
        e = e[e.test_fold.notna()] if measured(e, "test_fold") else e[e.split == "test"]
        e = e[["index", "prompt", "answer_a", "answer_b", "template", "entities"]]
        p = p.merge(e, on="index", how="left", suffixes=("", "_example"))
        keys = [f"{q}\x1f{a}\x1f{b}" if isinstance(q, str) else f"{unit_id}#{i}"
                for q, a, b, i in zip(p.prompt, p.answer_a, p.answer_b, p["index"])]
        derived = [str(list(ents)[0]) if ents is not None and len(ents) else k for ents, k in zip(p.entities, keys)]
        cluster = p["cluster"].where(p["cluster"].notna(), derived) if measured(p, "cluster") else derived
        template = p["template"] if "template" in p.columns else pd.Series([None] * len(p), index=p.index)
        if "template_example" in p.columns:  # predictions.template where it holds values, else the example's
            template = template.where(template.notna(), p["template_example"])
        ld, after = p.ld_before.to_numpy(dtype=float), p.ld_after.to_numpy(dtype=float)
        frame = pd.DataFrame({
            "cluster": np.asarray(cluster, dtype=object), "template": np.asarray(template, dtype=object),
            FLIP: p.flipped.to_numpy(dtype=float), KL: p.kl_other.to_numpy(dtype=float), LD: ld, LD_AFTER: after,
            SHIFT: (ld - after) / (2 * ld), MIRROR: np.abs(after + ld), LD_GAP: ld - after}, index=pd.Index(keys))
        return frame.sort_index()

    def arm(self, name: str, trial_ids: Sequence[str], metrics: Sequence[str] = (FLIP, KL),
            constants: dict[str, Sequence[float]] | None = None) -> tuple[Arm, dict[Hashable, np.ndarray]]:
        """An arm of the two-level bootstrap made of these trials (replicates), and its prompt sets' clusters.
        Trials with the same test prompts share a prompt set (named by a hash of the prompt keys)."""
        sets: list[Hashable] = []
        values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
        clusters: dict[Hashable, np.ndarray] = {}
        for trial_id in trial_ids:
            frame = self.prompts(trial_id)
            key = hashlib.sha256("\x1e".join(frame.index).encode()).hexdigest()[:16]
            clusters[key] = frame.cluster.to_numpy()
            sets.append(key)
            for m in metrics:
                values[m].append(frame[m].to_numpy(dtype=float))
        consts = {k: np.asarray(v, dtype=float) for k, v in (constants or {}).items()}
        return Arm(name, tuple(sets), values, consts), clusters


def _wall(run_dir: Path, trials: pd.DataFrame) -> tuple[float, str]:
    """The run's wall time: as the run directory records it (RunDir.recorded_wall), else the span of the
    trials table."""
    recorded = RunDir(run_dir).recorded_wall()
    if recorded is not None:
        return recorded, "the wall time recorded in the run directory (`make findings` measures it)"
    timed = trials.dropna(subset=["started_at", "ended_at"])
    if timed.empty:
        return math.nan, "the trials table (no timed trial)"
    span = (timed.ended_at.max() - timed.started_at.min()).total_seconds()
    return float(span), ("the trials table: the last `ended_at` minus the first `started_at` (the model loads "
                         "before the first trial and the analyses after the last are not in it)")


def _order(values: Sequence[str], preferred: Sequence[str]) -> dict[str, int]:
    rank = {v: i for i, v in enumerate(dict.fromkeys(preferred))}
    rest = sorted(set(values) - set(rank))
    return {**rank, **{v: len(rank) + i for i, v in enumerate(rest)}}


def options_text(task_options: str, shown: Any = str) -> str:
    """A unit's task options in words, every number through `shown`."""
    try:
        options = json.loads(task_options or "{}")
    except ValueError:
        return str(task_options)

    def one(v: Any) -> str:
        if isinstance(v, list):
            return "+".join(one(x) for x in v)
        return str(shown(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    return ", ".join(f"{k} {one(v)}" for k, v in sorted(options.items())) or "none"


def apart_reason(unit: Any, selected_by: str | None) -> str:
    """Why a unit is kept out of C1 and C3 ("" when it is not): a model near chance, or no trial reaching
    min_flip on val."""
    reasons = []
    accuracy = unit.base_accuracy
    warned = [w for w in (unit.warnings if unit.warnings is not None else []) if "near chance" in str(w)]
    if (accuracy is not None and not math.isnan(float(accuracy)) and float(accuracy) < NEAR_CHANCE) or warned:
        reasons.append(f"near chance (base accuracy {float(accuracy):.3g})")
    if selected_by == "fallback":
        reasons.append("no trial reaches min_flip on val (fallback)")
    return "; ".join(reasons)


def _patching(run_dir: Path) -> pd.DataFrame:
    if "patching" not in SCHEMAS:
        return pd.DataFrame()
    return load(run_dir, "patching")


def load_run(run_dir: Path, shown: Any = str) -> Run:
    """Read a finished run directory (its tables, sweep.yaml and run.json). `shown` writes numbers in labels."""
    run_dir = Path(run_dir)
    runs = open_runs(run_dir)
    runs_table = runs.runs.sort_values("created_at")
    if runs_table.empty:
        raise StorageError(f"{run_dir} has no runs row: is it a finished run?")
    stored = RunDir(run_dir)
    run_id = stored.run_id() or str(runs_table.run_id.iloc[-1])
    config = yaml.safe_load(stored.stored_sweep_text() or str(runs_table.config_yaml.iloc[-1])) or {}
    tables = {name: runs.table(name) for name in ("units", "trials", "predictions", "examples", "curves", "scalars")}
    tables["patching"] = _patching(run_dir)
    wall = _wall(run_dir, tables["trials"])
    revisions = list(dict.fromkeys(str(r) for r in runs_table.git_revision))
    return assemble(tables, config, run_dir, run_id, revisions, wall, shown)


def assemble(tables: dict[str, pd.DataFrame], config: dict[str, Any], run_dir: Path = Path("."), run_id: str = "",
             revisions: Sequence[str] = (), wall: tuple[float, str] = (math.nan, "unknown"),
             shown: Any = str) -> Run:
    """A Run from one run's tables (frames in the tables' shape; planned columns optional): each unit's selected
    trial by the project's one rule (storage.selection, on val; masked control trials are never candidates)."""
    min_flip = float((config.get("selection") or {}).get("min_flip", 0.9))
    units = tables["units"].drop_duplicates("unit_id").copy()
    units["role"] = [role_of(m) for m in units.method]
    units["heldout"] = [", ".join(heldout_templates(o)) for o in units.task_options]
    units["label"] = [f"{t} (held out: {h})" if h else t for t, h in zip(units.task, units.heldout)]
    for task, group in units[units.heldout == ""].groupby("task"):
        if group.task_options.nunique() > 1:  # the same task twice with other options: tell them apart
            units.loc[group.index, "label"] = [f"{task} ({options_text(o, shown)})" for o in group.task_options]
    tasks = [t if isinstance(t, str) else t.get("name", "") for t in config.get("tasks", [])]
    orders = {"model": _order(units.model, config.get("models", [])), "task": _order(units.task, tasks),
              "site": _order(units.site, config.get("sites", [])), "role": _order(units.role.fillna(""), ROLES)}
    units["order"] = [(orders["model"][m], orders["task"][t], h, orders["site"][s], orders["role"][r or ""], m2)
                      for m, t, h, s, r, m2 in zip(units.model, units.task, units.heldout, units.site, units.role,
                                                   units.method)]
    units = units.sort_values("order").reset_index(drop=True)
    trials = tables["trials"]
    candidates = trials[trials["mask"].isna()] if "mask" in trials.columns else trials
    rows = candidates.astype(object).where(candidates.notna(), None).to_dict("records")
    chosen = pd.DataFrame([{"unit_id": u, "trial_id": r["trial_id"], "selected_by": r["selected_by"]}
                           for u, r in select_per_unit(rows, min_flip).items()],
                          columns=["unit_id", "trial_id", "selected_by"])
    selected = units.merge(chosen, on="unit_id", how="inner")
    selected["seeds"] = [group_of(t, trials) for t in selected.trial_id]
    selected["n_params"] = [int(trials.set_index("trial_id").n_params[t]) for t in selected.trial_id]
    selected["apart"] = [apart_reason(u, s) for u, s in zip(selected.itertuples(index=False), selected.selected_by)]
    units["apart"] = [apart_reason(u, None) for u in units.itertuples(index=False)]
    return Run(Path(run_dir), run_id, list(revisions), config, min_flip, units, trials, tables["predictions"],
               tables["examples"], tables["curves"], tables["scalars"], tables.get("patching", pd.DataFrame()),
               selected.reset_index(drop=True), wall[0], wall[1])
