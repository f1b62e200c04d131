"""DuckDB views named after the tables over one or several run directories, and pandas loads.

Several run directories at once is how cross-model analysis works: their tables are
unioned. Only whole, valid part files are seen; refused files are reported by name.
Besides the tables, the view `selected` holds each unit's selected trial by the one rule of
storage/selection.py, with each run's own `selection.min_flip` (from its sweep.yaml); the view
`models` each run's models and who they are (storage/schema.py MODEL_IDENTITY); the view
`competence` how well each model does each task before any intervention. COMPARE_SQL is the
cross-model comparison (storage.api.Runs.compare_models, docs/querying.md).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd

from storage.errors import StorageError
from storage.run_dir import RunDir
from storage.schema import MODEL_IDENTITY, NEAR_CHANCE, SCHEMAS, schema_for
from storage.selection import DEFAULT_MIN_FLIP, selected_sql
from storage.store import VANISHED_RETRIES, read_table, valid_parts

T = TypeVar("T")

# One row per run and model: who the model is. Columns a version-4 part lacks are NULL.
MODELS_SQL = (f"SELECT run_id, model, {', '.join(c for c in MODEL_IDENTITY if c != 'train_dtype')}, "
              "model_revision, n_layers, d_model, "
              "list_sort(list(DISTINCT train_dtype) FILTER (WHERE train_dtype IS NOT NULL)) AS train_dtypes "
              "FROM units GROUP BY ALL")
# One row per run, model and task (with its options): the share of prompts the model ranks answer a above b
# before any intervention, and the mean logit difference, over the unit's prompts (every unit of a task has the
# same prompts, except that fixed-length methods keep one token length); near_chance: below NEAR_CHANCE, so its
# units stay out of claims. Parts written before units.near_chance existed are judged by the same threshold.
COMPETENCE_SQL = f"""SELECT run_id, model, task, task_options, count(DISTINCT unit_id) AS units,
       min(n_train + n_val + n_test) AS min_prompts_kept, avg(base_accuracy) AS base_accuracy,
       min(base_accuracy) AS min_base_accuracy, avg(mean_ld) AS mean_ld,
       bool_or(coalesce(near_chance, base_accuracy < {NEAR_CHANCE})) AS near_chance
FROM units GROUP BY ALL"""
# The cross-model comparison, long form: per task (and its options), site, method and layer set, each model's
# selected trial, its base competence, and the cells' mean effect and share moved by role on a relative-depth
# axis 0..1 (rel_depth rounded to tenths; cells of several layers in one tenth are averaged).
# storage.api.Runs.compare_models puts the models side by side.
COMPARE_SQL = f"""WITH u AS (
    SELECT DISTINCT ON (run_id, unit_id) run_id, unit_id, model, task, task_options, site, method,
           CASE WHEN len(layers) = n_layers THEN 'all' ELSE array_to_string(layers, ',') END AS layer_set,
           base_accuracy, mean_ld, coalesce(near_chance, base_accuracy < {NEAR_CHANCE}) AS near_chance
    FROM units ORDER BY run_id, unit_id),
cells AS (  -- a position held by several roles is labelled 'A|B' by frequency: sorted here, so models align
    SELECT run_id, trial_id, array_to_string(list_sort(string_split(role, '|')), '|') AS role,
           round(rel_depth * 10) / 10 AS rel_depth,
           avg(effect) AS effect, avg(moved::INTEGER) AS moved_share, count(*) AS n_cells
    FROM scalars GROUP BY ALL)
SELECT u.task, u.task_options, u.site, u.method, u.layer_set, c.role, c.rel_depth, u.model,
       s.trial_id, s.selected_by, s.val_flip_rate, s.test_flip_rate, s.sites_moved, s.sites_total,
       u.base_accuracy, u.mean_ld, u.near_chance, c.effect, c.moved_share, c.n_cells
FROM selected s JOIN u USING (run_id, unit_id) JOIN cells c USING (run_id, trial_id)
ORDER BY u.task, u.task_options, u.site, u.method, u.layer_set, c.role, c.rel_depth, u.model"""


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
        con.register(f"_{table}_empty", schema_for(table).empty_table())
        if files:  # BY NAME after the empty table: the current schema's columns, in its order; NULL where an
            # older part lacks one (storage/schema.py READABLE_VERSIONS)
            listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM "_{table}_empty" UNION ALL BY NAME '
                        f'SELECT * FROM read_parquet([{listing}], union_by_name = true)')
        else:
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
    con.execute(f"CREATE VIEW models AS {MODELS_SQL}")
    con.execute(f"CREATE VIEW competence AS {COMPETENCE_SQL}")
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
                            f"  tables: {', '.join(SCHEMAS)}, and the views selected, models, competence")

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


def _competence(t: Any) -> str:
    """A task's base accuracy and mean LD for a model line (NULL where a unit row lacks them)."""
    if pd.isna(t.accuracy) or pd.isna(t.ld):
        return f"{t.task} (base accuracy not recorded)"
    near = " (near chance: flagged, no basis for claims)" if pd.notna(t.near) and bool(t.near) else ""
    return f"{t.task} {t.accuracy:.2f} (mean LD {t.ld:.2f}){near}"


def model_lines(run_dirs: list[Path] | Path) -> list[str]:
    """One line per model of the runs: who it is (the view `models`) and how well it does each task
    before any intervention (the view `competence`), for `actscale status` and the report."""
    models, _ = run_sql(run_dirs, "SELECT * EXCLUDE (run_id) FROM models ORDER BY model")
    competence, _ = run_sql(run_dirs, "SELECT model, task, avg(base_accuracy) AS accuracy, avg(mean_ld) AS ld, "
                                      "bool_or(near_chance) AS near FROM competence GROUP BY ALL ORDER BY model, task")
    lines = []
    for m in models.drop_duplicates(subset=[c for c in models.columns if c != "train_dtypes"]).itertuples():
        tasks = ", ".join(_competence(t) for t in competence[competence.model == m.model].itertuples())
        size = f"{m.n_layers} layers, d_model {m.d_model}"
        if m.model_family is None or m.model_family != m.model_family:
            who = f"{size} (identity not recorded: these results predate schema 5)"
        else:
            source = f"{m.model_source}" + (f", sha256 {m.model_source_sha256[:12]}..." if m.model_source_sha256 else "")
            dequantised = f"dequantised from {m.model_quantisation} " if m.model_quantisation else ""
            trained = "/".join(m.train_dtypes) if m.train_dtypes is not None and len(m.train_dtypes) else "?"
            licence = f"licence {m.model_licence}" + (f" ({m.model_licence_url})" if m.model_licence_url else "")
            who = (f"{m.model_family} ({m.model_type}), {m.model_checkpoint} checkpoint, {dequantised}({source}), "
                   f"trained in {trained}, evaluated in {m.eval_dtype}; {size}; {licence}")
        lines.append(f"{m.model}: {who}." + (f" Base accuracy before any intervention: {tasks}." if tasks else ""))
    return lines
