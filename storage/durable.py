"""Atomic, durable file writes: a crash leaves the old file or the new one, never a torn one."""
from __future__ import annotations

import os
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary file over `final`, fsyncing the file first and the
    directory after, so that a crash leaves the old file or the new one, never a torn one."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_durably(path: Path, text: str) -> None:
    """Write a small text file (a run's record, its stored sweep) atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(text)
    replace_durably(tmp, path)
