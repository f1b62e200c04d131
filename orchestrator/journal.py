"""Repair of the Optuna journal after a crash.

A coordinator killed while appending leaves a torn last line (no trailing newline).
Optuna would then append the next operation to that fragment and corrupt the journal, so
the fragment, an operation that never completed, is cut off before the journal is opened.
Reconciliation with Parquet then settles any trial it left RUNNING.
"""
from __future__ import annotations

import os

from storage.run_dir import RunDir


def repair_journal(run_dir: RunDir) -> int:
    """Cut a torn last line off the run's journal; returns the number of bytes removed."""
    path = run_dir.journal
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return 0
        window = min(size, 1 << 20)
        fh.seek(size - window)
        tail = fh.read(window)
        cut = tail.rfind(b"\n")
        keep = size - window + cut + 1 if cut >= 0 else 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep
