"""A trial stored in a run, as applying it needs it (workers/steer.py); no torch at import, so that
orchestrator/steering.py can load one before a model is."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workers.names import method_info

if TYPE_CHECKING:
    import torch


@dataclass
class StoredTrial:
    """What applying a trial needs: its unit's row, its learned tensors and its cell columns."""

    run_dir: Path
    trial_id: str
    unit: dict  # the units row
    tensors: dict[str, torch.Tensor]
    position_roles: list[str] = field(default_factory=list)  # per position (position-tied methods)
    templates: list[str] = field(default_factory=list)  # the unit's templates, for a prompt's roles
    examples: dict[str, dict] = field(default_factory=dict)  # the unit's prompts -> their examples row

    @property
    def method(self) -> str:
        return str(self.unit["method"])

    @property
    def fixed_length(self) -> bool:
        return method_info(self.method).fixed_length

    def describe(self) -> str:
        u = self.unit
        layers = ",".join(str(int(x)) for x in u["layers"])
        return f"{self.trial_id} ({u['model']} / {u['task']} / {u['site']} / layers {layers} / {u['method']})"
