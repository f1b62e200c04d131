"""Turn a worker's trial result into rows of the trials, scalars and predictions tables."""
from __future__ import annotations

from storage.schema import HYPER_PARAMS, METRICS, SPLITS_REPORTED


def trial_id(unit_id: str, number: int) -> str:
    return f"{unit_id}-t{number:05d}"


def unfinished_row(run_id: str, unit_id: str, number: int, params: dict, defaults: dict, status: str,
                   error: str, replicate_of: str | None) -> dict:
    """A trials row for a trial with no result: interrupted (re-run elsewhere) or failed as a batch."""
    params = {**defaults, **params}
    row = dict(trial_id=trial_id(unit_id, number), unit_id=unit_id, run_id=run_id, trial_number=number,
               status=status, error=error, resample_train=bool(params.get("resample_train", False)),
               replicate_of=replicate_of)
    row.update({name: params.get(name) for name in HYPER_PARAMS})
    return row


def trial_rows(run_id: str, unit_id: str, spec, result: dict, defaults: dict,
               replicate_of: str | None = None) -> dict[str, list[dict]]:
    tid = trial_id(unit_id, result["number"])
    params = {**defaults, **result["params"]}
    row = dict(trial_id=tid, unit_id=unit_id, run_id=run_id, trial_number=result["number"], status=result["status"],
               error=result["error"], n_params=result["n_params"], sites_moved=result["sites_moved"],
               sites_total=result["sites_total"], steps_done=result["steps"], wall_s=result["wall_s"],
               tokens_per_s=result["tokens_per_s"], worker_node=result["node"], started_at=result["started_at"],
               ended_at=result["ended_at"], resample_train=bool(params.get("resample_train", False)),
               replicate_of=replicate_of)
    row.update({name: params.get(name) for name in HYPER_PARAMS})
    for split in SPLITS_REPORTED:
        for metric in METRICS:
            row[f"{split}_{metric}"] = result["metrics"].get(split, {}).get(metric)
    n_layers = result["n_layers"]
    scalars = [dict(trial_id=tid, unit_id=unit_id, run_id=run_id, model=spec.model, task=spec.task.name, site=spec.site,
                    method=spec.method, layer=s["layer"], rel_depth=s["layer"] / max(1, n_layers - 1),
                    position=s["position"], role=s["role"], head=s["head"], value=s["value"], effect=s["effect"],
                    moved=s["moved"])
               for s in result["scalars"]]
    predictions = [dict(trial_id=tid, unit_id=unit_id, run_id=run_id, index=p["index"], ld_before=p["ld_before"],
                        ld_after=p["ld_after"], kl_other=p["kl_other"], flipped=p["flipped"]) for p in result["predictions"]]
    # in writing order: a trial's row goes after its cells and predictions (see RunStore.flush)
    return {"scalars": scalars, "predictions": predictions, "trials": [row]}
