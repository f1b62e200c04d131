"""Turn a worker's trial result into rows of the trials, scalars, predictions and checks tables."""
from __future__ import annotations

from storage.schema import HYPER_PARAMS, METRICS, SPLITS_REPORTED, Status
from workers.results import TrialResult
from workers.unit import Hyper, TrainSettings, UnitSpec


def trial_id(unit_id: str, number: int) -> str:
    return f"{unit_id}-t{number:05d}"


def fold_of(hyper: Hyper, settings: TrainSettings) -> int | None:
    """trials.fold: the fold a trial trains on (search trials: fold 0), NULL with one split."""
    return (hyper.fold or 0) if settings.folds > 1 else None


def replicate_kind(hyper: Hyper, replicate_of: str | None) -> str | None:
    """trials.replicate_kind: what a replicate varies besides the batch order (NULL: not a replicate)."""
    if replicate_of is None:
        return None
    return "fold" if hyper.fold is not None else "bootstrap" if hyper.resample_train else "seed"


def unfinished_row(run_id: str, unit_id: str, number: int, params: dict, settings: TrainSettings, status: Status,
                   error: str, replicate_of: str | None) -> dict:
    """A trials row for a trial with no result: interrupted (re-run elsewhere) or failed as a batch."""
    hyper = Hyper(**params).resolved(settings)
    row = dict(trial_id=trial_id(unit_id, number), unit_id=unit_id, run_id=run_id, trial_number=number,
               status=status, error=error, resample_train=hyper.resample_train, replicate_of=replicate_of,
               fold=fold_of(hyper, settings), replicate_kind=replicate_kind(hyper, replicate_of), pilot=hyper.pilot,
               **control_columns(hyper))
    row.update({name: getattr(hyper, name) for name in HYPER_PARAMS})
    return row


def control_columns(hyper: Hyper) -> dict:
    """trials.mask, mask_cells, control_of: a retrained mask control's mask, its size, the trial it controls."""
    cells = len(hyper.mask_cells) if hyper.mask_cells is not None else None
    return dict(mask=hyper.mask, mask_cells=cells, control_of=hyper.control_of)


def status_of(result: TrialResult) -> Status:
    if not result.ok:
        return Status.FAILED
    return Status.PRUNED if result.pruned else Status.COMPLETE


def trial_rows(run_id: str, unit_id: str, spec: UnitSpec, result: TrialResult,
               replicate_of: str | None = None) -> dict[str, list[dict]]:
    """Rows of the trials, scalars, predictions and checks tables for one worker result."""
    tid = trial_id(unit_id, result.number)
    hyper = result.hyper.resolved(spec.settings)
    row = dict(trial_id=tid, unit_id=unit_id, run_id=run_id, trial_number=result.number,
               status=status_of(result), error=result.error, n_params=result.n_params,
               sites_moved=result.sites_moved, sites_total=result.sites_total, steps_done=result.steps,
               stop_reason=result.stop_reason, precision=result.precision or None,
               wall_s=result.wall_s, tokens_per_s=result.tokens_per_s, worker_node=result.node,
               started_at=result.started_at, ended_at=result.ended_at, resample_train=hyper.resample_train,
               replicate_of=replicate_of, fold=fold_of(hyper, spec.settings),
               replicate_kind=replicate_kind(hyper, replicate_of), n_test=result.n_test or None,
               n_test_clusters=result.n_test_clusters or None, pilot=hyper.pilot, **control_columns(hyper))
    row.update({name: getattr(hyper, name) for name in HYPER_PARAMS})
    for split in SPLITS_REPORTED:
        for metric in METRICS:
            row[f"{split}_{metric}"] = result.metrics.get(split, {}).get(metric)
    depth = max(1, result.n_layers - 1)
    scalars = [dict(trial_id=tid, unit_id=unit_id, run_id=run_id, model=spec.model, task=spec.task.name, site=spec.site,
                    method=spec.method, rel_depth=s["layer"] / depth, **s) for s in result.scalars]
    predictions = [dict(trial_id=tid, unit_id=unit_id, run_id=run_id, **p) for p in result.predictions]
    checks = [dict(trial_id=tid, unit_id=unit_id, run_id=run_id, **c) for c in result.checks]  # a pilot's
    # in writing order: a trial's row goes after its cells, predictions and checks (see RunStore.flush)
    return {"scalars": scalars, "predictions": predictions, "checks": checks, "trials": [row]}
