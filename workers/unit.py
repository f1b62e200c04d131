"""What one unit is (model, task, site, layers, method) and the settings it trains under."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from workers.tasks.base import TaskSpec


@dataclass(frozen=True)
class Convergence:
    """The convergence pilot's rule (workers/convergence.py): one pilot trial per unit trains up to
    `max_steps`, checked every `every` steps on the val check slice; it converged at the first check where
    its val objective changed by less than `tol` (relative) over the last `window` steps. The unit's
    search trials and replicates then train for the pilot's steps."""

    window: int = 100
    tol: float = 0.02
    every: int = 10
    max_steps: int = 600


# TrainSettings fields added after units were first stored: left out of `to_dict` (so of the unit id) at their
# default, so that every unit stored before them keeps its id
# TrainSettings fields added later, left out of to_dict (and so of unit ids) at these defaults: old runs resume
OMITTED_AT_DEFAULT = {"folds": 1, "l1": "subgradient", "converge": None}


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
    # the L1 term: its subgradient in the loss, or a proximal step after each optimizer step (soft-thresholding
    # toward identity, so unmoved cells stay exactly at identity; workers/proximal.py)
    l1: Literal["subgradient", "proximal"] = "subgradient"
    converge: Convergence | None = None  # training length from a convergence pilot; None: `steps`

    def __post_init__(self) -> None:
        if isinstance(self.converge, dict):  # from a sweep's `train.converge:` or a stored units row
            object.__setattr__(self, "converge", Convergence(**self.converge))

    def to_dict(self) -> dict:
        """The settings as stored and hashed into the unit id; a field added later is left out at its default,
        so the units stored before it keep their ids."""
        d = asdict(self)
        d["split"] = list(self.split)
        for name, default in OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]
        return d


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
    pilot: bool = False  # the unit's convergence pilot: trained until its val objective converges (never selected)
    # a retrained mask control (orchestrator/controls.py): its mask's name ("top-16", "random-16-s3", "final_position"),
    # its cells (layer, position, head; head -1 off the head site), free to move while every other cell stays exactly
    # identity, and the selected trial it controls. Never selected, never pruned
    mask: str | None = None
    mask_cells: tuple[tuple[int, int, int], ...] | None = None
    control_of: str | None = None

    def __post_init__(self) -> None:
        if self.mask_cells is not None:  # from JSON (Optuna's user attributes): lists
            object.__setattr__(self, "mask_cells", tuple(tuple(int(x) for x in c) for c in self.mask_cells))

    def resolved(self, settings: TrainSettings) -> Hyper:
        """With steps and batch_size taken from the unit's settings where the trial left them unset."""
        return replace(self, steps=self.steps or settings.steps, batch_size=self.batch_size or settings.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)
