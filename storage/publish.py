"""Publish a finished run's learned tensors beside its tables, compactly.

A run keeps every complete trial's tensors (RUN_DIR/artifacts/<trial id>.safetensors). A run that is
committed (docs/data/paper-run) keeps those of the trials its analyses read: the trials with curves (each
unit's selected trial and its replicates) and the mask controls, so that any curve, strength or control
can be recomputed without training again. Each tensor is stored in float16 where that is lossless enough
(the largest round-trip error at most FP16_TOLERANCE of the tensor's largest magnitude), else as it was;
RunDir.read_artifact and orchestrator.steering.load_trial read either back as float32.

    python -m storage.publish RUN_DIR
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import StorageError
from storage.run_dir import ARTIFACT_SUFFIX, RunDir

FP16_TOLERANCE = 1e-3  # the largest |x - fp16(x)| allowed, as a share of max |x|


@dataclass
class Published:
    """What publishing kept and dropped, and the artefacts' bytes before and after."""

    kept: list[str]
    dropped: list[str]
    fp16_tensors: int
    kept_fp32_tensors: int
    bytes_before: int
    bytes_after: int


def analysed_trials(run_dir: Path) -> set[str]:
    """The trials whose tensors the run's analyses read: those with curves, and the mask controls."""
    import duckdb

    tables = RunDir(run_dir).tables
    keep: set[str] = set()
    with duckdb.connect() as con:
        for table, where in (("curves", "TRUE"), ("trials", "control_of IS NOT NULL AND status = 'complete'")):
            files = sorted((tables / table).glob("*.parquet"))
            if files:
                rows = con.execute(f"SELECT DISTINCT trial_id FROM read_parquet(?) WHERE {where}",
                                   [[str(f) for f in files]]).fetchall()
                keep.update(str(r[0]) for r in rows)
    return keep


def compact(tensor: Any) -> Any:
    """The tensor in float16 where its round trip stays within FP16_TOLERANCE of its largest magnitude."""
    import numpy as np

    if tensor.dtype != np.float32 or tensor.size == 0:
        return tensor
    with np.errstate(over="ignore"):  # beyond float16's range: inf, and the tensor stays float32
        half = tensor.astype(np.float16)
    scale = float(np.max(np.abs(tensor)))
    if scale == 0.0:
        return half
    if not np.all(np.isfinite(half)):
        return tensor
    error = float(np.max(np.abs(half.astype(np.float32) - tensor)))
    return half if error <= FP16_TOLERANCE * scale else tensor


def publish(run_dir: Path | str) -> Published:
    """Drop the artefacts no analysis reads; store the rest in float16 where lossless enough."""
    import numpy as np

    run = RunDir(run_dir)
    folder = run.artifacts
    if not folder.is_dir():
        raise StorageError(f"{run_dir}: no artifacts folder ({folder}) to publish")
    keep = analysed_trials(Path(run_dir))
    files = sorted(folder.glob(f"*{ARTIFACT_SUFFIX}"))
    missing = keep - {f.name.removesuffix(ARTIFACT_SUFFIX) for f in files}
    if missing:  # checked before anything is changed: publishing never loses what an analysis needs
        raise StorageError(f"{run_dir}: {len(missing)} analysed trial(s) have no stored tensors "
                           f"(e.g. {sorted(missing)[0]}); nothing was changed")
    before = sum(f.stat().st_size for f in files)
    kept, dropped, half, full = [], [], 0, 0
    for path in files:
        trial_id = path.name.removesuffix(ARTIFACT_SUFFIX)
        if trial_id not in keep:
            path.unlink()
            dropped.append(trial_id)
            continue
        tensors = {name: compact(value) for name, value in run.read_artifact(trial_id).items()}
        half += sum(1 for v in tensors.values() if v.dtype == np.float16)
        full += sum(1 for v in tensors.values() if v.dtype == np.float32)
        run.write_artifact(trial_id, tensors)
        kept.append(trial_id)
    after = sum(f.stat().st_size for f in folder.glob(f"*{ARTIFACT_SUFFIX}"))
    return Published(kept, dropped, half, full, before, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.publish", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    done = publish(args.run_dir)
    print(f"{args.run_dir}: kept the tensors of {len(done.kept)} analysed trial(s), dropped {len(done.dropped)}; "
          f"{done.fp16_tensors} tensor(s) in float16, {done.kept_fp32_tensors} kept in float32; "
          f"{done.bytes_before / 1e6:.2f} MB -> {done.bytes_after / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
