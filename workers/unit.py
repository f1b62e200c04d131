"""What one unit is (model, task, site, layers, method) and the settings it trains under."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from workers.tasks.base import TaskSpec


@dataclass(frozen=True)
class TrainSettings:
    """Settings shared by every trial of a unit (part of the unit's identity)."""

    steps: int = 60
    batch_size: int = 32
    seed: int = 0  # data seed: task generation and splits
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    filter: Literal["model_prefers_a", "none"] = "model_prefers_a"
    active_threshold: float = 0.1  # ActivScalar/DynScalar: |alpha-1| above this counts as active
    steer_threshold: float = 0.1  # SteerVec: |v| above this times mean |h| at that site counts as active
    eval_batch: int = 64
    prefix_cache: bool = True
    min_split: int = 20  # a split with fewer prompts is warned about; rates over fewer are marked
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # training forwards (workers/precision.py)
    # early stopping and pruning (workers/stopping.py): checks every check_every steps on check_prompts val prompts
    patience: int = 0  # checks without improvement before a trial stops; 0: off
    check_every: int = 10
    check_prompts: int = 32
    prune: bool = False  # prune search trials clearly dominated by another of their batch
    prune_margin: float = 0.3  # ... whose val-slice flip_rate is this far below the batch's best
    # cross-fitted folds (workers/splits.py): 1 is the single split; K >= 2 cuts the entities into K groups, fold f
    # tests on group f and trains/validates on the others
    folds: int = 1

    def to_dict(self) -> dict:
        """The settings as stored and hashed into the unit id; a field added later is left out at its default,
        so the units stored before it keep their ids."""
        d = asdict(self)
        d["split"] = list(self.split)
        for name, default in LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d


LATER_FIELDS = {"folds": 1}  # TrainSettings fields left out of to_dict (and unit ids) at these defaults


@dataclass(frozen=True)
class UnitSpec:
    model: str
    task: TaskSpec
    site: str
    layers: tuple[int, ...] | str  # "all" or explicit layer indices
    method: str
    settings: TrainSettings = field(default_factory=TrainSettings)

    def describe(self) -> str:
        layers = self.layers if isinstance(self.layers, str) else ",".join(map(str, self.layers))
        return f"{self.model}/{self.task.name}/{self.site}/L[{layers}]/{self.method}"


@dataclass(frozen=True)
class Hyper:
    """Per-trial hyper-parameters (what Optuna searches)."""

    lambda_faith: float = 1.0
    lambda_min: float = 0.01
    lr: float = 0.05
    steps: int | None = None  # None: the unit's settings.steps
    batch_size: int | None = None
    seed: int = 0  # batch order (and the bootstrap resample, with resample_train)
    resample_train: bool = False  # replicates with search.replicate_data: train on a bootstrap resample
    prunable: bool = True  # False for replicates: they re-train the selected trial, never pruned
    # the cross-fitted fold it trains on (settings.folds >= 2); None: fold 0, where the search runs. A replicate
    # with search.replicate_data: folds names its fold (replicate r: fold r mod K), even fold 0
    fold: int | None = None

    def resolved(self, settings: TrainSettings) -> Hyper:
        """With steps and batch_size taken from the unit's settings where the trial left them unset."""
        return replace(self, steps=self.steps or settings.steps, batch_size=self.batch_size or settings.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)
