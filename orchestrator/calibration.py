"""How fast a model runs here, and what a sweep's units hold: measured once, cached (`actscale plan`).

Two caches under ACTSCALE_CACHE (default ~/.cache/actscale)/calibration/ (or ACTSCALE_CALIBRATION):
- `<host>/<model>.json`, the SPEED of one model on one machine: a worker's start (imports) and model
  load, preparing a unit per task prompt, a training step at the sweep's batch size with 1 and K trials
  live, an evaluation forward per prompt row. A file from another machine (a GPU node's) is taken with
  `actscale plan --calibration FILE` instead.
- `facts/<model>.json`, what the units hold (the same on every machine): the model's depth and heads,
  and per task (with the data settings and whether the method needs one prompt length) the prompts
  per split and the cell columns. A unit's cells follow: its layers x columns (x heads at `head`).

Measuring loads the model in this process (torch is imported only here, inside `measure`): a few
training steps, an evaluation forward, each unit's preparation; about a minute on a CPU.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.costs import Speed
from storage.durable import write_durably
from workers.errors import UsageError
from workers.names import method_info
from workers.unit import UnitSpec

FORMAT = 1
TIMED_STEPS = 3  # training steps timed per (batch size, K), after a first one


def cache_root() -> Path:
    """ACTSCALE_CALIBRATION, else ACTSCALE_CACHE/calibration (workers.models.cache_dir's root, read here
    without torch)."""
    if os.environ.get("ACTSCALE_CALIBRATION"):
        return Path(os.environ["ACTSCALE_CALIBRATION"])
    return Path(os.environ.get("ACTSCALE_CACHE", Path.home() / ".cache" / "actscale")) / "calibration"


def _file_name(model: str) -> str:
    """A model name as a file name: a path's slashes are not."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)[-60:]
    return safe + ("" if safe == model else "-" + hashlib.sha256(model.encode()).hexdigest()[:8]) + ".json"


def speed_file(model: str, host: str | None = None) -> Path:
    return cache_root() / (host or socket.gethostname()) / _file_name(model)


def facts_file(model: str) -> Path:
    return cache_root() / "facts" / _file_name(model)


@dataclass
class SpeedRecord:
    """A model's speed on a machine, as stored (`speed()` turns it into the costs' Speed)."""

    model: str
    host: str
    device: str
    threads: int
    precision: str
    measured_at: str
    start_s: float
    load_s: float
    prepare_prompt_s: float
    eval_row_s: float
    n_layers: int
    first_layer: int
    steps: dict[str, float] = field(default_factory=dict)  # "BxK" -> seconds per training step
    command_s: float = 0.0  # the coordinator's own imports (Ray, Optuna, DuckDB), once per command
    format: int = FORMAT
    analysis_row_s: float = 0.0  # eval_row_s in the training precision (the analysis'); 0 in older files

    def speed(self) -> Speed:
        steps = {tuple(int(x) for x in key.split("x")): s for key, s in self.steps.items()}
        return Speed(steps, self.eval_row_s, self.prepare_prompt_s, self.start_s, self.load_s,  # type: ignore[arg-type]
                     self.n_layers, self.first_layer, self.command_s, self.analysis_row_s,
                     trains_fp32=self.precision == "fp32")

    def has_steps(self, batch: int, k: int) -> bool:
        return f"{batch}x{k}" in self.steps and f"{batch}x1" in self.steps

    def describe(self) -> str:
        return (f"{self.model} on {self.host} ({self.device}, {self.threads} thread(s), {self.precision} training), "
                f"measured {self.measured_at[:16].replace('T', ' ')}")


def read_speed(path: Path, model: str | None = None) -> SpeedRecord:
    """A calibration file; a clear error when it is not one (or is another model's)."""
    try:
        data = json.loads(path.read_text())
        record = SpeedRecord(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not a calibration file of actscale plan ({type(exc).__name__}: {exc}); "
                         f"measure one with actscale plan SWEEP --calibrate") from None
    if record.format != FORMAT:
        raise UsageError(f"{path}: calibration format {record.format}; this actscale reads format {FORMAT}")
    if model is not None and record.model != model:
        raise UsageError(f"{path}: a calibration of model {record.model!r}, not {model!r}")
    return record


def cached_speed(model: str) -> SpeedRecord | None:
    path = speed_file(model)
    return read_speed(path, model) if path.is_file() else None


def facts_key(spec: UnitSpec) -> str:
    """What a unit's prompts and cell columns depend on: its task, its data settings, and whether its
    method keeps prompts of one token length."""
    s = spec.settings
    content = dict(task=spec.task.name, options=spec.task.options_dict, seed=s.seed, split=list(s.split),
                   filter=s.filter, fixed_length=method_info(spec.method).fixed_length)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def read_facts(model: str) -> dict[str, Any]:
    try:
        data = json.loads(facts_file(model).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(data, indent=1, sort_keys=True))


def measure(model: str, allow_pickle: bool, timing: tuple[UnitSpec, list[tuple[int, int]]] | None,
            fact_specs: list[UnitSpec]) -> tuple[SpeedRecord | None, dict[str, Any]]:
    """Load the model here and measure: its speed (`timing`: a unit to time and the (batch size, K) to
    step at), and the facts of `fact_specs` (one unit per facts key). Returns (speed or None, facts)."""
    started, fresh = time.perf_counter(), "ray" not in sys.modules
    import duckdb  # noqa: F401 - timed: what the coordinator imports before its work
    import optuna  # noqa: F401
    import ray  # noqa: F401

    command_s = time.perf_counter() - started if fresh else 0.0
    started, fresh = time.perf_counter(), "torch" not in sys.modules
    from workers.models import load_model  # torch, transformers: from here on

    start_s = time.perf_counter() - started if fresh else 0.0
    loaded = load_model(model, allow_pickle=allow_pickle)
    facts = _facts(loaded, fact_specs)
    if timing is None:
        return None, facts
    spec, shapes = timing
    record = _timing(loaded, spec, shapes, start_s)
    record.command_s = command_s
    return record, facts


def _facts(loaded: Any, specs: list[UnitSpec]) -> dict[str, Any]:
    from workers.prepare import prepare_unit
    from workers.sites import resolve_site

    heads = resolve_site(loaded.model, "head", [0])[0].n_heads
    facts: dict[str, Any] = {"n_layers": loaded.n_layers, "n_heads": heads, "units": {}}
    for spec in specs:
        unit = prepare_unit(loaded, spec)
        columns, _ = unit.cell_columns("val")
        facts["units"][facts_key(spec)] = dict(total=unit.counts["total"], columns=len(columns),
                                               **{f"n_{name}": len(data) for name, data in unit.splits.items()})
    return facts


def _timing(loaded: Any, spec: UnitSpec, shapes: list[tuple[int, int]], start_s: float) -> SpeedRecord:
    """Time a unit's preparation, training steps at each (batch size, K) and at K = 1, and evaluation."""
    import torch

    from workers.precision import evaluation_model, training_model
    from workers.prepare import prepare_unit
    from workers.results import TrialResult
    from workers.scoring import score
    from workers.sites import resolve_site
    from workers.trainer import train_group
    from workers.unit import Hyper

    clock = time.perf_counter()
    unit = prepare_unit(loaded, spec)
    prepare_prompt_s = (time.perf_counter() - clock) / max(1, unit.counts["total"])
    evaluates = evaluation_model(loaded)
    trains_on = training_model(evaluates, unit.precision)
    refs = resolve_site(trains_on.model, spec.site, unit.layers)

    def train(batch: int, k: int, steps: int) -> tuple[float, Any]:
        hypers = [Hyper(steps=steps, batch_size=batch, seed=i) for i in range(k)]
        clock = time.perf_counter()
        intervention, _ = train_group(trains_on, unit, hypers, refs, [TrialResult(h) for h in hypers])
        return time.perf_counter() - clock, intervention

    train(shapes[0][0], 1, 1)  # first calls: allocations, kernels chosen
    steps: dict[str, float] = {}
    for batch, k in sorted({(b, k) for b, k in shapes} | {(b, 1) for b, _ in shapes}):
        one, _ = train(batch, k, 1)
        more, intervention = train(batch, k, 1 + TIMED_STEPS)
        steps[f"{batch}x{k}"] = max(more - one, 1e-6) / TIMED_STEPS
    eval_refs = resolve_site(evaluates.model, spec.site, unit.layers)
    val = unit.splits["val"]
    clock = time.perf_counter()
    with torch.no_grad():
        score(evaluates, intervention.to(evaluates.device), eval_refs, val, first_layer=unit.first_layer,
              batch_rows=spec.settings.eval_batch)
    eval_row_s = (time.perf_counter() - clock) / (intervention.n_trials * len(val))
    analysis_row_s = eval_row_s
    if trains_on is not evaluates:  # the analysis' points run in the training precision (analysis.precision: train)
        clock = time.perf_counter()
        with torch.no_grad():
            score(trains_on, intervention.to(trains_on.device), refs, val, first_layer=unit.first_layer,
                  batch_rows=spec.settings.eval_batch)
        analysis_row_s = (time.perf_counter() - clock) / (intervention.n_trials * len(val))
    return SpeedRecord(loaded.name, socket.gethostname(), str(loaded.device), torch.get_num_threads(), unit.precision,
                       dt.datetime.now(dt.UTC).isoformat(), start_s, loaded.load_seconds, prepare_prompt_s, eval_row_s,
                       loaded.n_layers, unit.first_layer, steps, analysis_row_s=analysis_row_s)
