"""SweepConfig: the validated form of a sweep YAML file.

An unknown key or a bad value fails with the key's path and what is accepted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.selection import DEFAULT_MIN_FLIP
from workers.errors import UsageError
from workers.interventions import METHODS
from workers.sites import SITES


def _all_in(values, accepted: tuple[str, ...], what: str):
    """Each value must be one of `accepted` (error names the value and the accepted ones)."""
    for value in values:
        if value not in accepted:
            raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class Range(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class IntRange(_Strict):
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not 0 < self.low <= self.high:
            raise ValueError(f"need 0 < low <= high (got {self.low}, {self.high})")
        return self


class Space(_Strict):
    lambda_faith: Range = Range(low=0.1, high=10.0, log=True)
    lambda_min: Range = Range(low=1e-3, high=0.1, log=True)
    lr: Range = Range(low=0.01, high=0.1, log=True)
    steps: IntRange | None = None
    batch_size: list[int] | None = None


class SpaceOverride(_Strict):
    lambda_faith: Range | None = None
    lambda_min: Range | None = None
    lr: Range | None = None
    steps: IntRange | None = None
    batch_size: list[int] | None = None


class Search(_Strict):
    sampler: Literal["nsga2", "tpe", "random", "grid"] = "nsga2"
    objective: Literal["pareto", "scalar"] = "pareto"
    n_trials: int = Field(8, gt=0)
    batch: int = Field(4, gt=0)
    seed: int = 0
    space: Space = Space()
    method_space: dict[str, SpaceOverride] = Field(default_factory=dict)
    grid_points: int = Field(3, ge=2)
    # after a unit's search: re-train its selected hyper-parameters with replicates - 1 more trial seeds
    replicates: int = Field(1, ge=1, le=100)
    replicate_data: bool = False  # replicates also train on a bootstrap resample of the train split

    @field_validator("method_space")
    @classmethod
    def _methods(cls, v):
        return _all_in(v, METHODS, "method")


class Train(_Strict):
    steps: int = Field(60, gt=0)
    batch_size: int = Field(32, gt=0)
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    seed: int = 0
    filter: Literal["model_prefers_a", "none"] = "model_prefers_a"
    active_threshold: float = Field(0.1, gt=0)
    steer_threshold: float = Field(0.1, gt=0)

    @field_validator("split")
    @classmethod
    def _split(cls, v):
        if any(x <= 0 for x in v):
            raise ValueError(f"every split fraction must be > 0 (got {list(v)})")
        return v


class Selection(_Strict):
    """The one selection rule (storage/selection.py): among complete search trials with val
    flip_rate >= min_flip, the fewest sites_moved, then the lowest val kl_other; if none
    qualifies, the highest val flip_rate (flagged as a fallback)."""

    min_flip: float = Field(DEFAULT_MIN_FLIP, gt=0, le=1)


class Resources(_Strict):
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    workers_per_model: int = Field(1, gt=0)
    models_at_once: int = Field(1, gt=0)


class SweepConfig(_Strict):
    name: str = "sweep"
    models: list[str] = Field(min_length=1)
    tasks: list[str | TaskEntry] = Field(min_length=1)
    sites: list[str] = Field(min_length=1)
    layers: Literal["all", "each"] | list[list[int]] = "all"
    methods: list[str] = Field(min_length=1)
    search: Search = Search()
    train: Train = Train()
    selection: Selection = Selection()
    resources: Resources = Resources()
    allow_pickle: bool = False

    @field_validator("models", "sites", "methods")
    @classmethod
    def _unique(cls, v, info):
        duplicates = sorted({x for x in v if v.count(x) > 1})
        if duplicates:
            raise ValueError(f"{duplicates} listed more than once")
        return v

    @field_validator("sites")
    @classmethod
    def _sites(cls, v):
        return _all_in(v, SITES, "site")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return _all_in(v, METHODS, "method")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, list) and (not v or any(not group for group in v)):
            raise ValueError("layers must be 'all', 'each', or a non-empty list of non-empty layer lists")
        return v

    def task_entries(self) -> list[TaskEntry]:
        return [TaskEntry(name=t) if isinstance(t, str) else t for t in self.tasks]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("str", "TaskEntry", "list[", "literal[")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path or '(top level)'}: {msg}{shown}")
    unique = list(dict.fromkeys(lines))
    return f"{source}: invalid sweep config:\n  " + "\n  ".join(unique)


def parse_config(data: Any, source: str = "sweep") -> SweepConfig:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a sweep config must be a YAML mapping (models:, tasks:, ...), got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_format(exc, source)) from None


def load_config(path: Path | str) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"sweep file {path} does not exist; built-in sweeps: {', '.join(builtin_sweeps())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}"
                         + (f", line {exc.problem_mark.line + 1}" if getattr(exc, "problem_mark", None) else "") + ")") from None
    return parse_config(data, str(path))


def builtin_sweeps() -> dict[str, Path]:
    here = Path(__file__).parent
    return {p.stem: p for p in sorted(here.glob("*.yaml"))}


def resolve_sweep(name_or_path: str | None) -> Path:
    """A path, or the name of a built-in sweep (default: quickstart)."""
    if name_or_path is None:
        return builtin_sweeps()["quickstart"]
    if name_or_path in builtin_sweeps() and not Path(name_or_path).exists():
        return builtin_sweeps()[name_or_path]
    return Path(name_or_path)
