"""Parquet tables of results: schemas, the atomic writer, DuckDB/pandas queries, reports.

`from storage import open_runs` is the Python entry point for results (docs/python-api.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.api import Runs


def open_runs(*run_dirs: Any, min_flip: float | None = None) -> Runs:
    """Open one or several run directories (storage.api.open_runs); imported lazily, so that
    `import storage.schema` stays light."""
    from storage.api import open_runs as _open_runs

    return _open_runs(*run_dirs, min_flip=min_flip)
