"""DuckDB views named after the tables over one or several run directories, and pandas loads.

Several run directories at once is how cross-model analysis works: their tables are
unioned. Only whole, valid part files are seen; refused files are reported by name.
Besides the tables, the view `selected` holds each unit's selected trial by the one rule of
storage/selection.py, with each run's own `selection.min_flip` (from its sweep.yaml).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import pandas as pd

from storage.errors import StorageError
from storage.run_dir import RunDir
from storage.schema import SCHEMAS, schema_for
from storage.selection import DEFAULT_MIN_FLIP, selected_sql
from storage.store import VANISHED_RETRIES, read_table, valid_parts

T = TypeVar("T")


def check_run_dirs(run_dirs: list[Path]) -> list[Path]:
    out = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "tables").is_dir():
            raise StorageError(f"{d} is not an actscale run directory (no tables/ inside)")
        out.append(d)
    return out


def run_min_flip(run_dir: Path) -> tuple[str | None, float]:
    """(run_id, selection.min_flip) of a run directory, from its record and stored sweep (defaults if absent)."""
    import yaml

    run_id, min_flip = None, DEFAULT_MIN_FLIP
    run = RunDir(run_dir)
    try:
        run_id = run.run_id()
        stored = yaml.safe_load(run.sweep_file.read_text()) or {}
        min_flip = float((stored.get("selection") or {}).get("min_flip", DEFAULT_MIN_FLIP))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return run_id, min_flip


def connect(run_dirs: list[Path] | Path, min_flip: float | None = None) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB connection with one view per table and the `selected` view; returns
    (connection, problems). `min_flip` overrides every run's stored selection.min_flip."""
    dirs = check_run_dirs([run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs))
    con = duckdb.connect()
    problems: list[str] = []
    for table in SCHEMAS:
        files, refused = valid_parts(dirs, table)
        problems += refused
        if files:
            listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM read_parquet([{listing}])')
        else:
            con.register(f"_{table}_empty", schema_for(table).empty_table())
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "_{table}_empty"')
    per_run = [run_min_flip(d) for d in dirs]
    con.execute("CREATE TABLE _selection (run_id VARCHAR, min_flip DOUBLE)")
    thresholds = [[run_id, min_flip if min_flip is not None else value] for run_id, value in per_run if run_id]
    if thresholds:
        con.executemany("INSERT INTO _selection VALUES (?, ?)", thresholds)
    default = DEFAULT_MIN_FLIP if min_flip is None else float(min_flip)
    with_threshold = (f"(SELECT trials.*, coalesce(s.min_flip, {default!r}) AS _min_flip "
                      "FROM trials LEFT JOIN _selection s USING (run_id))")
    con.execute("CREATE VIEW selected AS " + selected_sql(with_threshold, "t._min_flip").replace(
        "t.*,", "t.* EXCLUDE (_min_flip),", 1))
    return con, problems


def _vanished(exc: Exception) -> bool:
    """A part deleted between listing and reading: a compaction finished meanwhile."""
    text = str(exc)
    return isinstance(exc, duckdb.IOException) and ("No files found" in text or "No such file" in text)


def with_connection(run_dirs: list[Path] | Path, work: Callable[[duckdb.DuckDBPyConnection], T],
                    min_flip: float | None = None) -> T:
    """`work(connection)` over the tables, again from a fresh listing if a part vanished meanwhile."""
    return _attempts(run_dirs, work, min_flip)[0]


def run_sql(run_dirs: list[Path] | Path, sql: str, min_flip: float | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The query's rows and the problems of the listing (refused files)."""
    def failed(exc: duckdb.Error) -> StorageError:
        return StorageError(f"query failed: {str(exc).splitlines()[0]}\n  query: {sql.strip()[:300]}\n"
                            f"  tables: {', '.join(SCHEMAS)}, and the view selected")

    def query(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
        try:
            return con.execute(sql).df()
        except duckdb.Error as exc:
            if _vanished(exc):
                raise  # _attempts lists the parts again: the merged part holds the vanished one's rows
            raise failed(exc) from exc

    try:
        return _attempts(run_dirs, query, min_flip)
    except duckdb.IOException as exc:  # still "vanished" on the last try: the query names a file that is not there
        raise failed(exc) from exc


def _attempts(run_dirs: list[Path] | Path, work: Callable[[duckdb.DuckDBPyConnection], T],
              min_flip: float | None) -> tuple[T, list[str]]:
    """`work(connection)` and the listing's problems; a part that vanishes between listing and
    reading (a compaction finished meanwhile) means: list again, up to VANISHED_RETRIES times."""
    for attempt in range(VANISHED_RETRIES):
        last = attempt + 1 == VANISHED_RETRIES
        try:
            con, problems = connect(run_dirs, min_flip)
        except duckdb.IOException as exc:
            if _vanished(exc) and not last:
                continue
            raise StorageError(f"could not open the tables: {str(exc).splitlines()[0]}") from exc
        try:
            return work(con), problems
        except duckdb.IOException as exc:
            if not _vanished(exc) or last:
                raise
        finally:
            con.close()
    raise AssertionError("unreachable")


def load(run_dirs: list[Path] | Path, table: str) -> pd.DataFrame:
    """One table as a pandas DataFrame (refused files are skipped; see read_table for them)."""
    dirs = check_run_dirs([run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs))
    return read_table(dirs, table).table.to_pandas()
