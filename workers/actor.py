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
                   near_chance=unit.base_accuracy < NEAR_CHANCE)
        examples = []
        for split, data in unit.splits.items():
            lds = data.ld.tolist()
            examples += [dict(unit_id=unit_id, split=split, index=i, prompt=e.example.prompt,
                              answer_a=e.example.answer_a, answer_b=e.example.answer_b, template=e.example.template,
                              roles=e.roles, ld_before=lds[i], entities=list(e.example.split_keys))
                         for i, e in enumerate(data.examples)]
        return row, examples

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
                curves: bool, k_step: int = 2) -> dict[str, list[dict]]:
        """Curves and strength rows (workers/analysis.py) of stored trials: trial id -> rows."""
        unit = self._unit(unit_id, spec)
        return {tid: analyze_trial(self.loaded, unit, {k: torch.as_tensor(v) for k, v in tensors.items()},
                                   tuple(betas), curves, k_step)
                for tid, tensors in trials}


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray
        return socket.gethostname()
