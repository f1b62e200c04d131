"""Steering with a stored trial, from a run directory: `steer(model, RUN_DIR, trial_id=..., beta=...)`.

`load_trial` reads the trial's unit, cells and learned tensors from the run (the tables and
RUN_DIR/artifacts/); workers/steer.py applies them to a model (`apply_trial`).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from workers.errors import UsageError
from workers.steer import StoredTrial, apply_trial


def load_trial(run_dir: Path | str, trial_id: str | None = None, unit_id: str | None = None) -> StoredTrial:
    """A complete trial by id, or a unit's selected trial, or the selected trial of a run's only unit."""
    from safetensors.torch import load_file

    from storage.query import run_sql
    from storage.store import artifact_path

    run_dir = Path(run_dir)
    if trial_id is None:
        chosen, _ = run_sql([run_dir], "SELECT unit_id, trial_id FROM selected ORDER BY unit_id")
        if unit_id is not None:
            chosen = chosen[chosen.unit_id == unit_id]
        if len(chosen) != 1:
            listing = ", ".join(chosen.unit_id) or "none"
            raise UsageError(f"{run_dir}: " + (f"unit {unit_id!r} has no selected trial" if unit_id else
                                               f"{len(chosen)} units have a selected trial ({listing})")
                             + "; pass --trial ID or --unit ID")
        trial_id = str(chosen.trial_id.iloc[0])
    quoted = trial_id.replace("'", "''")
    trial, _ = run_sql([run_dir], f"SELECT unit_id, status FROM trials WHERE trial_id = '{quoted}'")
    if trial.empty or "complete" not in set(trial.status):
        raise UsageError(f"{run_dir}: {trial_id!r} is not a complete trial of this run")
    uid = str(trial.unit_id.iloc[0])
    unit = run_sql([run_dir], f"SELECT * FROM units WHERE unit_id = '{uid}' LIMIT 1")[0].iloc[0].to_dict()
    path = artifact_path(run_dir, trial_id)
    if not path.is_file():
        raise UsageError(f"{path} is missing: the trial's learned tensors are needed to apply it (runs made before "
                         "every method stored them cannot be steered)")
    cells = run_sql([run_dir], f"SELECT DISTINCT position, role FROM scalars WHERE trial_id = '{quoted}' "
                               "AND position IS NOT NULL ORDER BY position")[0]
    examples = run_sql([run_dir], f"SELECT prompt, answer_a, answer_b, template, roles FROM examples "
                                  f"WHERE unit_id = '{uid}'")[0]
    return StoredTrial(run_dir, trial_id, unit, load_file(str(path)), list(cells.role),
                       sorted(set(examples.template)), {r["prompt"]: r for r in examples.to_dict("records")})


@contextmanager
def steer(model: nn.Module, run_dir: Path | str, *, trial_id: str | None = None, unit_id: str | None = None,
          beta: float = 1.0, roles: list[str] | None = None) -> Iterator[StoredTrial]:
    """Apply a run's trial (by id, or a unit's selected trial) to `model` at strength `beta` inside the
    block: alpha' = 1 + beta(alpha - 1), v' = beta v; the hooks are always removed."""
    with apply_trial(model, load_trial(run_dir, trial_id, unit_id), beta, roles) as trial:
        yield trial
