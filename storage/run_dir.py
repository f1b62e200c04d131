"""RunDir: every file of a run directory, named in this one place.

    RUN_DIR/
      run.json                            the run's id, written once at its first start
      sweep.yaml                          the sweep as validated: `resume` and `status` read it back
      optuna.journal                      every unit's Optuna study (append-only)
      coordinator.lock                    held by the coordinator running on the directory
      actscale.log                        the coordinator's log
      model_layers.json                   each model's depth, so that a resume need not load the model
      tables/<table>/part-*.parquet       the results (storage/store.py)
      artifacts/<trial id>.safetensors    a trial's learned tensors, enough to rebuild it

Nothing else in actscale spells these names: code asks a RunDir for the path. A RunDir is a
path (os.PathLike), so it goes wherever a path does. Artefacts are read and written with
safetensors' numpy API: the coordinator that writes them never loads torch for it.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.durable import TMP_PREFIX, replace_durably, write_durably
from storage.errors import StorageError

if TYPE_CHECKING:
    from search_spaces.config import SweepConfig

RUN_RECORD = "run.json"
SWEEP = "sweep.yaml"
JOURNAL = "optuna.journal"
LOCK = "coordinator.lock"
LOG = "actscale.log"
MODEL_LAYERS = "model_layers.json"
TABLES = "tables"
ARTIFACTS = "artifacts"
ARTIFACT_SUFFIX = ".safetensors"
WALL = "wall_s"  # a committed run's measured wall time in seconds (`make findings` writes it)
PHASE_SECONDS = "phase_seconds.json"  # worker seconds per phase (search, replicates, controls, analyse, ...), summed


class NotARunError(StorageError):
    """A folder given as a run directory that is not one (the message names the folder)."""


class RunDir(os.PathLike[str]):
    """A run directory and the names of its files."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------ the files
    @property
    def run_record(self) -> Path:
        return self.path / RUN_RECORD

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    @property
    def log_file(self) -> Path:
        return self.path / LOG

    @property
    def model_layers(self) -> Path:
        return self.path / MODEL_LAYERS

    @property
    def tables(self) -> Path:
        return self.path / TABLES

    def table(self, name: str) -> Path:
        return self.tables / name

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS

    @property
    def wall_file(self) -> Path:
        return self.path / WALL

    @property
    def phase_seconds_file(self) -> Path:
        return self.path / PHASE_SECONDS

    def phase_seconds(self) -> dict[str, float]:
        """Seconds of finished worker calls per phase, over every coordinator that ended on this run ({} if none
        recorded)."""
        try:
            data = json.loads(self.phase_seconds_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def add_phase_seconds(self, seconds: Mapping[str, float]) -> dict[str, float]:
        """Add one coordinator's worker seconds per phase to the run's record (a resume adds to it); the sums."""
        total = self.phase_seconds()
        for phase, s in seconds.items():
            total[phase] = round(total.get(phase, 0.0) + float(s), 3)
        write_durably(self.phase_seconds_file, json.dumps(total, indent=1, sort_keys=True) + "\n")
        return total

    def recorded_wall(self) -> float | None:
        """The run's measured wall time in seconds, where it was recorded (run.json's wall_s, or the file
        wall_s), else None."""
        try:
            stored = json.loads(self.run_record.read_text()).get("wall_s")
            if stored is not None:
                return float(stored)
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        try:
            return float(self.wall_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def artifact(self, trial_id: str) -> Path:
        """A trial's learned tensors (its method's `artifact_tensors`), enough to rebuild it."""
        return self.artifacts / f"{trial_id}{ARTIFACT_SUFFIX}"

    # ------------------------------------------------------------ what it holds
    def check(self) -> RunDir:
        """This RunDir if it is a run directory (a run stores its sweep first), else a clear error."""
        if not self.sweep_file.is_file():
            why = "it does not exist" if not self.path.exists() else f"it holds no {SWEEP}"
            raise NotARunError(f"{self.path} is not an actscale run directory ({why}; a run writes its {SWEEP} "
                               "when it starts)")
        return self

    def sweep(self) -> SweepConfig:
        """The stored sweep, validated as any sweep file is (so with the same defaults): what `resume`
        runs and what `status` counts against."""
        from search_spaces.config import load_config

        return load_config(self.check().sweep_file)

    def stored_sweep_text(self) -> str | None:
        return self.sweep_file.read_text() if self.sweep_file.is_file() else None

    def store_sweep(self, text: str) -> None:
        write_durably(self.sweep_file, text)

    def run_id(self) -> str | None:
        """The run's id, or None where run.json is absent or unreadable."""
        try:
            return str(json.loads(self.run_record.read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start_run(self) -> str:
        """The run's id: the stored one, or a new one written durably at the first start."""
        if self.run_record.exists():
            run_id = self.run_id()
            if run_id is None:
                raise StorageError(f"{self.run_record} is unreadable or has no run_id; restore it, or run into "
                                   "another --out RUN_DIR")
            return run_id
        self.path.mkdir(parents=True, exist_ok=True)
        run_id = f"run-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        write_durably(self.run_record, json.dumps({"run_id": run_id}))
        return run_id

    # ------------------------------------------------------------ artefacts
    def write_artifact(self, trial_id: str, tensors: Mapping[str, Any]) -> Path:
        """A trial's tensors (numpy arrays), written whole or not at all."""
        import numpy as np
        from safetensors.numpy import save_file

        final = self.artifact(trial_id)
        final.parent.mkdir(exist_ok=True)
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(tmp))
        replace_durably(tmp, final)
        return final

    def read_artifact(self, trial_id: str) -> dict[str, Any]:
        """A trial's stored tensors as numpy arrays (float16 ones, as a published run keeps them, as float32)."""
        import numpy as np
        from safetensors.numpy import load_file

        path = self.artifact(trial_id)
        if not path.is_file():
            raise StorageError(f"trial {trial_id} has no stored tensors ({path} is missing)")
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in load_file(str(path)).items()}
