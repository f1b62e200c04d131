"""Steering with a stored trial, from a run directory: `steer(model, RUN_DIR, trial_id=..., beta=...)`.

`load_trial` reads the trial's unit, cells and learned tensors from the run (the tables and
RUN_DIR/artifacts/); workers/steer.py applies them to a model (`apply_trial`), and
`next_token_effect(model, tokenizer, prompt, trial, beta, answers=..., top=...)` measures what the
trial does to a prompt's next token (top tokens, two answers' probabilities and LD, without and
with), the numbers `actscale steer` prints.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.errors import UsageError
from workers.stored_trial import StoredTrial

if TYPE_CHECKING:
    from torch import nn

    from workers.steer import NextTokenEffect


def load_trial(run_dir: Path | str, trial_id: str | None = None, unit_id: str | None = None) -> StoredTrial:
    """A complete trial by id, or a unit's selected trial, or the selected trial of a run's only unit."""
    import duckdb
    import torch

    from storage.errors import StorageError
    from storage.query import with_connection
    from storage.run_dir import RunDir

    run_dir = Path(run_dir)
    try:
        trial_id, unit, roles, examples = with_connection([run_dir], lambda con: _stored_rows(con, run_dir, trial_id,
                                                                                             unit_id))
    except duckdb.Error as exc:
        raise StorageError(f"{run_dir}: could not read the trial: {str(exc).splitlines()[0]}") from exc
    stored = RunDir(run_dir)
    path = stored.artifact(trial_id)
    if not path.is_file():
        raise UsageError(f"{path} is missing: the trial's learned tensors are needed to apply it (runs made before "
                         "every method stored them cannot be steered)")
    tensors = {name: torch.from_numpy(value) for name, value in stored.read_artifact(trial_id).items()}
    return StoredTrial(run_dir, trial_id, unit, tensors, roles, sorted(set(examples.template)),
                       {r["prompt"]: r for r in examples.to_dict("records")})


def _stored_rows(con, run_dir: Path, trial_id: str | None, unit_id: str | None) -> tuple[str, dict, list, Any]:
    """(trial id, its unit's row, the roles of its cell positions, its unit's examples), on one connection."""
    if trial_id is None:
        chosen = con.execute("SELECT unit_id, trial_id FROM selected ORDER BY unit_id").df()
        if unit_id is not None:
            chosen = chosen[chosen.unit_id == unit_id]
        if len(chosen) != 1:
            listing = ", ".join(chosen.unit_id) or "none"
            raise UsageError(f"{run_dir}: " + (f"unit {unit_id!r} has no selected trial" if unit_id else
                                               f"{len(chosen)} units have a selected trial ({listing})")
                             + "; pass --trial ID or --unit ID")
        trial_id = str(chosen.trial_id.iloc[0])
    trial = con.execute("SELECT unit_id, status FROM trials WHERE trial_id = ?", [trial_id]).df()
    if trial.empty or "complete" not in set(trial.status):
        raise UsageError(f"{run_dir}: {trial_id!r} is not a complete trial of this run")
    uid = str(trial.unit_id.iloc[0])
    unit = con.execute("SELECT * FROM units WHERE unit_id = ? LIMIT 1", [uid]).df().iloc[0].to_dict()
    cells = con.execute("SELECT DISTINCT position, role FROM scalars WHERE trial_id = ? AND position IS NOT NULL "
                        "ORDER BY position", [trial_id]).df()
    examples = con.execute("SELECT prompt, answer_a, answer_b, template, roles FROM examples WHERE unit_id = ?",
                           [uid]).df()
    return trial_id, unit, list(cells.role), examples


@contextmanager
def steer(model: nn.Module, run_dir: Path | str, *, trial_id: str | None = None, unit_id: str | None = None,
          beta: float = 1.0, roles: list[str] | None = None) -> Iterator[StoredTrial]:
    """Apply a run's trial (by id, or a unit's selected trial) to `model` at strength `beta` inside the
    block: alpha' = 1 + beta(alpha - 1), v' = beta v; the hooks are always removed."""
    from workers.steer import apply_trial  # torch: only once a model is steered

    with apply_trial(model, load_trial(run_dir, trial_id, unit_id), beta, roles) as trial:
        yield trial


def next_token_effect(model: nn.Module, tokenizer, prompt: str, trial: StoredTrial, beta: float = 1.0, *,
                      answers: Sequence[str] | None = None, top: int = 5, max_new_tokens: int = 0) -> NextTokenEffect:
    """What `trial` (from `load_trial`) does to `prompt`'s next token, without and with it at strength
    `beta`: the top next tokens and their probabilities, two answers' p and LD = z_A - z_B
    (workers.steer.next_token_effect, the numbers `actscale steer` prints; call it outside a `steer` block)."""
    from workers.steer import next_token_effect as effect

    return effect(model, tokenizer, prompt, trial, beta, answers=answers, top=top, max_new_tokens=max_new_tokens)
