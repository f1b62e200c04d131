"""What a worker hands back for one trial: the one typed contract from trainer to storage.

The trainer fills the measurements; the actor adds where and when it ran; the coordinator
turns it into table rows (orchestrator/records.py). A trial failed when `error` is set.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from workers.unit import Hyper

METRIC_NAMES = ("flip_rate", "ld_before", "ld_after", "kl_other", "mass_shift", "l1", "ld_shift", "top1_b")


@dataclass
class TrialResult:
    hyper: Hyper  # as trained (steps/batch_size None: the unit's settings)
    error: str | None = None  # why the trial failed; None: it completed
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split (val, test) -> METRIC_NAMES -> value
    n_params: int = 0
    sites_moved: int = 0  # cells (layer, column[, head]) whose effect is above the method's threshold
    sites_total: int = 0  # all cells the method could move
    steps: int = 0  # optimizer steps done
    precision: str = ""  # the training forwards' precision as run: fp32 or bf16 (workers/precision.py)
    # why training ended before `steps` (patience, pruned; a pilot: converged, or not converged); None: it ran them all
    stop_reason: str | None = None
    pruned: bool = False  # stopped by the unit's pruning rule: scored, stored as pruned, never selected
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    # per cell: layer, position, role, head, n_prompts, mean_position, value, effect, moved (scalars columns)
    scalars: list[dict[str, Any]] = field(default_factory=list)
    # the cross-fitted fold it trained and was tested on (None: one split); its test prompts and their distinct
    # grouping keys (Example.cluster)
    fold: int | None = None
    n_test: int = 0
    n_test_clusters: int = 0
    # per test prompt: index, ld_before, ld_after, kl_other, flipped, cluster, template, fold (predictions columns)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    # a convergence pilot's checks on the val slice: kind, step, loss, flip_rate, kl_other, l1, sites_moved (table checks)
    checks: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict)  # artifact name -> array (torch in the trainer, numpy once sent)
    # per check of its training on the val check slice: kind ('rung': ASHA), step, loss, flip_rate, kl_other, l1,
    # sites_moved (columns of the checks table)
    checks: list[dict[str, Any]] = field(default_factory=list)
    # set by the actor
    number: int = -1  # the Optuna trial number
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    node: str = ""
    n_layers: int = 0  # of the model, for the relative depth of each cell

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, error: str) -> None:
        """Mark failed; the first error is the one kept."""
        if self.error is None:
            self.error = error
