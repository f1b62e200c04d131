"""Config -> units, with ids that hash each unit's content (not its position in the file),
so an edited sweep keeps every unit it shares with the old one."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from search_spaces.config import SweepConfig
from workers.errors import UsageError
from workers.tasks.base import TaskSpec
from workers.unit import TrainSettings, UnitSpec


@dataclass(frozen=True)
class PlannedUnit:
    unit_id: str
    spec: UnitSpec


def train_settings(config: SweepConfig) -> TrainSettings:
    """The unit settings from the sweep's `train:` section, field by field (every `train:` field is
    a TrainSettings field, so a new one cannot be left behind: TrainSettings would refuse it)."""
    values = config.train.model_dump()
    values["split"] = tuple(values["split"])
    return TrainSettings(**values)


def unit_id(spec: UnitSpec) -> str:
    content = {
        "model": spec.model, "task": spec.task.name, "task_options": spec.task.options_dict, "site": spec.site,
        "layers": spec.layers if isinstance(spec.layers, str) else list(spec.layers), "method": spec.method,
        "train": spec.settings.to_dict(),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
    return f"u-{digest}"


def plan_units(config: SweepConfig, n_layers_of) -> list[PlannedUnit]:
    """All units: models x tasks x sites x layer-sets x methods. `n_layers_of(model)` resolves 'each'."""
    settings = train_settings(config)
    units = []
    for model in config.models:
        if config.layers == "all":
            layer_sets: list = ["all"]
        elif config.layers == "each":
            layer_sets = [(layer,) for layer in range(n_layers_of(model))]
        else:
            n = n_layers_of(model)
            for i, group in enumerate(config.layers):
                bad = [layer for layer in group if not -n <= layer < n]
                if bad:
                    raise UsageError(f"layers[{i}] = {group}: layer(s) {bad} out of range for model {model!r}, "
                                     f"which has {n} layers (0..{n - 1}, or -1..-{n})")
            layer_sets = [tuple(sorted({layer % n for layer in group})) for group in config.layers]
        for task in config.task_entries():
            for site in task.sites or config.sites:
                for layers in layer_sets:
                    for method in task.methods or config.methods:
                        spec = UnitSpec(model, TaskSpec.make(task.name, task.options), site, layers, method, settings)
                        units.append(PlannedUnit(unit_id(spec), spec))
    return units
