"""WorkerActor: a Ray actor that loads one model once and serves trial batches of its units.

It returns small, plain results (metrics, learned values, per-prompt predictions); the
coordinator is the only writer of results.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket

import torch

from workers.analysis import analyze_trial
from workers.asha import Rungs
from workers.models import load_model
from workers.names import EVAL_DTYPE, import_plugins, method_info, moved_rule
from workers.patching import PATCH_KINDS, patch_unit
from workers.prepare import NEAR_CHANCE, PreparedUnit, prepare_unit
from workers.results import TrialResult
from workers.trainer import train_trials
from workers.unit import Hyper, UnitSpec


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WorkerActor:
    def __init__(self, model_name: str, allow_pickle: bool = False, threads: int | None = None,
                 plugins: list[str] | None = None):
        import_plugins(plugins or [])  # the sweep's own methods, registered before any unit needs them
        if threads:
            torch.set_num_threads(max(1, threads))  # use the CPU share this worker was given
        self.model_name = model_name
        self.loaded = load_model(model_name, allow_pickle=allow_pickle)
        self.model_loads = 1
        self.units: dict[str, PreparedUnit] = {}
        self.node = _node_address()

    def info(self) -> dict:
        return dict(model=self.model_name, model_loads=self.model_loads, node=self.node, pid=os.getpid(),
                    load_seconds=self.loaded.load_seconds, n_layers=self.loaded.n_layers,
                    d_model=self.loaded.d_model, revision=self.loaded.revision)

    def _unit(self, unit_id: str, spec: UnitSpec) -> PreparedUnit:
        if unit_id not in self.units:
            self.units[unit_id] = prepare_unit(self.loaded, spec)
        return self.units[unit_id]

    def unit_record(self, unit_id: str, spec: UnitSpec) -> tuple[dict, list[dict]]:
        """The unit's row (without run_id) and its examples rows."""
        unit = self._unit(unit_id, spec)
        measure, threshold = moved_rule(spec.method, spec.settings)
        row = dict(unit_id=unit_id, model=spec.model, model_revision=self.loaded.revision,
                   n_layers=self.loaded.n_layers, d_model=self.loaded.d_model, task=spec.task.name,
                   task_options=json.dumps(spec.task.options_dict, sort_keys=True), task_hash=unit.task_hash,
                   site=spec.site, layers=unit.layers, method=spec.method,
                   settings=json.dumps(spec.settings.to_dict(), sort_keys=True),
                   n_train=len(unit.splits["train"]), n_val=len(unit.splits["val"]), n_test=len(unit.splits["test"]),
                   counts=json.dumps(unit.counts), base_accuracy=unit.base_accuracy, mean_ld=unit.mean_ld,
                   moved_measure=measure, moved_threshold=threshold, min_split=spec.settings.min_split,
                   warnings=unit.warnings, value_identity=method_info(spec.method).identity,
                   **self.loaded.identity, train_dtype=unit.precision, eval_dtype=EVAL_DTYPE,
                   near_chance=unit.base_accuracy < NEAR_CHANCE, n_folds=unit.n_folds)
        return row, _example_rows(unit_id, unit)

    def run_trials(self, unit_id: str, spec: UnitSpec, trials: list[tuple[int, dict]],
                   rungs: Rungs | None = None) -> list[TrialResult]:
        """Train a batch of a unit's trials; `rungs`: ASHA over the search trials' steps (workers/asha.py)."""
        unit = self._unit(unit_id, spec)
        started = _now()
        results = train_trials(self.loaded, unit, [Hyper(**params) for _, params in trials], rungs)
        ended = _now()
        for (number, _), result in zip(trials, results):
            result.number, result.started_at, result.ended_at = number, started, ended
            result.node, result.n_layers = self.node, self.loaded.n_layers
            result.tensors = {k: v.numpy() for k, v in result.tensors.items()}
        return results

    def analyze(self, unit_id: str, spec: UnitSpec, trials: list[tuple[str, dict]], betas: list[float],
                curves: bool, k_step: int = 2, folds: dict[str, int | None] | None = None,
                k90_within: float | None = 0.1, val_all: bool = False, precision: str = "train"
                ) -> dict[str, list[dict]]:
        """Curves and strength rows (workers/analysis.py) of stored trials: trial id -> rows. Each trial is
        measured on its own fold's val and test (`folds`: trial id -> fold; absent: fold 0, or the one split)."""
        unit = self._unit(unit_id, spec)
        return {tid: analyze_trial(self.loaded, unit.for_fold((folds or {}).get(tid)),
                                   {k: torch.as_tensor(v) for k, v in tensors.items()}, tuple(betas), curves, k_step,
                                   k90_within, val_all, precision)
                for tid, tensors in trials}


    def patch(self, unit_id: str, spec: UnitSpec, splits: tuple[str, ...] = ("val",),
              kinds: tuple[str, ...] = PATCH_KINDS) -> list[dict]:
        """Patching rows (workers/patching.py, without run_id) of the unit's cells on the unintervened model,
        per split; the unit is prepared as for its trials (fold 0's splits with folds)."""
        unit = self._unit(unit_id, spec)
        return [dict(row, unit_id=unit_id) for split in splits for row in patch_unit(self.loaded, unit, split, kinds)]

def _example_rows(unit_id: str, unit: PreparedUnit) -> list[dict]:
    """The examples rows: per split, each prompt at its place in the split (one split); with folds, every prompt of
    the pool at its place there, with its fold-0 split (NULL: fold 0 drops it) and the fold that tests it."""
    if unit.pool is None:
        placed = [(split, i, e, ld, None) for split, data in unit.splits.items()
                  for i, (e, ld) in enumerate(zip(data.examples, data.ld.tolist()))]
    else:
        split_of = {i: split for split, rows in unit.folds[0].items() for i in rows}
        tested_in = {i: f for f, parts in enumerate(unit.folds) for i in parts["test"]}
        placed = [(split_of.get(i), i, e, ld, tested_in.get(i))
                  for i, (e, ld) in enumerate(zip(unit.pool.examples, unit.pool.ld.tolist()))]
    return [dict(unit_id=unit_id, split=split, index=i, prompt=e.example.prompt, answer_a=e.example.answer_a,
                 answer_b=e.example.answer_b, template=e.example.template, roles=e.roles, ld_before=ld,
                 entities=list(e.example.split_keys), test_fold=fold)
            for split, i, e, ld, fold in placed]


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray
        return socket.gethostname()
