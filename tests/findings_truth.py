"""Runs made by hand in the tables' shape, where a claim is true, false or underpowered by construction.

`Tables` collects rows of units, trials, predictions, examples, curves, scalars and patching (the planned
columns included: trials.mask, mask_cells, control_of; the patching table) and `run()` assembles them into a
reports.run.Run through the same code as a run directory (reports.run.assemble: the one selection rule).
Every number comes from a seeded generator, so a test's verdict is the same every time.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports.run import Run, assemble
from storage.schema import schema_for

RUN_ID = "run-truth"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GRID = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]  # k of the sufficiency curves (plus n_cells)


def prompts(task: str, n: int, per_cluster: int = 2, templates: tuple[str, ...] = ("t0",), seed: int = 0,
            ld: float = 3.0) -> pd.DataFrame:
    """A task's test prompts: index, prompt, answer_a, answer_b, template, entities (the cluster key), ld_before."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "index": np.arange(n), "prompt": [f"{task} prompt {i}" for i in range(n)], "answer_a": " A",
        "answer_b": " B", "template": [templates[i * len(templates) // n] for i in range(n)],
        "entities": [[f"{task}-entity{i // per_cluster}"] for i in range(n)],
        "ld_before": ld * rng.gamma(16, 1 / 16, n)})


@dataclass
class Outcomes:
    """Per-prompt test outcomes of one trial: flipped (0/1) and kl_other; ld_after follows the flips."""
    flipped: np.ndarray
    kl: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, flip: float, kl: float, kl_spread: float = 20.0) -> Outcomes:
        return Outcomes((rng.random(n) < flip).astype(float), kl * rng.gamma(kl_spread, 1 / kl_spread, n))


@dataclass
class Tables:
    model: str = "m"
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {
        k: [] for k in ("units", "trials", "predictions", "examples", "curves", "scalars", "patching")})
    config: dict[str, Any] = field(default_factory=lambda: {"selection": {"min_flip": 0.9}})

    def unit(self, method: str, test: pd.DataFrame, *, task: str = "ioi", site: str = "mlp_out",
             options: dict[str, Any] | None = None, n_cells: int = 420, params_per_cell: int = 1,
             base_accuracy: float = 1.0, model: str | None = None) -> str:
        model = model or self.model
        task_options = json.dumps(options or {}, sort_keys=True)
        unit_id = "u-" + hashlib.sha256(f"{model}/{task}/{task_options}/{site}/{method}".encode()).hexdigest()[:12]
        self.rows["units"].append(dict(
            unit_id=unit_id, run_id=RUN_ID, model=model, model_revision="r", n_layers=6, d_model=64, task=task,
            task_options=task_options, task_hash="h", site=site, layers=list(range(6)), method=method, settings="{}",
            n_train=len(test), n_val=len(test), n_test=len(test), counts="{}", base_accuracy=base_accuracy,
            mean_ld=float(test.ld_before.mean()), moved_measure="|alpha-1|", moved_threshold=0.1, min_split=5,
            warnings=[], value_identity=1.0, n_cells=n_cells, n_params=n_cells * params_per_cell))
        for r in test.to_dict("records"):
            self.rows["examples"].append(dict(r, unit_id=unit_id, run_id=RUN_ID, split="test", roles=[]))
        return unit_id

    def trial(self, unit_id: str, number: int, test: pd.DataFrame, outcomes: Outcomes, *, val_flip: float = 1.0,
              val_kl: float | None = None, sites_moved: int = 10, replicate_of: int | None = None,
              effects: np.ndarray | None = None, **extra: Any) -> str:
        """A complete trial with its test predictions (and its cells' effects, when given)."""
        unit = next(u for u in self.rows["units"] if u["unit_id"] == unit_id)
        trial_id = f"{unit_id}-t{number:05d}"
        ld = test.ld_before.to_numpy(dtype=float)
        ld_after = np.where(outcomes.flipped > 0, -0.8 * ld, 0.4 * ld)
        self.rows["trials"].append(dict(
            trial_id=trial_id, unit_id=unit_id, run_id=RUN_ID, trial_number=number, status="complete",
            lambda_faith=1.0, lambda_min=0.01, lr=0.05, steps=10, batch_size=8, seed=number,
            val_flip_rate=val_flip, val_kl_other=float(outcomes.kl.mean()) if val_kl is None else val_kl,
            val_ld_before=float(ld.mean()), val_ld_after=float(ld_after.mean()), val_l1=1.0,
            test_flip_rate=float(outcomes.flipped.mean()), test_kl_other=float(outcomes.kl.mean()),
            test_ld_before=float(ld.mean()), test_ld_after=float(ld_after.mean()), resample_train=False,
            replicate_of=f"{unit_id}-t{replicate_of:05d}" if replicate_of is not None else None,
            n_params=unit["n_params"], sites_moved=sites_moved, sites_total=unit["n_cells"], started_at=T0,
            ended_at=T0, **{k: (f"{unit_id}-t{v:05d}" if k == "control_of" else v) for k, v in extra.items()}))
        for i, f, k, a, b in zip(test["index"], outcomes.flipped, outcomes.kl, ld, ld_after):  # i: place in the pool
            self.rows["predictions"].append(dict(trial_id=trial_id, unit_id=unit_id, run_id=RUN_ID, index=int(i),
                                                 ld_before=a, ld_after=b, kl_other=k, flipped=bool(f)))
        if effects is not None:
            for c, e in enumerate(effects):
                self.rows["scalars"].append(dict(
                    trial_id=trial_id, unit_id=unit_id, run_id=RUN_ID, model=unit["model"], task=unit["task"],
                    site=unit["site"], method=unit["method"], layer=c // 70, rel_depth=0.0, position=c % 70,
                    role=f"r{c % 70}", head=None, n_prompts=len(test), mean_position=float(c % 70), value=1.0 + e,
                    effect=abs(e), moved=abs(e) > 0.1))
        return trial_id

    def sufficiency(self, trial_id: str, flips: dict[int, float], n_cells: int, split: str = "val",
                    band: float = 0.0) -> None:
        for k, f in flips.items():
            self.rows["curves"].append(dict(
                trial_id=trial_id, unit_id=trial_id.rsplit("-", 1)[0], run_id=RUN_ID, kind="sufficiency",
                split=split, k=k, n_cells=n_cells, beta=None, n_prompts=100, ld_before=3.0, flip_rate=f,
                flip_rate_lo=max(0.0, f - band), flip_rate_hi=min(1.0, f + band), ld_after=0.0, ld_after_lo=0.0,
                ld_after_hi=0.0, kl_other=0.0, kl_other_lo=0.0, kl_other_hi=0.0))

    def strength(self, trial_id: str, betas: list[float], ld: float = 3.0, at_zero: float = 0.0,
                 band: float = 0.1) -> None:
        """A strength sweep on test: LD' = LD (1 - 2 beta) (plus `at_zero` at beta = 0), flips where LD' < 0."""
        for b in betas:
            after = ld * (1 - 2 * b) + (at_zero if b == 0 else 0.0)
            flip = 1.0 if after < 0 else 0.0
            self.rows["curves"].append(dict(
                trial_id=trial_id, unit_id=trial_id.rsplit("-", 1)[0], run_id=RUN_ID, kind="strength", split="test",
                k=None, n_cells=420, beta=b, n_prompts=100, ld_before=ld, flip_rate=flip, flip_rate_lo=flip,
                flip_rate_hi=flip, ld_after=after, ld_after_lo=after - band, ld_after_hi=after + band,
                kl_other=0.1 * abs(b), kl_other_lo=0.1 * abs(b), kl_other_hi=0.1 * abs(b)))

    def patch(self, unit_id: str, effects: np.ndarray) -> None:
        unit = next(u for u in self.rows["units"] if u["unit_id"] == unit_id)
        for c, e in enumerate(effects):
            self.rows["patching"].append(dict(
                run_id=RUN_ID, unit_id=unit_id, model=unit["model"], task=unit["task"], site=unit["site"],
                layer=c // 70, rel_depth=0.0, position=c % 70, role=f"r{c % 70}", head=None, kind="activation",
                effect=e, effect_lo=e, effect_hi=e, n_prompts=100))

    def run(self) -> Run:
        frames = {k: pd.DataFrame(v) for k, v in self.rows.items()}
        frames["units"] = frames["units"].drop(columns=["n_cells", "n_params"])
        for table in ("curves", "scalars"):
            if frames[table].empty:  # the table's own columns, no rows
                frames[table] = schema_for(table).empty_table().to_pandas()
        if not self.rows["patching"]:
            frames["patching"] = pd.DataFrame()
        return assemble(frames, self.config, run_id=RUN_ID, revisions=["truth"])


def seeds(tables: Tables, unit_id: str, test: pd.DataFrame, rng: np.random.Generator, flip: float, kl: float,
          replicates: int = 3, **trial: Any) -> list[str]:
    """The selected trial (number 0) and its replicates, each with fresh outcomes of the same rates."""
    ids = [tables.trial(unit_id, 0, test, Outcomes.draw(rng, len(test), flip, kl), **trial)]
    for r in range(1, replicates):
        ids.append(tables.trial(unit_id, 10 + r, test, Outcomes.draw(rng, len(test), flip, kl), replicate_of=0,
                                **trial))
    return ids
