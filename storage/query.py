"""DuckDB views named after the tables over one or several run directories, and pandas loads.

Several run directories at once is how cross-model analysis works: their tables are
unioned. Only whole, valid part files are seen; refused files are reported by name.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from storage.errors import StorageError
from storage.schema import SCHEMAS
from storage.schema import schema_for
from storage.store import read_table, valid_parts


def check_run_dirs(run_dirs: list[Path]) -> list[Path]:
    out = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "tables").is_dir():
            raise StorageError(f"{d} is not an actscale run directory (no tables/ inside)")
        out.append(d)
    return out


def connect(run_dirs: list[Path] | Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB connection with one view per table; returns (connection, problems)."""
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
    return con, problems


def run_sql(run_dirs: list[Path] | Path, sql: str) -> tuple[pd.DataFrame, list[str]]:
    con, problems = connect(run_dirs)
    try:
        frame = con.execute(sql).df()
    except duckdb.Error as exc:
        raise StorageError(f"query failed: {str(exc).splitlines()[0]}\n  query: {sql.strip()[:300]}\n"
                           f"  tables: {', '.join(SCHEMAS)}") from exc
    finally:
        con.close()
    return frame, problems


def load(run_dirs: list[Path] | Path, table: str) -> pd.DataFrame:
    """One table as a pandas DataFrame (refused files are skipped; see read_table for them)."""
    dirs = check_run_dirs([run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs))
    return read_table(dirs, table).table.to_pandas()
